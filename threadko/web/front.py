"""The server behind ``WEB_SERVER_ADDRESS`` (the front): waitress, with its
one I/O thread holding every connection and a fixed pool of request
threads running the requests, so that neither grows with the number of
connections. On top of waitress:

- the I/O loop uses ``poll()`` (not ``select()``, which stops at 1024
  descriptors), and holds up to ``WEB_SERVER_CONNECTION_LIMIT``
  connections;
- a client that has not sent its request headers within
  ``WEB_SERVER_HEADER_TIMEOUT`` seconds is dropped (slow senders, the
  slowloris pattern), and an idle keep-alive connection is closed after
  ``WEB_SERVER_IDLE_TIMEOUT`` seconds;
- request bodies over the limit are refused with 413, by their decoded
  size;
- a websocket upgrade request for a route that accepts websockets (see
  :mod:`threadko.web.websocket`) turns its connection into a websocket,
  still held by the I/O thread (:mod:`threadko.web.websocket_connection`);
- a graceful stop lets the requests in flight finish.

This module uses waitress internals, named where they are used.
"""

import errno
import logging
import resource
import select
import threading
import time
from collections import namedtuple

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import RequestEntityTooLarge as _WaitressTooLarge

from threadko.constants import (
    DEFAULT_WEBSOCKET_PING_INTERVAL, WEB_SERVER_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError

_log = logging.getLogger(__name__)

#: requests with a larger body are refused with 413 (bytes)
MAX_REQUEST_BODY_SIZE_CONFIG_KEY = 'WEB_SERVER_MAX_REQUEST_BODY_SIZE'
DEFAULT_MAX_REQUEST_BODY_SIZE = 10 * 1024 * 1024
#: seconds a stopping server waits for requests in flight
STOP_TIMEOUT_CONFIG_KEY = 'WEB_SERVER_STOP_TIMEOUT'
DEFAULT_STOP_TIMEOUT = 10.0
#: connections held at once; beyond, new ones wait to be accepted
CONNECTION_LIMIT_CONFIG_KEY = 'WEB_SERVER_CONNECTION_LIMIT'
DEFAULT_CONNECTION_LIMIT = 10000
#: seconds a client has to send a request's headers
HEADER_TIMEOUT_CONFIG_KEY = 'WEB_SERVER_HEADER_TIMEOUT'
DEFAULT_HEADER_TIMEOUT = 10.0
#: seconds an idle keep-alive connection is kept
IDLE_TIMEOUT_CONFIG_KEY = 'WEB_SERVER_IDLE_TIMEOUT'
DEFAULT_IDLE_TIMEOUT = 120.0
#: seconds between pings of a quiet websocket
WEBSOCKET_PING_INTERVAL_CONFIG_KEY = 'WEBSOCKET_PING_INTERVAL'
#: seconds a websocket may stay silent (pongs count) before it is closed
WEBSOCKET_IDLE_TIMEOUT_CONFIG_KEY = 'WEBSOCKET_IDLE_TIMEOUT'
DEFAULT_WEBSOCKET_IDLE_TIMEOUT = 60.0
#: the largest websocket message a client may send (bytes)
WEBSOCKET_MAX_MESSAGE_SIZE_CONFIG_KEY = 'WEBSOCKET_MAX_MESSAGE_SIZE'
DEFAULT_WEBSOCKET_MAX_MESSAGE_SIZE = 1024 * 1024
#: bytes waiting to be sent to one websocket before it is closed as a
#: client that does not read
WEBSOCKET_MAX_SEND_BUFFER_CONFIG_KEY = 'WEBSOCKET_MAX_SEND_BUFFER'
DEFAULT_WEBSOCKET_MAX_SEND_BUFFER = 1024 * 1024

#: the close code of websockets closed because the server stops
GOING_AWAY = 1001

# how often the I/O thread looks for timed-out connections (whole seconds:
# waitress's cleanup_interval)
SWEEP_INTERVAL = 1

Settings = namedtuple('Settings', [
    'max_request_body_size', 'stop_timeout', 'connection_limit',
    'header_timeout', 'idle_timeout', 'websocket_ping_interval',
    'websocket_idle_timeout', 'websocket_max_message_size',
    'websocket_max_send_buffer'])
Settings.__doc__ = """The front's limits, read from a config by
:func:`front_settings`."""


def front_settings(config):
    """The :class:`Settings` of ``config`` (defaults for absent keys)."""
    def get(key, default, convert=float):
        value = config.get(key, default)
        return None if value is None else convert(value)

    return Settings(
        max_request_body_size=config.get(
            MAX_REQUEST_BODY_SIZE_CONFIG_KEY, DEFAULT_MAX_REQUEST_BODY_SIZE),
        stop_timeout=get(STOP_TIMEOUT_CONFIG_KEY, DEFAULT_STOP_TIMEOUT),
        connection_limit=get(CONNECTION_LIMIT_CONFIG_KEY,
                             DEFAULT_CONNECTION_LIMIT, int),
        header_timeout=get(HEADER_TIMEOUT_CONFIG_KEY, DEFAULT_HEADER_TIMEOUT),
        idle_timeout=get(IDLE_TIMEOUT_CONFIG_KEY, DEFAULT_IDLE_TIMEOUT),
        websocket_ping_interval=get(WEBSOCKET_PING_INTERVAL_CONFIG_KEY,
                                    DEFAULT_WEBSOCKET_PING_INTERVAL),
        websocket_idle_timeout=get(WEBSOCKET_IDLE_TIMEOUT_CONFIG_KEY,
                                   DEFAULT_WEBSOCKET_IDLE_TIMEOUT),
        websocket_max_message_size=get(
            WEBSOCKET_MAX_MESSAGE_SIZE_CONFIG_KEY,
            DEFAULT_WEBSOCKET_MAX_MESSAGE_SIZE, int),
        websocket_max_send_buffer=get(
            WEBSOCKET_MAX_SEND_BUFFER_CONFIG_KEY,
            DEFAULT_WEBSOCKET_MAX_SEND_BUFFER, int),
    )


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


def wants_websocket(headers):
    """Whether a request's headers (waitress's: upper case, ``_`` for
    ``-``) ask to upgrade the connection to a websocket."""
    upgrade = headers.get('UPGRADE', '').lower()
    connection = headers.get('CONNECTION', '').lower()
    return 'websocket' in upgrade and 'upgrade' in connection


def _channel_class(settings, router):
    """waitress's connection class, with the limits and the websocket
    upgrade of the module docstring. Uses waitress internals: the channel's
    ``parser_class``, ``received``, ``service``, ``requests``,
    ``requests_lock``, ``write_soon``, ``outbuf_lock`` and
    ``_flush_some_if_lockable``; the parser's ``content_length``,
    ``chunked``, ``body_rcv``, ``error``, ``completed`` and
    ``headers_finished``."""
    limit = settings.max_request_body_size

    class Parser(HTTPRequestParser):
        def received(self, data):
            consumed = super().received(data)
            # waitress's own 413 (a huge Content-Length, or absurd chunk
            # framing) gets this message too: it names the configured
            # limit. waitress's own limit counts a chunked body with its
            # chunk framing (see _raw_body_limit): here, the decoded body
            if limit is not None and (
                    isinstance(self.error, _WaitressTooLarge) or (
                        self.error is None and (
                            self.content_length > limit
                            or (self.chunked and self.body_rcv is not None
                                and len(self.body_rcv) > limit)))):
                self.error = _WaitressTooLarge(
                    'The request body is larger than {} bytes.'.format(limit))
                self.completed = True
            return consumed

    class Channel(HTTPChannel):
        parser_class = Parser
        #: the websocket this connection became, if it did
        websocket = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            #: when the headers of the request being read are due: a new
            #: connection's first request counts from the connection; a
            #: keep-alive connection between requests is only idle
            self.header_deadline = time.monotonic() + settings.header_timeout

        def received(self, data):
            websocket = self.websocket
            if websocket is not None:
                websocket.receive(data)
                return True
            result = super().received(data)
            request = self.request  # the one still being read, if any
            if request is None or request.headers_finished:
                self.header_deadline = None
            elif self.header_deadline is None:
                self.header_deadline = (
                    time.monotonic() + settings.header_timeout)
            return result

        def readable(self):
            websocket = self.websocket
            if websocket is not None and websocket.backlogged():
                return False  # a client sending faster than it is served
            return super().readable()

        def service(self):
            # on a request thread
            request = self.requests[0]
            if not request.error and wants_websocket(request.headers):
                acceptor = router.websocket_acceptor(request.path)
                if acceptor is not None:
                    self._upgrade(request, acceptor)
                    return
            super().service()

        def _upgrade(self, request, acceptor):
            from threadko.web.websocket_connection import (
                WebSocket, service_unavailable,
            )

            environ = self.task_class(self, request).get_environment()
            websocket = WebSocket(self, settings)
            response = websocket.handshake(request)

            def open_socket(greeting, before=None):
                with self.requests_lock:
                    # from now on the bytes it receives are the websocket's
                    self.websocket = websocket
                    for queued in self.requests:
                        queued.close()
                    self.requests = []
                websocket.send_handshake(response, greeting, before)

            if not websocket.open or not acceptor.accept_websocket(
                    websocket, environ, open_socket):
                if websocket.open:  # refused: the service is stopping
                    response = service_unavailable()
                with self.requests_lock:
                    self.close_when_flushed = True
                try:
                    self.write_soon(response)
                except Exception:  # ClientDisconnected: gone already
                    _log.debug('client left during a websocket handshake')
            self.server.pull_trigger()

        def handle_write(self):
            if self.websocket is None:
                return super().handle_write()
            # waitress flushes without the lock when no request is being
            # served; a websocket's frames come from other threads at any
            # time, holding it
            self._flush_exception(self._flush_some_if_lockable)
            if self.close_when_flushed and not self.total_outbufs_len:
                self.close_when_flushed = False
                self.will_close = True
            if self.will_close:
                self.handle_close()

        def handle_close(self):
            super().handle_close()
            websocket = self.websocket
            if websocket is not None:
                websocket.connection_lost()

    return Channel


def _raw_body_limit(limit):
    """waitress's limit (bodies of that many bytes *or more* are refused,
    chunk framing included): room for any sane framing above ``limit``."""
    if limit is None:
        return 2 ** 62
    return 2 * limit + 64 * 1024


class FrontServer:
    """A waitress server on its own thread (the I/O thread), stoppable
    gracefully.

    :param app: the WSGI application (a :class:`~threadko.web.server.Router`)
    :param bind_address: where to listen
    :param settings: the :class:`Settings`
    :raises ConfigurationError: the address cannot be bound
    """

    def __init__(self, app, bind_address, settings):
        host = bind_address.address
        self.settings = settings
        _raise_open_files_limit(settings.connection_limit + 64)
        self.threads = _RequestThreads(str(bind_address.port))
        try:
            self._server = create_server(
                app, host=host, port=bind_address.port,
                _dispatcher=self.threads, ident='threadko',
                max_request_body_size=_raw_body_limit(
                    settings.max_request_body_size),
                # waitress counts its listening socket and its trigger too
                connection_limit=settings.connection_limit + 2,
                cleanup_interval=SWEEP_INTERVAL,
                clear_untrusted_proxy_headers=False)
        except OSError as exc:
            self.threads.shutdown(timeout=1)
            reason = ('the address is already in use'
                      if exc.errno == errno.EADDRINUSE else exc.strerror)
            raise ConfigurationError(
                'Cannot serve HTTP on {}:{}: {}. Set {} to a free '
                '`[host:]port`, or stop what is using it.'.format(
                    host, bind_address.port, reason, WEB_SERVER_CONFIG_KEY))
        self._server.channel_class = _channel_class(settings, app)
        # waitress calls it on the I/O thread, every SWEEP_INTERVAL
        self._server.maintenance = self._sweep
        self.port = int(self._server.effective_port)
        self._draining = False
        self._deadline = None
        # the server thread closes the trigger when it ends; nobody may
        # pull it after that (its file descriptor may be reused)
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        # ... and every pull goes through that check: waitress's channels
        # (and websockets, from worker threads) call server.pull_trigger(),
        # which may come after the server thread ended (a request thread
        # finishing a websocket handshake, a worker closing a socket)
        self._server.pull_trigger = self._wake
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
        poller = _Poller()
        while not self._drained():
            poller.poll(0.5, socket_map)
        # websockets still open get their close frame (going away) now,
        # written at once if the client reads: a kill stops this server
        # at the same time as the websocket server that would send it
        for channel in list(socket_map.values()):
            websocket = getattr(channel, 'websocket', None)
            if websocket is not None:
                websocket.close(GOING_AWAY, 'server stopping')
        with self._trigger_lock:
            self._trigger_closed = True
            for channel in list(socket_map.values()):
                if getattr(channel, 'websocket', None) is not None:
                    # tells its websocket server it is gone
                    channel.handle_close()
                else:
                    channel.close()  # idle keep-alive connections, the trigger
            socket_map.clear()

    def _sweep(self, now):
        """Close what timed out: connections that did not send their
        request headers in time, idle keep-alive connections; and let each
        websocket ping or time out. On the I/O thread."""
        monotonic = time.monotonic()
        idle_before = now - self.settings.idle_timeout
        late = 0
        for channel in list(self._server.active_channels.values()):
            websocket = getattr(channel, 'websocket', None)
            if websocket is not None:
                # a closing one too: it may have to be dropped
                websocket.check(monotonic)
            elif channel.will_close:
                continue
            elif (channel.header_deadline is not None
                    and monotonic >= channel.header_deadline):
                channel.will_close = True
                if channel.request is not None:
                    late += 1  # it sent part of a request
                else:
                    # it sent nothing: a browser's spare connection, say
                    _log.debug('dropped %s: no request within %ss',
                               channel, self.settings.header_timeout)
            elif not channel.requests and channel.last_activity < idle_before:
                channel.will_close = True
        if late:
            _log.warning(
                'dropped %d connection(s) that did not send their request '
                'headers within %ss (%s)', late, self.settings.header_timeout,
                HEADER_TIMEOUT_CONFIG_KEY)

    def _wake(self, thunk=None):
        with self._trigger_lock:
            if not self._trigger_closed:
                self._server.trigger.pull_trigger(thunk)

    def _drained(self):
        # runs on the server thread, between loop iterations
        if not self._draining:
            return False
        now = time.monotonic()
        if now >= self._deadline:
            return True
        # the sweep stopped with the listener: websockets whose close
        # frame does not go out (clients that do not read) are dropped
        # here, rather than hold the stop for its whole timeout
        for channel in list(self._server.active_channels.values()):
            websocket = getattr(channel, 'websocket', None)
            if websocket is not None:
                websocket.expire(now)
        channels = self._server.active_channels.values()
        return (self.threads.wait_idle(0)
                and not any(channel.requests or channel.total_outbufs_len
                            for channel in channels))

    def stop(self, timeout=None):
        """Stop accepting connections, let requests in flight finish and
        their responses go out (up to ``timeout`` seconds), then close
        every connection and end the server and request threads."""
        timeout = self.settings.stop_timeout if timeout is None else timeout
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


class _Poller:
    """waitress's ``poll2`` (one round of its I/O loop), keeping one
    ``poll()`` object between rounds: ``select()`` cannot watch descriptors
    above 1024, and waitress's ``poll2`` registers every connection anew
    each round, asking each whether it is readable and writable. Here a
    websocket that is only waiting for its client (the usual state of
    thousands of them) costs a few attribute reads per round, and a
    descriptor is re-registered only when what it waits for changed."""

    def __init__(self):
        self._pollster = select.poll()
        self._registered = {}  # fd -> the flags it is registered with

    def poll(self, timeout, socket_map):
        registered = self._registered
        pollster = self._pollster
        for fd, obj in list(socket_map.items()):
            websocket = getattr(obj, 'websocket', None)
            if websocket is not None and not (
                    obj.will_close or obj.close_when_flushed
                    or obj.total_outbufs_len or websocket.backlogged()):
                flags = _READ  # its readable(), and not writable()
            else:
                flags = 0
                if obj.readable():
                    flags = _READ
                if (obj.writable() and not obj.accepting
                        and not _being_flushed(obj, websocket)):
                    flags |= select.POLLOUT
            if registered.get(fd, 0) != flags:
                if not flags:
                    pollster.unregister(fd)
                    del registered[fd]
                else:
                    pollster.register(fd, flags)  # or re-registers it
                    registered[fd] = flags
        for fd in registered.keys() - socket_map.keys():  # closed since
            pollster.unregister(fd)
            del registered[fd]
        # (a signal does not interrupt it: Python retries, PEP 475)
        for fd, flags in pollster.poll(int(timeout * 1000)):
            obj = socket_map.get(fd)
            if obj is not None:
                wasyncore.readwrite(obj, flags)


_READ = select.POLLIN | select.POLLPRI


def _being_flushed(obj, websocket):
    """Whether another thread is writing to the connection right now: a
    request thread serving it, or a worker writing to its websocket, holding
    its ``outbuf_lock``. That thread sends what it wrote and wakes the I/O
    thread if some is left; polling for POLLOUT meanwhile would only spin
    the I/O thread, which cannot take the lock, against the writer for the
    GIL."""
    if websocket is None and not getattr(obj, 'requests', None):
        return False  # nobody but the I/O thread writes to it
    lock = obj.outbuf_lock  # a Condition over an RLock: no locked()
    if lock.acquire(False):
        lock.release()
        return False
    return True


def _raise_open_files_limit(wanted):
    """Let the process open ``wanted`` descriptors (each connection is one),
    as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            _log.warning('could not raise the open files limit to %d; the '
                         'web server may hold fewer connections', target)
