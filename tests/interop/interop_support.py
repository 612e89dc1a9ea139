"""What the interop test modules share on the threadko side: call id
patterns and a dependency that injects the worker context."""

import re

from threadko.extensions import DependencyProvider

UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
#: the call id a Nameko 2 standalone proxy puts first on the stack
STANDALONE_CALL_ID = re.compile(
    r'^standalone_rpc_proxy\.call\.{}$'.format(UUID))


def call_id_of(service, method):
    """A regex for the call ids of ``service.method`` workers."""
    return re.compile(r'^{}\.{}\.{}$'.format(
        re.escape(service), re.escape(method), UUID))


class Worker(DependencyProvider):
    """Injects the worker context itself."""

    def get_dependency(self, worker_ctx):
        return worker_ctx
