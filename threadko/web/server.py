"""Routing HTTP requests to ``@http`` entrypoints, and serving them.

:class:`Router` is a WSGI application: it matches a request against the
url rules of the entrypoints added to it (werkzeug routing) and lets the
matching entrypoint answer; 404 and 405 come from the router itself.

:class:`WebServer` is the shared extension every ``@http`` entrypoint of a
container uses. All containers of a process configured with the same
``WEB_SERVER_ADDRESS`` share one :class:`HttpSite`: one :class:`Router` with
all their routes, served by one waitress server. The server starts with
the first of those containers and stops, gracefully, with the last.
``WEB_SERVER_ADDRESS: null`` serves nothing (for WSGI embedding, see
:mod:`threadko.web.wsgi`).
"""

import errno
import logging
import re
import threading
import time
from collections import namedtuple

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import RequestEntityTooLarge as _WaitressTooLarge
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import Map
from werkzeug.wrappers import Request

from threadko.constants import WEB_SERVER_CONFIG_KEY
from threadko.exceptions import ConfigurationError
from threadko.extensions import ProviderCollector, SharedExtension

_log = logging.getLogger(__name__)

DEFAULT_WEB_SERVER_ADDRESS = '0.0.0.0:8000'
#: requests with a larger body are refused with 413 (bytes)
MAX_REQUEST_BODY_SIZE_CONFIG_KEY = 'WEB_SERVER_MAX_REQUEST_BODY_SIZE'
DEFAULT_MAX_REQUEST_BODY_SIZE = 10 * 1024 * 1024
#: waitress request threads; default: the sum of the containers'
#: ``max_workers``, plus a few for requests that need no worker
THREADS_CONFIG_KEY = 'WEB_SERVER_THREADS'
SPARE_THREADS = 2
#: seconds a stopping server waits for requests in flight
STOP_TIMEOUT_CONFIG_KEY = 'WEB_SERVER_STOP_TIMEOUT'
DEFAULT_STOP_TIMEOUT = 10.0

BindAddress = namedtuple('BindAddress', ['address', 'port'])


def parse_address(address_string):
    """``"[host:]port"`` -> :class:`BindAddress` (host ``""`` = all)."""
    match = re.match(r'^((?P<address>[^:]+):)?(?P<port>\d+)$',
                     str(address_string))
    if match is None:
        raise ConfigurationError(
            'Misconfigured bind address `{}`: use `[host:]port`, e.g. '
            '`0.0.0.0:8000`'.format(address_string))
    return BindAddress(match.group('address') or '', int(match.group('port')))


class Router:
    """A WSGI application routing to ``@http`` entrypoints.

    :param max_request_body_size: bodies larger than this many bytes are
        refused with 413 before any worker runs (``None``: no limit)
    """

    def __init__(self, max_request_body_size=DEFAULT_MAX_REQUEST_BODY_SIZE):
        self.max_request_body_size = max_request_body_size
        self._lock = threading.Lock()
        self._providers = []
        self._url_map = Map()

    def add(self, providers):
        """Route to ``providers`` too.

        :raises ConfigurationError: a url and method is routed already
        """
        with self._lock:
            providers = self._providers + [
                provider for provider in providers
                if provider not in self._providers]
            self._url_map = _build_map(providers)
            self._providers = providers

    def remove(self, providers):
        """Stop routing to ``providers`` (unknown ones are ignored)."""
        with self._lock:
            self._providers = [provider for provider in self._providers
                               if provider not in providers]
            self._url_map = _build_map(self._providers)

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            self._check_size(request)
            # the map is replaced, never mutated: no lock on the hot path
            adapter = self._url_map.bind_to_environ(environ)
            provider, values = adapter.match()
            request.path_values = values
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = exc
        return response(environ, start_response)

    def _check_size(self, request):
        limit = self.max_request_body_size
        if limit is not None and request.environ.get('CONTENT_LENGTH') and (
                request.content_length or 0) > limit:
            raise RequestEntityTooLarge(
                'The request body is larger than {} bytes.'.format(limit))


def _build_map(providers):
    rules = {}
    url_map = Map()
    for provider in providers:
        rule = provider.get_url_rule()
        for method in rule.methods or ('*',):
            key = (rule.rule, method)
            if key in rules and method != 'HEAD':
                raise ConfigurationError(
                    '{} {} is routed to both {} and {}: give one of them '
                    'another url or method'.format(
                        method, rule.rule, rules[key], provider))
            rules[key] = provider
        rule.endpoint = provider
        url_map.add(rule)
    return url_map


