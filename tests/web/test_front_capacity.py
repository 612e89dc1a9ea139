"""The HTTP front holds thousands of connections and keeps serving.

Real sockets from this process against a container serving an ``@http``
route on 127.0.0.1 (the server runs in this process too, so its threads
are this process's threads):

- 1,100 half-open requests (a request line and one header, then silence:
  slowloris) do not keep a normal request waiting, and are dropped after
  ``WEB_SERVER_HEADER_TIMEOUT`` with a WARNING, as are connections that
  send nothing at all;
- 2,000 idle keep-alive connections stay open while new requests are
  answered promptly, without a thread more than with 10;
- ``WEB_SERVER_IDLE_TIMEOUT`` closes an idle keep-alive connection, never
  a busy one;
- ``WEB_SERVER_CONNECTION_LIMIT``: beyond it nothing more is accepted
  (and that is logged) until some connections close.

Waits for the server are bounded waits for the event itself (poll on the
sockets, a condition on the log records), never fixed sleeps.
"""

import logging
import selectors
import socket
import threading
import time
from http.client import HTTPConnection

import pytest

from support import WAIT, open_files_limit

from threadko.web.handlers import http

pytestmark = pytest.mark.slow

PROMPT = 1.0  # seconds: a request answered while the front is loaded
HALF_OPEN = 1100  # Nameko's eventlet server answers at once with this many
KEEP_ALIVE = 2000
BATCH = 200  # connections opened, then answered, at once
FD_NEEDED = 2 * KEEP_ALIVE + 500  # both ends live in this process

HALF_REQUEST = b'GET / HTTP/1.1\r\nHost: x\r\n'
FULL_REQUEST = b'GET / HTTP/1.1\r\nHost: x\r\n\r\n'
SLOW_REQUEST = b'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n'

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
CONNECTION_LIMIT = 50


class Front:
    name = 'front'

    @http('GET', '/')
    def index(self, request):
        return 'ok'

    @http('GET', '/slow')
    def slow(self, request):
        # busier than IDLE_TIMEOUT: its connection is not idle meanwhile
        time.sleep(IDLE_TIMEOUT * 1.5)
        return 'slow'


# -- fixtures ----------------------------------------------------------------

@pytest.fixture(scope='module', autouse=True)
def enough_file_descriptors():
    """The soft RLIMIT_NOFILE raised to the hard limit for these tests
    (and put back after them)."""
    with open_files_limit(FD_NEEDED):
        yield


@pytest.fixture
def serve(containers, port_of):
    """``serve(**config)``: a container of :class:`Front` serving on
    loopback with ``config``; its port."""
    def start(**config):
        container = containers(
            Front, dict({'WEB_SERVER_ADDRESS': '127.0.0.1:0'}, **config))
        container.start()
        return port_of(container)
    return start


class Clients:
    """The test's client sockets (blocking, ``WAIT`` s timeout), all
    closed at teardown; ``opened_at[sock]``: when its connect returned."""

    def __init__(self):
        self.socks = []
        self.opened_at = {}

    def connect(self, port):
        sock = socket.create_connection(('127.0.0.1', port), timeout=WAIT)
        self.socks.append(sock)
        self.opened_at[sock] = time.monotonic()
        return sock

    def half_open(self, port, count):
        """``count`` connections, each sent half a request."""
        socks = []
        for _ in range(count):
            sock = self.connect(port)
            sock.sendall(HALF_REQUEST)
            socks.append(sock)
        return socks

    def keep_alive(self, port, count):
        """``count`` connections, each having made one complete request
        and read its response (200 ``ok``, not closing): idle keep-alive
        connections. Opened ``BATCH`` at a time, their requests sent
        before their responses are read."""
        socks = []
        while len(socks) < count:
            batch = [self.connect(port)
                     for _ in range(min(BATCH, count - len(socks)))]
            for sock in batch:
                sock.sendall(FULL_REQUEST)
            for sock in batch:
                assert_ok(read_response(sock))
            socks.extend(batch)
        return socks

    def close(self, sock):
        sock.close()
        self.socks.remove(sock)

    def close_all(self):
        for sock in self.socks:
            sock.close()
        self.socks = []


@pytest.fixture
def clients():
    clients = Clients()
    try:
        yield clients
    finally:
        clients.close_all()


