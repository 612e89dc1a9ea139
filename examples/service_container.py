"""Hosting services yourself: a container, a runner, and the global config
(docs/concepts.rst). ``threadko run`` does the same for you.
"""

from examples.reporter import Reporter
from threadko import config
from threadko.containers import ServiceContainer
from threadko.rpc import rpc
from threadko.runners import run_services


class OtherService:
    name = 'other_service'

    @rpc
    def ping(self):
        return 'pong'


def host_services():
    container = ServiceContainer(Reporter)
    container.start()
    ...
    container.stop()

    with run_services(Reporter, OtherService) as runner:
        ...  # both services run until the block ends


def host_with_fewer_workers():
    with config.patch({'max_workers': 4}):
        with run_services(Reporter):
            ...