class HttpSite:
    """One address of this process: a :class:`Router` and the waitress
    server on that address. Containers share it through :meth:`acquire`
    and :meth:`release`; the first starts the server, the last stops it."""

    _sites = {}
    _sites_lock = threading.Lock()

    def __init__(self, bind_address, config):
        """Bind ``bind_address`` and start serving (with no routes yet).

        :raises ConfigurationError: the address cannot be bound
        """
        self.bind_address = bind_address
        body_limit = config.get(
            MAX_REQUEST_BODY_SIZE_CONFIG_KEY, DEFAULT_MAX_REQUEST_BODY_SIZE)
        self.router = Router(body_limit)
        self.fixed_threads = config.get(THREADS_CONFIG_KEY)
        self.users = []
        self.server = _WaitressServer(
            self.router, bind_address, body_limit,
            float(config.get(STOP_TIMEOUT_CONFIG_KEY, DEFAULT_STOP_TIMEOUT)))

    @classmethod
    def acquire(cls, bind_address, config, user, workers):
        """The site for ``bind_address``, serving once this returns.

        :param user: the acquiring object (a container's ``WebServer``)
        :param workers: how many requests ``user`` may serve at once
        :raises ConfigurationError: the address cannot be bound
        """
        # "" and "0.0.0.0" are the same socket
        bind_address = BindAddress(
            bind_address.address or '0.0.0.0', bind_address.port)
        with cls._sites_lock:
            site = cls._sites.get(bind_address)
            if site is None:
                site = cls(bind_address, config)  # binds, or raises
                cls._sites[bind_address] = site
            site.users.append((user, workers))
            site._resize()
            return site

    def release(self, user, timeout):
        """``user`` is done; the last user stops the server, waiting up to
        ``timeout`` seconds for requests in flight."""
        with self._sites_lock:
            self.users = [(u, n) for u, n in self.users if u is not user]
            if self.users:
                self._resize()
                return
            if self._sites.get(self.bind_address) is self:
                del self._sites[self.bind_address]
        self.server.stop(timeout)

    def _resize(self):
        if self.fixed_threads:
            count = int(self.fixed_threads)
        else:
            count = sum(n for _, n in self.users) + SPARE_THREADS
        self.server.set_thread_count(count)

    @property
    def port(self):
        """The port actually bound (useful with port 0)."""
        return self.server.port


class _QueueDepthLogger:
    """Stands in for waitress's ``waitress.queue`` logger, which warns on
    every request that has to wait for a thread (each one, under load):
    the same warning, at most once per ``interval`` seconds."""

    def __init__(self, interval=10.0):
        self._logger = logging.getLogger('waitress.queue')
        self._interval = interval
        self._next = 0.0

    def warning(self, message, *args):
        now = time.monotonic()
        if now >= self._next:  # called under waitress's lock
            self._next = now + self._interval
            self._logger.warning(
                message + ' (requests waiting for a web thread; more '
                'WEB_SERVER_THREADS and max_workers may help; shown at most '
                'every %d s)', *args, self._interval)


class _RequestThreads(ThreadedTaskDispatcher):
    """waitress's request thread pool, with threads named ``threadko-*``,
    a count of requests in flight that a graceful stop can wait on, and
    waitress's queue-depth warning rate-limited."""

    def __init__(self, name):
        super().__init__()
        self.queue_logger = _QueueDepthLogger()
        self.name = name
        self._in_flight = 0
        # per request only the bare lock; the condition is for wait_idle
        self._count_lock = threading.Lock()
        self._idle = threading.Condition(self._count_lock)
        self._waiting = 0

    def start_new_thread(self, target, thread_no):
        thread = threading.Thread(
            target=target, args=(thread_no,), daemon=True,
            name='threadko-web-{}-{}'.format(self.name, thread_no))
        thread.start()

    def add_task(self, task):
        with self._count_lock:
            self._in_flight += 1
        # waitress hands in the same channel for every request of a
        # keep-alive connection: wrap, never modify it
        super().add_task(_CountedTask(task, self._task_done))

    def _task_done(self):
        with self._count_lock:
            self._in_flight -= 1
            if self._waiting:
                self._idle.notify_all()

    def wait_idle(self, timeout):
        with self._count_lock:
            self._waiting += 1
            try:
                return self._idle.wait_for(
                    lambda: self._in_flight == 0, timeout)
            finally:
                self._waiting -= 1


class _CountedTask:
    """A waitress task that reports when it has been serviced or
    cancelled."""

    __slots__ = ('task', 'done')

    def __init__(self, task, done):
        self.task = task
        self.done = done

    def service(self):
        try:
            self.task.service()
        finally:
            self.done()

    def cancel(self):
        try:
            self.task.cancel()
        finally:
            self.done()

    def __repr__(self):
        return repr(self.task)


def _body_limited_channel(limit):
    """waitress's connection class, refusing (413) a request whose body is
    over ``limit`` bytes: at once from its Content-Length, as soon as the
    decoded chunks pass it for a chunked body.

    waitress's own limit counts a chunked body with its chunk framing, so
    a body under the limit could be refused; it is only a backstop here
    (see :func:`_raw_body_limit`). Uses waitress internals:
    ``parser_class``, and the parser's ``content_length``, ``chunked``,
    ``body_rcv``, ``error`` and ``completed``.
    """
    class Parser(HTTPRequestParser):
        def received(self, data):
            consumed = super().received(data)
            # waitress's own 413 (a huge Content-Length, or absurd chunk
            # framing) gets this message too: it names the configured limit
            if isinstance(self.error, _WaitressTooLarge) or (
                    self.error is None and (
                        self.content_length > limit
                        or (self.chunked and self.body_rcv is not None
                            and len(self.body_rcv) > limit))):
                self.error = _WaitressTooLarge(
                    'The request body is larger than {} bytes.'.format(limit))
                self.completed = True
            return consumed

    class Channel(HTTPChannel):
        parser_class = Parser

    return Channel