class WarningRecords(logging.Handler):
    """Every record of WARNING or above, from any logger, while the test
    runs; :meth:`wait_for` waits for matching ones."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []
        self._cond = threading.Condition()

    def emit(self, record):
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def matching(self, predicate):
        with self._cond:
            return [record for record in self.records
                    if predicate(record.getMessage().lower())]

    def wait_for(self, predicate, timeout=WAIT, what='a matching record'):
        with self._cond:
            found = self._cond.wait_for(
                lambda: self.matching(predicate), timeout)
            assert found, 'never logged {}; logged at WARNING and above: '\
                '{!r}'.format(what, [r.getMessage() for r in self.records])
            return found


@pytest.fixture
def warnings_logged():
    handler = WarningRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# -- helpers -----------------------------------------------------------------

def read_response(sock):
    """``(status, headers, body)`` of the next response on ``sock``
    (``headers``: lower-case names, bytes values)."""
    data = b''
    try:
        while b'\r\n\r\n' not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(
                    'connection closed before a response; got {!r}'.format(
                        data))
            data += chunk
        head, _, body = data.partition(b'\r\n\r\n')
        lines = head.split(b'\r\n')
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b':')
            headers[name.strip().lower().decode()] = value.strip()
        length = int(headers.get('content-length', 0))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError('connection closed inside a body')
            body += chunk
    except socket.timeout:
        raise AssertionError('no response within {} s; got {!r}'.format(
            sock.gettimeout(), data)) from None
    return status, headers, body


def assert_ok(response):
    status, headers, body = response
    assert (status, body) == (200, b'ok'), response
    assert headers.get('connection', b'').lower() != b'close', headers


def timed_get(port, path='/', timeout=WAIT):
    """A GET on a new connection: ``(status, body, seconds)``, the seconds
    measured around the request only (connect to last byte)."""
    connection = HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        started = time.monotonic()
        try:
            connection.request('GET', path)
            response = connection.getresponse()
            body = response.read()
        except socket.timeout:
            raise AssertionError('a new request was not answered within '
                                 '{} s'.format(timeout)) from None
        return response.status, body, time.monotonic() - started
    finally:
        connection.close()


def assert_served_promptly(port, times=3):
    for _ in range(times):
        status, body, seconds = timed_get(port)
        assert (status, body) == (200, b'ok')
        assert seconds < PROMPT, (
            'a new request took {:.2f} s (bound: {} s)'.format(
                seconds, PROMPT))


def readable(socks, timeout):
    """The sockets of ``socks`` that have something to read (data, or the
    server's close) within ``timeout`` seconds (poll/epoll: these are far
    more than select() takes)."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout)]


