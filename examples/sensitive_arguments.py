"""``sensitive_arguments``: arguments that must not show up in logs.

An entrypoint's ``sensitive_arguments`` names arguments (or parts of them:
``"user.password"``, ``"cards[0]"``) that tools which record calls should
hide. threadko itself never logs call arguments; extensions that do, such
as ``CallLogger`` below, get them through
:func:`threadko.utils.get_redacted_args`, which replaces the sensitive ones
with ``********``.
"""

import logging

from examples.auth import Auth, Unauthenticated
from threadko.extensions import DependencyProvider
from threadko.rpc import rpc
from threadko.utils import get_redacted_args

log = logging.getLogger(__name__)


class CallLogger(DependencyProvider):
    """Logs every call with its arguments, sensitive ones redacted."""

    def worker_setup(self, worker_ctx):
        arguments = get_redacted_args(
            worker_ctx.entrypoint, *worker_ctx.args, **worker_ctx.kwargs)
        log.info("%s called with %s", worker_ctx.call_id, arguments)


class Service:
    name = "service"

    auth = Auth()
    call_logger = CallLogger()

    @rpc(sensitive_arguments="password", expected_exceptions=Unauthenticated)
    def login(self, username, password):
        # raises Unauthenticated if the user name and password do not match
        return self.auth.authenticate(username, password)
