"""Bad input over HTTP, on the real waitress server of a container: broken
requests, bodies over the limit, clients that stall half-way through a
request, and urls nobody serves.

Each case checks the status (and the reason in the body) the client gets,
then that the server still answers a normal request. Broken requests are
written to a plain socket, so the test controls every byte.
"""

import http.client as httpclient
import socket
import time

import pytest

from threadko.web.handlers import http

from support import WAIT, http_fetch, web_port

LIMIT = 1000  # WEB_SERVER_MAX_REQUEST_BODY_SIZE in these tests
PROMPT = 1.0  # seconds: a request to an idle server is answered within this


class Site:
    name = 'site'

    @http('GET', '/ping')
    def ping(self, request):
        return 'pong'

    @http('POST', '/upload')
    def upload(self, request):
        return 'got {}'.format(len(request.get_data()))

    @http('GET', '/items/<int:item_id>')
    def item(self, request, item_id):
        return 'item {}'.format(item_id)


@pytest.fixture
def port(container_factory):
    """The port of a started ``Site`` with one worker (so three web
    threads) and a body limit of :data:`LIMIT` bytes."""
    container = container_factory(Site, {
        'WEB_SERVER_ADDRESS': '127.0.0.1:0', 'max_workers': 1,
        'WEB_SERVER_MAX_REQUEST_BODY_SIZE': LIMIT})
    container.start()
    return web_port(container)


def fetch(port, method, path, body=None, headers=None):
    """One request on a new connection: ``(status, body text)``."""
    reply = http_fetch(port, method, path, body, headers)
    return reply.status, reply.text


def still_serves(port):
    started = time.monotonic()
    assert fetch(port, 'GET', '/ping') == (200, 'pong')
    assert time.monotonic() - started < PROMPT
    return True


def read_response(sock):
    """Read until the server closes the connection (as it does after an
    error response): ``(status code, body bytes)``."""
    received = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b'\r\n\r\n')
    status_line = head.split(b'\r\n', 1)[0]
    assert status_line.startswith(b'HTTP/1.'), received[:200]
    return int(status_line.split()[1]), body


def send_raw(port, data):
    with socket.create_connection(('127.0.0.1', port), timeout=WAIT) as sock:
        sock.sendall(data)
        return read_response(sock)


def request_bytes(first_line, *headers, body=b''):
    lines = [first_line, b'Host: localhost'] + list(headers)
    return b'\r\n'.join(lines) + b'\r\n\r\n' + body


# -- malformed requests -------------------------------------------------------

MAX_HEADER = 262144  # waitress's default max_request_header_size
HUGE_HEADER = b'GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Huge: '


@pytest.mark.parametrize('data, status, reason', [
    (b'GARBAGE\r\n\r\n', 400, b'Start line is invalid'),
    (request_bytes(b'GET /ping HTTP/1.1 extra'), 400,
     b'Start line is invalid'),
    (request_bytes(b'GET /ping HTTP/1.1', b'NoColonHere'), 400,
     b'Invalid header'),
    (request_bytes(b'GET /ping HTTP/1.1', b'Bad Name: x'), 400,
     b'Invalid header'),
    (request_bytes(b'GET /\xff\xfe HTTP/1.1'), 400, b'Bad URI'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Content-Length: abc'), 400,
     b'Content-Length is invalid'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Content-Length: 3',
                   b'Content-Length: 4', body=b'abcd'), 400,
     b'Content-Length is invalid'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Transfer-Encoding: chunked',
                   body=b'zz\r\nabc\r\n0\r\n\r\n'), 400,
     b'Invalid chunk size'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Transfer-Encoding: gzip'),
     501, b'Transfer-Encoding requested is not supported'),
    # headers that never end: refused once they reach waitress's maximum
    # (sent to exactly that size, so that the server reads every byte
    # before it closes and the client is not reset before it reads)
    (HUGE_HEADER.ljust(MAX_HEADER, b'h'), 431, b'exceeds max_header'),
    # a TLS ClientHello sent to the plain HTTP port
    (b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + bytes(32)
     + b'\r\n\r\n', 400, b'Start line is invalid'),
], ids=['garbage', 'extra-word', 'header-no-colon', 'header-name-space',
        'uri-not-utf8', 'content-length-not-a-number',
        'two-content-lengths', 'bad-chunk-size', 'unknown-transfer-encoding',
        'header-too-large', 'tls-handshake'])
def test_malformed_request_gets_an_error_and_the_server_goes_on(
        port, data, status, reason):
    got_status, body = send_raw(port, data)
    assert (got_status, reason in body) == (status, True), body
    assert still_serves(port)