def _raw_body_limit(limit):
    """waitress's limit (bodies of that many bytes *or more* are refused,
    chunk framing included): room for any sane framing above ``limit``."""
    if limit is None:
        return 2 ** 62
    return 2 * limit + 64 * 1024


class _WaitressServer:
    """A waitress server on its own thread, stoppable gracefully."""

    def __init__(self, app, bind_address, max_request_body_size,
                 stop_timeout):
        host = bind_address.address
        self.threads = _RequestThreads(str(bind_address.port))
        try:
            self._server = create_server(
                app, host=host, port=bind_address.port,
                _dispatcher=self.threads, ident='threadko',
                max_request_body_size=_raw_body_limit(max_request_body_size),
                clear_untrusted_proxy_headers=False)
        except OSError as exc:
            self.threads.shutdown(timeout=1)
            reason = ('the address is already in use'
                      if exc.errno == errno.EADDRINUSE else exc.strerror)
            raise ConfigurationError(
                'Cannot serve HTTP on {}:{}: {}. Set {} to a free '
                '`[host:]port`, or stop what is using it.'.format(
                    host, bind_address.port, reason, WEB_SERVER_CONFIG_KEY))
        if max_request_body_size is not None:
            self._server.channel_class = _body_limited_channel(
                max_request_body_size)
        self.port = int(self._server.effective_port)
        self._stop_timeout = stop_timeout
        self._draining = False
        self._deadline = None
        # the server thread closes the trigger when it ends; nobody may
        # pull it after that (its file descriptor may be reused)
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name='threadko-web-server-{}'.format(self.port))
        self._thread.start()
        _log.info('serving HTTP on %s:%s', host, self.port)

    def set_thread_count(self, count):
        self.threads.set_thread_count(count)

    def _run(self):
        server = self._server
        socket_map = server._map
        loop = server.asyncore.loop
        while not self._drained():
            loop(timeout=0.5, map=socket_map, count=1)
        with self._trigger_lock:
            self._trigger_closed = True
            for channel in list(socket_map.values()):
                channel.close()  # idle keep-alive connections, the trigger
            socket_map.clear()

    def _wake(self, thunk=None):
        with self._trigger_lock:
            if not self._trigger_closed:
                self._server.trigger.pull_trigger(thunk)

    def _drained(self):
        # runs on the server thread, between loop iterations
        if not self._draining:
            return False
        if time.monotonic() >= self._deadline:
            return True
        channels = self._server.active_channels.values()
        return (self.threads.wait_idle(0)
                and not any(channel.requests or channel.total_outbufs_len
                            for channel in channels))

    def stop(self, timeout=None):
        """Stop accepting connections, let requests in flight finish and
        their responses go out (up to ``timeout`` seconds), then close
        every connection and end the server and request threads."""
        timeout = self._stop_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + timeout

        def close_listener():
            # the dispatcher's close, not the server's (that one closes
            # the trigger too, which we still need)
            wasyncore.dispatcher.close(self._server)
            self._draining = True

        self._wake(close_listener)
        self.threads.wait_idle(timeout)
        self._wake()  # re-check, now idle
        self._thread.join(timeout + 1)
        self.threads.shutdown(timeout=1)


class WebServer(ProviderCollector, SharedExtension):
    """The container's side of HTTP serving: collects its ``@http``
    entrypoints and adds them to the process's :class:`HttpSite` for
    ``WEB_SERVER_ADDRESS`` (Nameko's default ``0.0.0.0:8000``) when the
    container starts."""

    site = None

    def setup(self):
        address = self.container.config.get(
            WEB_SERVER_CONFIG_KEY, DEFAULT_WEB_SERVER_ADDRESS)
        self.bind_address = parse_address(address) if address else None

    def start(self):
        if self.bind_address is None:
            return
        providers = self.providers
        site = HttpSite.acquire(
            self.bind_address, self.container.config, self,
            self.container.max_workers)
        try:
            site.router.add(providers)
        except ConfigurationError:
            site.release(self, timeout=0)
            raise
        # entrypoints unregister before this extension stops: remember
        # what to take out of the router then
        self._routed = providers
        self.site = site

    def stop(self):
        self._leave(timeout=None)

    def kill(self):
        self._leave(timeout=0)

    def _leave(self, timeout):
        site, self.site = self.site, None
        if site is not None:
            site.router.remove(self._routed)
            site.release(self, timeout)

    @property
    def port(self):
        """The port this container's routes are served on (``None`` when
        not serving)."""
        return None if self.site is None else self.site.port

    def context_data_from_headers(self, request):
        """Context data for a request's worker: none, as in Nameko.
        Override to take some from the request's headers."""
        return {}
