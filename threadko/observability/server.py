"""The server on ``METRICS_ADDRESS``: ``GET /metrics`` (Prometheus text
format, or OpenMetrics when the scraper asks for it), ``GET /health/live``
and ``GET /health/ready`` (see :mod:`threadko.observability.health`);
anything else is 404.

Imported only when ``METRICS_ADDRESS`` is set. Every container configured
with it gets an :class:`ObservabilityAgent` (see
:func:`threadko.observability.instrument_container`), which joins the
process's :class:`ObservabilitySite` for that address when the container
sets up: the first container starts the server (so that probes answer
``starting`` while containers wait for the broker), the last one to stop
or be killed stops it. Until then it answers 503 on ``/health/ready``
while the others stop.

The server is the web server's front (waitress, on threads of its own)
with small limits; it shares no thread and no port with
``WEB_SERVER_ADDRESS``.
"""

import errno
import logging
import sys
import threading

from threadko.amqp.consumer import QueueConsumer
from threadko.amqp.publish import SharedProducerPool
from threadko.exceptions import ConfigurationError
from threadko.extensions import SharedExtension
from threadko.observability import (
    METRICS_ADDRESS_CONFIG_KEY, health, metrics_address,
)
from threadko.observability.metrics import Metrics
from threadko.web.front import (
    CONNECTION_LIMIT_CONFIG_KEY, MAX_REQUEST_BODY_SIZE_CONFIG_KEY,
    STOP_TIMEOUT_CONFIG_KEY, FrontServer, front_settings,
)
from threadko.web.server import parse_address, socket_address

_log = logging.getLogger(__name__)

#: seconds a graceful stop waits for scrapes and probes in flight
STOP_TIMEOUT = 5.0
#: request threads of the server: a probe need not wait for a scrape
THREADS = 2

_SETTINGS = front_settings({
    MAX_REQUEST_BODY_SIZE_CONFIG_KEY: 64 * 1024,
    STOP_TIMEOUT_CONFIG_KEY: STOP_TIMEOUT,
    CONNECTION_LIMIT_CONFIG_KEY: 100,
})

PROBES = {
    '/health/live': health.liveness,
    '/health/ready': health.readiness,
}


def metrics_port(container):
    """The port ``container``'s metrics and health probes are served on
    (useful with ``METRICS_ADDRESS: "127.0.0.1:0"``); None when it does
    not serve them (not configured, or not set up yet)."""
    agent = container.shared_extensions.get(ObservabilityAgent)
    return None if agent is None else agent.port


class ObservabilityAgent(SharedExtension):
    """A container's side of metrics and health probes (bound by
    :func:`~threadko.observability.instrument_container` when
    ``METRICS_ADDRESS`` is set): its worker instrument, the confirm
    latency observers of its publishers, and its place on the
    :class:`ObservabilitySite`, where scrapes read its container's state.

    :raises ConfigurationError: (on :meth:`worker_instruments`)
        ``threadko[metrics]`` is not installed
    """

    site = None
    #: what scrapes and probes read, found when the container sets up
    consumers = ()
    pools = ()
    websocket_servers = ()

    def __init__(self):
        super().__init__()
        self._metrics = None
        self._instrument = None

    def worker_instruments(self):
        """The :class:`~threadko.observability.WorkerInstrument` s to run
        around the container's workers."""
        self._metrics = Metrics.get()
        self._instrument = self._metrics.worker_instrument(
            self.container.service_name)
        return (self._instrument,)

    @property
    def service_name(self):
        return self.container.service_name

    def setup(self):
        address = metrics_address(self.container.config)
        try:
            bind_address = parse_address(address)
        except ConfigurationError:
            raise ConfigurationError(
                '{} is {!r}: use "[host:]port", e.g. "0.0.0.0:9100"'.format(
                    METRICS_ADDRESS_CONFIG_KEY, address)) from None
        if self._instrument is None:
            self.worker_instruments()
        container = self.container
        extensions = list(container.extensions)
        self.consumers = tuple(extension for extension in extensions
                               if isinstance(extension, QueueConsumer))
        self.pools = tuple(extension.pool for extension in extensions
                           if isinstance(extension, SharedProducerPool))
        # imported already if the service has websockets
        websocket = sys.modules.get('threadko.web.websocket')
        self.websocket_servers = () if websocket is None else tuple(
            extension for extension in extensions
            if isinstance(extension, websocket.WebSocketServer))
        observe = self._metrics.confirm_observer(container.service_name)
        for publisher in self.consumers + self.pools:
            publisher.observe_confirm = observe
        self._instrument.prepare(container.entrypoints)
        if self.site is None:
            self.site = ObservabilitySite.acquire(bind_address, self)
        self._metrics.track(self)

    def stop(self):
        self._leave(STOP_TIMEOUT)

    def kill(self):
        # the container records how it died only after the extensions
        # were killed: the site reads it when asked
        self._leave(0, outcome=self.container._died)

    def _leave(self, timeout, outcome=None):
        if self._metrics is not None:
            self._metrics.untrack(self)
        site, self.site = self.site, None
        if site is not None:
            site.release(self, timeout, outcome)

    def state(self):
        """The container's state for the health probes (see
        :mod:`~threadko.observability.health`)."""
        return health.container_state(self.container, self.consumers)

    @property
    def port(self):
        """The port the site is served on (None when not serving)."""
        site = self.site
        return None if site is None else site.port


