"""Serving ``@http`` routes from any WSGI server, beside other WSGI apps.

:class:`ServiceApp` runs services inside a WSGI process and is itself the
WSGI application for their ``@http`` routes::

    # wsgi.py
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from threadko.web.wsgi import ServiceApp

    services = ServiceApp([Orders, Payments], {"AMQP_URI": "amqp://..."})
    application = DispatcherMiddleware(flask_app, {"/api": services})

The services start on the first request (or on :meth:`ServiceApp.start`),
once, however many server threads race to it, and stop when the process
exits (or on :meth:`ServiceApp.stop`). They do not open a port of their
own: the hosting WSGI server serves their routes.

:func:`wsgi_app` gives the routes of containers you run yourself.
"""

import atexit
import threading

from threadko.configuration import config as global_config
from threadko.constants import WEB_SERVER_CONFIG_KEY
from threadko.observability import http_observers
from threadko.runners import ServiceRunner
from threadko.utils import fork
from threadko.web.handlers import HttpRequestHandler
from threadko.web.server import (
    DEFAULT_MAX_REQUEST_BODY_SIZE, MAX_REQUEST_BODY_SIZE_CONFIG_KEY, Router,
)

__all__ = ['ServiceApp', 'wsgi_app']


def _http_entrypoints(containers):
    return [entrypoint for container in containers
            for entrypoint in container.entrypoints
            if isinstance(entrypoint, HttpRequestHandler)]


def wsgi_app(*containers, max_request_body_size=DEFAULT_MAX_REQUEST_BODY_SIZE):
    """A WSGI application routing to the ``@http`` entrypoints of
    ``containers`` (:class:`~threadko.containers.ServiceContainer` objects,
    or runners, whose containers are taken). Start the containers before
    it serves requests; requests reaching a stopped one get 503."""
    flat = []
    for item in containers:
        runner_containers = getattr(item, 'containers', None)
        flat.extend([item] if runner_containers is None
                    else runner_containers)
    router = Router(max_request_body_size)
    router.add(_http_entrypoints(flat))
    for container in flat:
        router.observe(http_observers(container.config))
    return router


class ServiceApp:
    """Services running in this WSGI process, and the WSGI application
    serving their ``@http`` routes.

    In a process forked from one where the services were started (a
    server that forks its workers after loading the application, such as
    ``gunicorn --preload``), the first request (or :meth:`start`) starts a
    new set of the services in that process; those of the parent go on
    running there, and are neither stopped nor used by the child.

    :param services: service classes
    :param config: config dict; default: the global :data:`threadko.config`.
        ``WEB_SERVER_ADDRESS`` defaults to ``None`` here (no listening
        socket of the services' own); set it to serve on a port as well.
    :param stop_at_exit: stop the services when the interpreter exits
    """

    def __init__(self, services, config=None, stop_at_exit=True):
        config = dict(global_config if config is None else config)
        config.setdefault(WEB_SERVER_CONFIG_KEY, None)
        self.config = config
        self.services = list(services)
        self.stop_at_exit = stop_at_exit
        self._lock = threading.Lock()  # one start() or stop() at a time
        self._started = False
        # set in a forked child: the runner is the parent's
        self._forked = False
        # how stop() interrupts a start() that holds the lock: never held
        # while starting
        self._handshake = threading.Lock()
        self._starting = None  # the runner start() is starting
        self._stop_wanted = False
        self._make_runner()
        fork.register(self)

    def _make_runner(self):
        self.runner = ServiceRunner(self.config)
        for service_cls in self.services:
            self.runner.add_service(service_cls)
        self._router = wsgi_app(self.runner, max_request_body_size=(
            self.config.get(MAX_REQUEST_BODY_SIZE_CONFIG_KEY,
                            DEFAULT_MAX_REQUEST_BODY_SIZE)))

    def _after_fork_in_child(self):
        self._lock = threading.Lock()
        self._handshake = threading.Lock()
        self._starting = None
        self._stop_wanted = False
        self._forked = True

    def _forget_inherited(self):
        """Under the lock, in a forked child: leave the parent's runner
        alone (its threads and connections are the parent's) and make a
        new one, not started."""
        if self._started and self.stop_at_exit:
            atexit.unregister(self.stop)
        self._started = False
        self._make_runner()
        self._forked = False

    @property
    def started(self):
        return self._started and not self._forked

    def start(self):
        """Start the services (once; later calls return at once). A
        :meth:`stop` while this waits (for the broker, say) interrupts
        it."""
        if self._started and not self._forked:
            return
        with self._lock:
            if self._forked:
                self._forget_inherited()
            if self._started:
                return
            runner = self.runner
            with self._handshake:
                if self._stop_wanted:
                    return  # a stop() waits for the lock
                self._starting = runner
            try:
                runner.start()
            finally:
                with self._handshake:
                    self._starting = None
                    interrupted = self._stop_wanted
            if interrupted:
                # stop() stopped this runner; a later start() gets new ones
                self._make_runner()
                return
            if self.stop_at_exit:
                atexit.register(self.stop)
            self._started = True

    def stop(self):
        """Stop the services gracefully: requests in flight finish. The
        app can be started again. A start in progress is interrupted. In a
        forked child whose services were not started there, it only
        forgets the parent's."""
        with self._handshake:
            self._stop_wanted = True
            starting = self._starting
        try:
            if starting is not None:
                starting.stop()  # start() holds the lock until this
            with self._lock:
                if self._forked:
                    self._forget_inherited()
                if not self._started:
                    return
                self._started = False
                if self.stop_at_exit:
                    atexit.unregister(self.stop)
                self.runner.stop()
        finally:
            with self._handshake:
                self._stop_wanted = False

    def __call__(self, environ, start_response):
        if not self._started or self._forked:
            self.start()
        return self._router(environ, start_response)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.stop()