@pytest.mark.parametrize('method, path, status', [
    ('GET', '/nowhere', 404),
    ('GET', '/items/not-a-number', 404),  # the int converter refuses it
    ('GET', '/%zz', 404),
    ('GET', '/pi%00ng', 404),
    ('DELETE', '/ping', 405),
    ('POST', '/items/1', 405),
])
def test_unknown_route_is_404_and_wrong_method_405(port, method, path, status):
    got_status, text = fetch(port, method, path)
    assert got_status == status
    assert ('Not Found' if status == 404 else 'Method Not Allowed') in text
    assert still_serves(port)


# -- bodies over the limit ----------------------------------------------------

@pytest.mark.parametrize('length', [LIMIT + 1, 10 ** 20])
def test_content_length_over_the_limit_is_refused_before_the_body(
        port, length):
    with socket.create_connection(('127.0.0.1', port), timeout=WAIT) as sock:
        # the body never comes: the header alone is enough to refuse it
        sock.sendall(request_bytes(
            b'POST /upload HTTP/1.1',
            'Content-Length: {}'.format(length).encode()))
        status, body = read_response(sock)
    assert status == 413
    assert b'The request body is larger than 1000 bytes.' in body
    assert still_serves(port)


def test_body_over_the_limit_is_413_naming_the_limit(port):
    status, text = fetch(port, 'POST', '/upload', body=b'x' * (LIMIT + 1))
    assert status == 413
    assert 'The request body is larger than 1000 bytes.' in text
    assert still_serves(port)


def chunked_upload(port, chunks):
    connection = httpclient.HTTPConnection('127.0.0.1', port, timeout=WAIT)
    try:
        connection.request('POST', '/upload', body=iter(chunks),
                           encode_chunked=True)
        response = connection.getresponse()
        return response.status, response.read().decode('utf-8')
    finally:
        connection.close()


def test_chunked_body_over_the_limit_is_413(port):
    status, text = chunked_upload(port, [b'x' * 600, b'y' * 401])
    assert status == 413
    assert 'The request body is larger than 1000 bytes.' in text
    assert still_serves(port)


@pytest.mark.parametrize('chunks', [
    [b'x' * LIMIT], [b'x' * 10] * 99, [b'x'] * LIMIT,
], ids=['one-chunk', 'ten-byte-chunks', 'one-byte-chunks'])
def test_chunked_body_within_the_limit_is_accepted(port, chunks):
    # the limit is on the body, not on the bytes of its chunk framing
    assert chunked_upload(port, chunks) == (
        200, 'got {}'.format(sum(map(len, chunks))))


def test_body_of_exactly_the_limit_is_accepted(port):
    assert fetch(port, 'POST', '/upload', body=b'x' * LIMIT) == (
        200, 'got {}'.format(LIMIT))


# -- slow clients -------------------------------------------------------------

STALLED = [
    # (sent first, sent when the client finally goes on, expected body)
    (b'GET /pi', b'ng HTTP/1.1\r\nHost: localhost\r\n\r\n', b'pong'),
    (b'GET /ping HTTP/1.1\r\nHost: localhost\r\n', b'\r\n', b'pong'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Content-Length: 100',
                   body=b'x' * 40), b'x' * 60, b'got 100'),
    (request_bytes(b'POST /upload HTTP/1.1', b'Transfer-Encoding: chunked',
                   body=b'a\r\n0123456789\r\n'), b'0\r\n\r\n', b'got 10'),
]


def read_one_response(sock):
    """Read one keep-alive response (with Content-Length)."""
    received = b''
    while b'\r\n\r\n' not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b'\r\n\r\n')
    length = next(int(line.split(b':', 1)[1]) for line in head.split(b'\r\n')
                  if line.lower().startswith(b'content-length:'))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, received
        body += chunk
    return int(head.split()[1]), body


def test_clients_stalled_mid_request_do_not_hold_up_the_others(port):
    # 5 of each kind: 20 stalled connections against 3 web threads. waitress
    # reads requests asynchronously and hands only complete ones to a
    # thread, so none of these takes a thread while it stalls
    stalled = []
    try:
        for _ in range(5):
            for first, rest, expected in STALLED:
                sock = socket.create_connection(
                    ('127.0.0.1', port), timeout=WAIT)
                stalled.append((sock, rest, expected))
                sock.sendall(first)

        for _ in range(10):
            assert still_serves(port)
        assert chunked_upload(port, [b'z' * 10]) == (200, 'got 10')

        # the stalled clients go on, and are answered
        for sock, rest, _ in stalled:
            sock.sendall(rest)
        for sock, _, expected in stalled:
            assert read_one_response(sock) == (200, expected)
    finally:
        for sock, _, _ in stalled:
            sock.close()
    assert still_serves(port)