class ObservabilitySite:
    """One ``METRICS_ADDRESS`` of the process and its server, shared by the
    :class:`ObservabilityAgent` s configured with it through
    :meth:`acquire` and :meth:`release`: the first starts the server, the
    last stops it."""

    _sites = {}
    _sites_lock = threading.Lock()

    def __init__(self, bind_address):
        """Bind ``bind_address`` and start serving.

        :raises ConfigurationError: the address cannot be bound
        """
        self.bind_address = bind_address
        # replaced, never changed: probes read them without the lock
        self.users = ()
        self._killed = {}  # agent -> (service name, the container's outcome)
        self.server = _serve(_App(self), bind_address)

    @classmethod
    def acquire(cls, bind_address, agent):
        """The site for ``bind_address``, serving once this returns, with
        ``agent`` among its users.

        :raises ConfigurationError: the address cannot be bound
        """
        bind_address = socket_address(bind_address)
        with cls._sites_lock:
            site = cls._sites.get(bind_address)
            if site is None:
                site = cls(bind_address)  # binds, or raises
                cls._sites[bind_address] = site
            killed = dict(site._killed)
            killed.pop(agent, None)  # restarted
            site._killed = killed
            if agent not in site.users:
                site.users = site.users + (agent,)
            return site

    def release(self, agent, timeout, outcome=None):
        """``agent`` is done; the last user stops the server, waiting up to
        ``timeout`` seconds for requests in flight.

        :param outcome: the outcome of ``agent``'s container, when it was
            killed: the probes report it ``died`` if it was killed by an
            error, as long as the site serves others
        """
        with self._sites_lock:
            self.users = tuple(user for user in self.users
                               if user is not agent)
            if outcome is not None:
                self._killed = {
                    **self._killed, agent: (agent.service_name, outcome)}
            if self.users:
                return
            if self._sites.get(self.bind_address) is self:
                del self._sites[self.bind_address]
        self.server.stop(timeout)

    def states(self):
        """``(service, state)`` of every container on this site, for the
        health probes."""
        states = []
        for agent in self.users:
            try:
                states.append((agent.service_name, agent.state()))
            except ReferenceError:  # its container is gone
                continue
        for service, outcome in self._killed.values():
            state = health.killed_state(outcome)
            if state is not None:
                states.append((service, state))
        return states

    @property
    def port(self):
        """The port actually bound (useful with port 0)."""
        return self.server.port


def _serve(app, bind_address):
    try:
        server = FrontServer(app, bind_address, _SETTINGS)
    except ConfigurationError as exc:
        cause = exc.__context__
        if isinstance(cause, OSError):
            reason = ('the address is already in use'
                      if cause.errno == errno.EADDRINUSE else cause.strerror)
        else:
            reason = str(exc)
        raise ConfigurationError(
            'Cannot serve metrics and health probes on {}:{}: {}. Set {} '
            'to a free `[host:]port` (not the one of WEB_SERVER_ADDRESS), '
            'or stop what is using it.'.format(
                bind_address.address, bind_address.port, reason,
                METRICS_ADDRESS_CONFIG_KEY)) from cause
    server.set_thread_count(THREADS)
    _log.info('serving metrics and health probes on http://%s:%s/ '
              '(/metrics, /health/live, /health/ready)',
              bind_address.address, server.port)
    return server


class _App:
    """The site's WSGI application."""

    def __init__(self, site):
        import prometheus_client

        self._site = site
        self._metrics = prometheus_client.make_wsgi_app()

    def websocket_acceptor(self, path):
        return None  # the front asks its app; nothing here is a websocket

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO') or '/'
        if path == '/metrics':
            return self._metrics(environ, start_response)
        probe = PROBES.get(path)
        if probe is None:
            return _plain(start_response, '404 Not Found',
                          'Not found: try /metrics, /health/live or '
                          '/health/ready\n')
        method = environ.get('REQUEST_METHOD')
        if method not in ('GET', 'HEAD'):
            return _plain(start_response, '405 Method Not Allowed',
                          'Use GET\n', [('Allow', 'GET, HEAD')])
        ok, body = probe(self._site.states())
        start_response(
            '200 OK' if ok else '503 Service Unavailable',
            [('Content-Type', 'application/json'),
             ('Content-Length', str(len(body))),
             ('Cache-Control', 'no-store')])
        return [] if method == 'HEAD' else [body]


def _plain(start_response, status, text, headers=()):
    body = text.encode('utf-8')
    start_response(status, [('Content-Type', 'text/plain; charset=utf-8'),
                            ('Content-Length', str(len(body)))]
                   + list(headers))
    return [body]
