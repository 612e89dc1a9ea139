"""Run several services in one process."""

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from operator import methodcaller

from threadko.configuration import config as global_config
from threadko.containers import get_container_cls, get_service_name
from threadko.utils.concurrency import SpawningProxy, call_each

_log = logging.getLogger(__name__)


class ServiceRunner:
    """Hosts several services, one container each, and starts, stops,
    kills and waits for them together (concurrently).

    :param config: a config dict (Nameko 2 style); when omitted the global
        :data:`threadko.config` is used (Nameko 3 style)

    Example::

        runner = ServiceRunner(config)
        runner.add_service(Foobar)
        runner.add_service(Spam)
        runner.start()
        runner.wait()
    """

    def __init__(self, config=None):
        self.service_map = {}
        self.config = global_config if config is None else config
        self.container_cls = get_container_cls(self.config)

    @property
    def service_names(self):
        return self.service_map.keys()

    @property
    def containers(self):
        return self.service_map.values()

    def add_service(self, cls):
        """Create the container for service class ``cls`` now (so
        definition errors surface here). A class with the name of an
        earlier one replaces it."""
        service_name = get_service_name(cls)
        container = self.container_cls(cls, self.config)
        self.service_map[service_name] = container

    def start(self):
        """Start every container concurrently; block until all started.

        If a container fails to start, the others' starts are interrupted,
        every container is killed, and the error is raised.
        :meth:`stop` or :meth:`kill`, called from another thread while this
        runs, interrupts the start; ``start()`` then returns without an
        error.
        """
        service_names = ', '.join(self.service_names)
        _log.info('starting services: %s', service_names)
        try:
            call_each(self.containers, methodcaller('start'), 'start',
                      on_first_error=self.kill)
        except BaseException:
            self.kill()
            raise
        _log.debug('services started: %s', service_names)

    def stop(self):
        """Stop every container gracefully and concurrently; block until
        all stopped."""
        service_names = ', '.join(self.service_names)
        _log.info('stopping services: %s', service_names)
        SpawningProxy(self.containers).stop()
        _log.debug('services stopped: %s', service_names)

    def kill(self):
        """Kill every container concurrently; block until all are dead."""
        service_names = ', '.join(self.service_names)
        _log.info('killing services: %s', service_names)
        SpawningProxy(self.containers).kill()
        _log.debug('services killed: %s', service_names)

    def wait(self):
        """Block until every container has stopped. If one dies with an
        error, stop the others and re-raise that error."""
        try:
            SpawningProxy(self.containers, abort_on_error=True).wait()
        except Exception:
            self.stop()
            raise


@contextmanager
def run_services(*args, kill_on_exit=False):
    """Serve some services for the duration of a ``with`` block, then stop
    them (or kill them, with ``kill_on_exit=True``).

    Accepts Nameko 2's ``run_services(config, *services)`` and Nameko 3's
    ``run_services(*services)`` (global config)::

        with run_services(config, Foobar, Spam) as runner:
            ...

    As in Nameko, the services are stopped only when the block exits
    normally; if it raises, nothing is stopped (use the
    ``runner_factory`` fixture in tests for guaranteed cleanup).

    :yields: the started :class:`ServiceRunner`
    """
    if args and isinstance(args[0], Mapping):
        config, services = args[0], args[1:]
    else:
        config, services = None, args
    runner = ServiceRunner(config)
    for service in services:
        runner.add_service(service)
    runner.start()
    yield runner
    if kill_on_exit:
        runner.kill()
    else:
        runner.stop()