def wait_until_closed(socks, deadline):
    """Wait (until ``deadline``, a ``time.monotonic()``) for the server to
    close every one of ``socks``: recv gives ``b''`` or a reset. A ``408``
    response before the close is accepted; anything else fails. Returns
    ``{sock: when it was seen closed}``."""
    closed_at = {}
    received = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed_at) < len(socks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b''
                if chunk:
                    data = received[sock] = received.get(sock, b'') + chunk
                    assert data.startswith(b'HTTP/1.1 408'[:len(data)]), (
                        'a half-open request got {!r}'.format(data))
                    continue
                closed_at[sock] = time.monotonic()
                selector.unregister(sock)
    assert len(closed_at) == len(socks), (
        '{} of {} connections still open at the deadline'.format(
            len(socks) - len(closed_at), len(socks)))
    return closed_at


def web_threads():
    return sorted(thread.name for thread in threading.enumerate()
                  if thread.name.startswith('threadko-web'))


# -- slowloris ---------------------------------------------------------------

def test_1100_half_open_requests_do_not_keep_a_request_waiting(
        serve, clients):
    port = serve()
    half_open = clients.half_open(port, HALF_OPEN)

    assert_served_promptly(port)
    # held, neither answered nor dropped (the header timeout is 10 s)
    assert readable(half_open, 0) == []


def _says_headers_timed_out(message):
    return 'header' in message and any(
        word in message for word in ('time', 'within', 'slow'))


def test_half_open_requests_are_dropped_after_the_header_timeout(
        serve, clients, warnings_logged):
    port = serve(WEB_SERVER_HEADER_TIMEOUT=HEADER_TIMEOUT)
    half_open = clients.half_open(port, HALF_OPEN)
    assert_served_promptly(port, times=1)

    closed_at = wait_until_closed(
        half_open, deadline=time.monotonic() + HEADER_TIMEOUT + WAIT)

    earliest = min(closed_at[sock] - clients.opened_at[sock]
                   for sock in half_open)
    assert earliest >= HEADER_TIMEOUT - 0.1, (
        'a half-open request was dropped {:.2f} s after it connected, '
        'before the {} s header timeout'.format(earliest, HEADER_TIMEOUT))
    # one line per connection, or one for many: at least one, never more
    # than one per connection
    records = warnings_logged.wait_for(
        _says_headers_timed_out,
        what='that clients did not send their headers in time')
    assert 1 <= len(records) <= HALF_OPEN
    assert_served_promptly(port)


def test_connections_that_send_nothing_are_dropped_after_the_header_timeout(
        serve, clients):
    # not a byte of headers within the timeout either: the same slowloris,
    # which the (much longer) idle timeout must not be the only bound of
    port = serve(WEB_SERVER_HEADER_TIMEOUT=HEADER_TIMEOUT)
    silent = [clients.connect(port) for _ in range(100)]
    assert_served_promptly(port, times=1)

    closed_at = wait_until_closed(
        silent, deadline=time.monotonic() + HEADER_TIMEOUT + WAIT)

    earliest = min(closed_at[sock] - clients.opened_at[sock]
                   for sock in silent)
    assert earliest >= HEADER_TIMEOUT - 0.1
    assert_served_promptly(port)


# -- many idle keep-alive connections --------------------------------------

def test_2000_idle_keep_alive_connections_stay_open_while_serving(
        serve, clients):
    port = serve()
    # a burst first, so a pool that grows on demand is at its size now
    for sock in clients.keep_alive(port, 50):
        clients.close(sock)
    few = clients.keep_alive(port, 10)
    threads_with_10 = threading.active_count()
    web_threads_with_10 = web_threads()

    many = few + clients.keep_alive(port, KEEP_ALIVE - len(few))

    assert threading.active_count() == threads_with_10, (
        '{} threads with 10 connections, {} with {}; web threads with 10: '
        '{}, now: {}'.format(threads_with_10, threading.active_count(),
                             len(many), web_threads_with_10, web_threads()))
    assert web_threads() == web_threads_with_10
    assert_served_promptly(port)
    # none was closed (a closed one would be readable)...
    assert readable(many, 0) == []
    # ...and they still work
    sample = many[::20]
    for sock in sample:
        sock.sendall(FULL_REQUEST)
    for sock in sample:
        assert_ok(read_response(sock))
    assert threading.active_count() == threads_with_10


# -- idle timeout ----------------------------------------------------------

def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
        serve, clients):
    port = serve(WEB_SERVER_IDLE_TIMEOUT=IDLE_TIMEOUT)
    [idle, busy] = clients.keep_alive(port, 2)
    idle_since = time.monotonic()
    # a request that takes longer than the idle timeout: not idle
    slow = clients.connect(port)
    slow.sendall(SLOW_REQUEST)

    # ``busy`` makes a request every 0.2 s, meanwhile
    deadline = idle_since + IDLE_TIMEOUT + WAIT
    closed_at = None
    while closed_at is None and time.monotonic() < deadline:
        if readable([idle], 0.2):
            try:
                assert idle.recv(65536) == b'', 'an unasked-for response'
            except ConnectionResetError:
                pass
            closed_at = time.monotonic()
        busy.sendall(FULL_REQUEST)
        assert_ok(read_response(busy))
    assert closed_at is not None, (
        'an idle connection was still open {} s after its last response '
        '(idle timeout: {} s)'.format(IDLE_TIMEOUT + WAIT, IDLE_TIMEOUT))
    assert closed_at - idle_since >= IDLE_TIMEOUT - 0.1, (
        'closed {:.2f} s after its last response, before the {} s idle '
        'timeout'.format(closed_at - idle_since, IDLE_TIMEOUT))

    # busy for longer than the idle timeout in all: still open
    while time.monotonic() < idle_since + 2 * IDLE_TIMEOUT:
        busy.sendall(FULL_REQUEST)
        assert_ok(read_response(busy))
        readable([busy], 0.2)  # nothing to read: a pause
    status, _, body = read_response(slow)
    assert (status, body) == (200, b'slow')
    assert_served_promptly(port, times=1)


# -- connection limit --------------------------------------------------------

def _says_connection_limit(message):
    return 'limit' in message and 'connection' in message


def test_beyond_the_connection_limit_nothing_is_served_until_some_close(
        serve, clients, warnings_logged):
    port = serve(WEB_SERVER_CONNECTION_LIMIT=CONNECTION_LIMIT)
    held = clients.keep_alive(port, CONNECTION_LIMIT)

    # the kernel completes the handshake; the server must not take it
    extra = clients.connect(port)
    extra.sendall(FULL_REQUEST)
    assert readable([extra], PROMPT) == [], (
        'connection {} was served with {} held (limit {})'.format(
            CONNECTION_LIMIT + 1, CONNECTION_LIMIT, CONNECTION_LIMIT))
    records = warnings_logged.wait_for(
        _says_connection_limit, what='that the connection limit was reached')
    assert len(records) <= 5, 'logged again and again: {!r}'.format(
        [record.getMessage() for record in records])

    for sock in held[:5]:
        clients.close(sock)
    assert_ok(read_response(extra))
    assert_served_promptly(port)
    for sock in held[5:]:
        sock.sendall(FULL_REQUEST)
        assert_ok(read_response(sock))
