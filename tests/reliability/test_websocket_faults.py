"""Websockets under bad input and faults, on the real front of a container
(127.0.0.1, port 0) in this process: broken handshakes, messages over the
size limit, binary frames, invalid UTF-8, a client that stops reading
while broadcasts go on, pings and idle clients, and 2,000 websockets opened
and dropped at once or held open. After each, the service still serves.

Broken input is written with wsproto (client mode) over a plain socket,
so the test controls every frame; well-behaved clients are
:mod:`threadko.testing.websocket`'s. These tests need no broker (the
directory's marks say RabbitMQ; nothing here connects to it).
"""

import json
import logging
import selectors
import socket
import threading
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage,
)

from support import WAIT, http_fetch, open_files_limit, web_port

from threadko.testing.websocket import make_virtual_socket
from threadko.web import websocket_connection
from threadko.web.websocket import WebSocketHubProvider, WebSocketRpc, rpc

PROMPT = 1.0  # seconds: an rpc answered while the front is loaded
MANY = 2000
FD_NEEDED = 2 * MANY + 500  # both ends live in this process

UPGRADE = {'Upgrade': 'websocket', 'Connection': 'Upgrade'}


class Faulty:
    name = 'faulty'
    hub = WebSocketHubProvider()

    @rpc
    def echo(self, socket_id, value=None):
        return value

    @rpc
    def join(self, socket_id, channel='all'):
        self.hub.subscribe(socket_id, channel)
        return socket_id

    @rpc
    def blast(self, socket_id, count, size, channel='all'):
        padding = 'x' * size
        for seq in range(count):
            self.hub.broadcast(channel, 'tick', {'seq': seq, 'pad': padding})
        return count


# -- fixtures and helpers -----------------------------------------------------

@pytest.fixture(scope='module', autouse=True)
def enough_file_descriptors():
    """The soft RLIMIT_NOFILE raised to the hard limit for these tests
    (and put back after them)."""
    with open_files_limit(FD_NEEDED):
        yield


@pytest.fixture
def serve(container_factory, memory_config):
    """``serve(**config)``: start a ``Faulty`` on 127.0.0.1:0 with
    ``config``; returns the container (its ``port`` attribute set)."""
    def start(**config):
        container = container_factory(
            Faulty, dict({'WEB_SERVER_ADDRESS': '127.0.0.1:0'}, **config))
        container.start()
        container.port = web_port(container)
        return container
    return start


@pytest.fixture
def clients():
    """``clients(port)``: a connected :mod:`threadko.testing.websocket`
    socket; all closed at teardown."""
    made = []

    def connect(port, **kwargs):
        ws_app, connect_socket = make_virtual_socket(
            '127.0.0.1', port, **kwargs)
        made.append(ws_app)
        return connect_socket()

    yield connect
    for ws_app in made:
        ws_app.close()


@pytest.fixture
def raw():
    """``raw(port)``: a :class:`RawClient`; all closed at teardown."""
    made = []

    def connect(port, **kwargs):
        client = RawClient(port, **kwargs)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def socket_id_of(ws):
    return ws.wait_for_event('connected', timeout=WAIT)[1]['socket_id']


def server_of(container):
    return next(ext for ext in container.extensions
                if isinstance(ext, WebSocketRpc)).server


class RawClient:
    """wsproto (client mode) on a plain blocking socket, read only when the
    test asks."""

    def __init__(self, port, rcvbuf=None, handshake=True, headers=()):
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting: it sets the window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect(('127.0.0.1', port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events = []
        self.closed = False
        if handshake:
            self.send_request(headers)
            self.next_event(AcceptConnection)

    def send_request(self, headers=()):
        self.sock.sendall(self.ws.send(Request(
            host='127.0.0.1', target='/ws', extra_headers=list(headers))))

    def send(self, event):
        self.sock.sendall(self.ws.send(event))

    def call(self, method, **data):
        self.send(Message(data=json.dumps({
            'method': method, 'data': data, 'correlation_id': method})))

    def _read(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b''
        if not data:
            self.closed = True
        self.ws.receive_data(data or None)
        self.events.extend(self.ws.events())

    def next_event(self, kind, timeout=WAIT):
        """The next event of type ``kind`` (those before it are skipped,
        except that a close is returned whatever ``kind`` is)."""
        self.sock.settimeout(timeout)
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, (kind, CloseConnection)):
                    return event
            if self.closed:
                raise AssertionError('closed, no {}'.format(kind.__name__))
            self._read()

    def next_message(self, timeout=WAIT):
        event = self.next_event(TextMessage, timeout)
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)

    def next_result(self, timeout=WAIT):
        while True:
            message = self.next_message(timeout)
            if message['type'] == 'result':
                return message

    def wait_closed(self, timeout=WAIT):
        """Read (and drop) until the server closes the connection; return
        its close frame, if it sent one."""
        self.sock.settimeout(timeout)
        close = None
        while not self.closed:
            self._read()
            for event in self.events:
                if isinstance(event, CloseConnection):
                    close = event
            self.events = []
        return close

    def close(self):
        self.sock.close()


def still_serves(port, clients):
    """A new client is answered promptly."""
    started = time.monotonic()
    ws = clients(port)
    assert ws.rpc('echo', value='ok') == 'ok'
    assert time.monotonic() - started < PROMPT
    ws.app.close()


def eventually(predicate, timeout=WAIT, what='the condition'):
    """Poll server state that has no event of its own (what its I/O
    thread did with connections closed by the client), every 20 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'never: {}'.format(what)
        time.sleep(0.02)


def threadko_threads():
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith('threadko-'))


# -- broken handshakes --------------------------------------------------------

def test_a_handshake_without_a_key_is_400_saying_why(serve, clients):
    container = serve()
    reply = http_fetch(container.port, 'GET', '/ws', headers=dict(
        UPGRADE, **{'Sec-WebSocket-Version': '13'}))
    assert reply.status == 400
    assert 'Invalid websocket handshake' in reply.text
    assert 'Sec-WebSocket-Key' in reply.text
    still_serves(container.port, clients)


def test_another_protocol_version_is_426_saying_why(serve, clients):
    container = serve()
    reply = http_fetch(container.port, 'GET', '/ws', headers=dict(
        UPGRADE, **{'Sec-WebSocket-Version': '8',
                    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ=='}))
    assert reply.status == 426
    assert reply.headers['Sec-WebSocket-Version'] == '13'
    assert 'Invalid websocket handshake' in reply.text
    assert 'version' in reply.text.lower()
    still_serves(container.port, clients)


def test_an_upgrade_for_another_path_is_not_a_websocket(serve, clients):
    container = serve()
    reply = http_fetch(container.port, 'GET', '/elsewhere', headers=dict(
        UPGRADE, **{'Sec-WebSocket-Version': '13',
                    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ=='}))
    assert reply.status == 404
    still_serves(container.port, clients)


# -- messages -----------------------------------------------------------------

def test_a_message_over_the_size_limit_closes_with_1009(
        serve, clients, raw, log_collector):
    container = serve(WEBSOCKET_MAX_MESSAGE_SIZE=1000)
    ws = clients(container.port)
    # up to the limit is fine
    padding = 'x' * (1000 - len(json.dumps(
        {'method': 'echo', 'data': {'value': ''}, 'correlation_id': 'c'})))
    client = raw(container.port)
    client.send(Message(data=json.dumps({
        'method': 'echo', 'data': {'value': padding},
        'correlation_id': 'c'})))
    assert client.next_result()['data'] == padding
    # one byte more, in one frame
    client.send(Message(data=json.dumps({
        'method': 'echo', 'data': {'value': padding + 'x'},
        'correlation_id': 'c'})))
    close = client.next_event(CloseConnection)
    assert close.code == 1009
    client.wait_closed()
    assert 'WEBSOCKET_MAX_MESSAGE_SIZE' in log_collector.wait_for(
        'a message over 1000 bytes')[0].getMessage()
    # in fragments that are each small
    fragmented = raw(container.port)
    for _ in range(11):
        fragmented.send(Message(data='y' * 100, message_finished=False))
    assert fragmented.next_event(CloseConnection).code == 1009
    # the others go on
    assert ws.rpc('echo', value=1) == 1
    still_serves(container.port, clients)


def test_binary_frames_are_parsed_as_json_too(serve, clients):
    # Nameko's server hands binary messages to json.loads as text ones
    container = serve()
    ws = clients(container.port)
    ws.app.send(json.dumps({'method': 'echo', 'data': {'value': 'bin'},
                            'correlation_id': 'b'}).encode('utf-8'))
    result = ws.uncorrelated_results.get(timeout=WAIT)
    assert (result['correlation_id'], result['data']) == ('b', 'bin')
    ws.app.send(b'\x00\x01 not json')
    result = ws.uncorrelated_results.get(timeout=WAIT)
    assert result['error']['exc_type'] == 'MalformedRequest'
    assert ws.rpc('echo', value='text') == 'text'


def test_invalid_utf8_in_a_text_frame_closes_with_1007(
        serve, clients, raw, log_collector):
    container = serve()
    client = raw(container.port)
    # wsproto makes a binary frame of these bytes; its first byte (FIN +
    # opcode 2) becomes FIN + opcode 1: a text frame, masked as any
    frame = bytearray(client.ws.send(Message(data=b'{"method": "\xff\xfe"}')))
    assert frame[0] == 0x82
    frame[0] = 0x81
    client.sock.sendall(bytes(frame))
    close = client.next_event(CloseConnection)
    assert close.code == 1007
    log_collector.wait_for('(1007)')
    still_serves(container.port, clients)


# -- a client that does not read ----------------------------------------------

def test_a_client_that_never_reads_is_closed_while_the_others_keep_up(
        serve, clients, raw, log_collector):
    count, size = 3000, 1000  # 3 MB per client; the stalled one's buffer
    limit = 64 * 1024          # fills after some of it
    container = serve(WEBSOCKET_MAX_SEND_BUFFER=limit, max_workers=4)
    stalled = raw(container.port, rcvbuf=4096)
    stalled.call('join')
    assert stalled.next_result()['success']
    readers = [clients(container.port) for _ in range(4)]
    for ws in readers:
        ws.rpc('join')

    started = time.monotonic()
    assert readers[0].rpc('blast', count=count, size=size) == count
    for ws in readers:
        ticks = ws.get_event_queue('tick')
        seqs = [ticks.get(timeout=WAIT)[1]['seq'] for _ in range(count)]
        assert seqs == list(range(count))
    elapsed = time.monotonic() - started
    assert elapsed < WAIT

    record = log_collector.wait_for('its client does not read')[0]
    assert record.levelno == logging.WARNING
    assert 'WEBSOCKET_MAX_SEND_BUFFER' in record.getMessage()
    server = server_of(container)
    eventually(lambda: len(server.sockets) == len(readers),
               what='the stalled socket forgotten')
    # it was dropped, without a close frame (it would not be read)
    stalled.wait_closed()
    for ws in readers:
        assert ws.app.connected
    still_serves(container.port, clients)


def test_without_a_send_buffer_limit_a_stalled_client_stalls_nothing_else(
        serve, clients, raw, log_collector):
    # WEBSOCKET_MAX_SEND_BUFFER: null still closes a client past waitress's
    # own output limit (outbuf_high_watermark, 16 MiB), rather than block
    # the broadcasting worker, and with it the I/O thread
    container = serve(WEBSOCKET_MAX_SEND_BUFFER=None,
                      WEBSOCKET_PING_INTERVAL=0.1, max_workers=4)
    stalled = raw(container.port, rcvbuf=4096)
    stalled.call('join')
    assert stalled.next_result()['success']
    reader = clients(container.port)
    reader.rpc('join')
    count, size = 24, 1024 * 1024
    assert reader.rpc('blast', count=count, size=size) == count
    ticks = reader.get_event_queue('tick')
    assert [ticks.get(timeout=WAIT)[1]['seq'] for _ in range(count)] == \
        list(range(count))
    log_collector.wait_for('its client does not read')
    still_serves(container.port, clients)


def test_a_stop_does_not_wait_long_for_a_client_that_does_not_read(
        serve, clients, raw, monkeypatch):
    # its close frame cannot go out: the connection is dropped
    # CLOSE_TIMEOUT seconds later, not after WEB_SERVER_STOP_TIMEOUT
    monkeypatch.setattr(websocket_connection, 'CLOSE_TIMEOUT', 0.5)
    container = serve(WEBSOCKET_MAX_SEND_BUFFER=12 * 1024 * 1024,
                      WEB_SERVER_STOP_TIMEOUT=10)
    stalled = raw(container.port, rcvbuf=4096)
    stalled.call('join')
    assert stalled.next_result()['success']
    reader = clients(container.port)
    reader.rpc('join')
    count = 8
    assert reader.rpc('blast', count=count, size=1024 * 1024) == count
    ticks = reader.get_event_queue('tick')
    for _ in range(count):
        ticks.get(timeout=WAIT)
    server = server_of(container)
    stalled_socket = next(info.socket for info in server.sockets.values()
                          if info.socket._channel.total_outbufs_len)

    started = time.monotonic()
    container.stop()
    assert time.monotonic() - started < 3
    assert reader.app.wait_closed(WAIT)
    assert reader.app.close_code == 1001
    assert stalled_socket._lost


def test_idle_timeout_closes_a_client_that_does_not_read_either(
        serve, clients, raw, monkeypatch, log_collector):
    monkeypatch.setattr(websocket_connection, 'CLOSE_TIMEOUT', 0.5)
    container = serve(WEBSOCKET_MAX_SEND_BUFFER=12 * 1024 * 1024,
                      WEBSOCKET_PING_INTERVAL=0.2, WEBSOCKET_IDLE_TIMEOUT=1.5)
    stalled = raw(container.port, rcvbuf=4096)
    stalled.call('join')
    assert stalled.next_result()['success']
    helper = clients(container.port)
    assert helper.rpc('blast', count=8, size=1024 * 1024) == 8
    server = server_of(container)
    stalled_socket = next(info.socket for info in server.sockets.values()
                          if info.socket._channel.total_outbufs_len)
    # its ping, then its close frame, wait behind what it did not read
    log_collector.wait_for('nothing heard')
    eventually(lambda: stalled_socket._lost,
               what='the stalled socket dropped after closing')
    assert list(server.sockets) == [socket_id_of(helper)]
    stalled.wait_closed()
    # the helper answered its pings, and stays
    assert helper.rpc('echo', value=1) == 1
    still_serves(container.port, clients)


# -- ping and idle ------------------------------------------------------------

def test_quiet_clients_are_pinged_and_those_that_do_not_answer_closed(
        serve, clients, raw, log_collector):
    container = serve(WEBSOCKET_PING_INTERVAL=0.2, WEBSOCKET_IDLE_TIMEOUT=1.5)
    answering = raw(container.port)
    silent = raw(container.port)
    helper = clients(container.port)  # answers pings by itself
    started = time.monotonic()

    # both read at once: the answering one answers every ping at once,
    # the silent one never does, until the server closes it
    pings = {answering: 0, silent: 0}
    closes = {}
    selector = selectors.DefaultSelector()
    for client in pings:
        selector.register(client.sock, selectors.EVENT_READ, client)
    try:
        while silent not in closes:
            ready = selector.select(WAIT)
            assert ready, 'nothing from the server for {}s'.format(WAIT)
            for key, _ in ready:
                client = key.data
                client._read()
                for event in client.events:
                    if isinstance(event, Ping):
                        pings[client] += 1
                        if client is answering:
                            client.send(event.response())
                    elif isinstance(event, CloseConnection):
                        closes[client] = event
                client.events = []
    finally:
        selector.close()
    assert (closes[silent].code, closes[silent].reason) == (1001, 'idle')
    assert time.monotonic() - started >= 1.5
    assert pings[silent] == 1  # pinged once, then closed
    assert 'WEBSOCKET_IDLE_TIMEOUT' in log_collector.wait_for(
        'nothing heard')[0].getMessage()

    # the answering one was pinged more than once, and stays
    assert answering not in closes
    assert pings[answering] >= 2
    answering.call('echo', value='here')
    assert answering.next_result()['data'] == 'here'
    assert helper.app.connected
    assert helper.rpc('echo', value='here too') == 'here too'
    still_serves(container.port, clients)


# -- thousands of websockets --------------------------------------------------

def open_websockets(port, count):
    """``count`` raw websockets: all connected, then all handshakes sent,
    then all answers read (with their ``connected`` greeting)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(('127.0.0.1', port), WAIT)
        socks.append((sock, WSConnection(ConnectionType.CLIENT)))
    for sock, ws in socks:
        sock.sendall(ws.send(Request(host='127.0.0.1', target='/ws')))
    read_all(socks, lambda events: any(
        isinstance(e, TextMessage) for e in events))
    return socks


def read_all(socks, done, timeout=WAIT * 4):
    """Read every socket until ``done(events)`` of each (all events it got
    so far) is true."""
    selector = selectors.DefaultSelector()
    events = {}
    for sock, ws in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, ws)
        events[sock] = []
    pending = len(socks)
    deadline = time.monotonic() + timeout
    try:
        while pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, '{} sockets not done'.format(pending)
            for key, _ in selector.select(remaining):
                data = key.fileobj.recv(65536)
                assert data, 'the server closed a websocket'
                ws = key.data
                ws.receive_data(data)
                got = events[key.fileobj]
                got.extend(ws.events())
                if done(got):
                    selector.unregister(key.fileobj)
                    pending -= 1
    finally:
        selector.close()
        for sock, _ in socks:
            sock.setblocking(True)
    return events


def drop(socks):
    """Close abruptly: a reset, no close frame."""
    for sock, _ in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        b'\x01\x00\x00\x00\x00\x00\x00\x00')
        sock.close()


#: a client's frame calling ``join``, made by a wsproto connection past its
#: handshake (the handshake's refuses to send a message before the answer)
JOIN_FRAME = Connection(ConnectionType.CLIENT).send(Message(data=json.dumps(
    {'method': 'join', 'data': {}})))


def test_2000_websockets_opened_and_dropped_at_once(serve, clients):
    container = serve(max_workers=4)
    server = server_of(container)
    port = container.port
    socks = []
    for n in range(MANY):
        sock = socket.create_connection(('127.0.0.1', port), WAIT)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host='127.0.0.1', target='/ws')))
        if n % 2:  # half of them also send a call, without waiting
            sock.sendall(JOIN_FRAME)
        socks.append((sock, ws))
    drop(socks)
    still_serves(port, clients)
    # none of them is left on the server
    eventually(lambda: not server.sockets, timeout=WAIT * 2,
               what='every dropped socket forgotten')
    hub = next(ext for ext in container.extensions
               if isinstance(ext, WebSocketHubProvider)).hub
    eventually(lambda: not hub.connections and not any(
        hub.subscriptions.values()), what='the hub emptied')
    still_serves(port, clients)


def test_2000_idle_websockets_take_no_more_threads_than_10(serve, clients):
    container = serve(max_workers=4)
    port = container.port
    few = open_websockets(port, 10)
    threads_with_10 = threadko_threads()
    started = time.monotonic()
    many = open_websockets(port, MANY - 10)
    print('opened {} websockets in {:.2f}s'.format(
        MANY - 10, time.monotonic() - started))
    threads_with_2000 = threadko_threads()
    assert threads_with_2000 == threads_with_10
    assert len(server_of(container).sockets) == MANY
    print('threadko-* threads with 10 and with {} websockets: {} and '
          '{}'.format(MANY, len(threads_with_10), len(threads_with_2000)))

    everyone = few + many
    for sock, ws in everyone:
        sock.sendall(ws.send(Message(data=json.dumps(
            {'method': 'join', 'data': {}, 'correlation_id': 'join'}))))
    read_all(everyone, lambda events: any(
        isinstance(e, TextMessage) and '"join"' in e.data for e in events))
    still_serves(port, clients)

    # one broadcast reaches all 2,000
    caller = clients(port)
    assert caller.rpc('blast', count=1, size=10) == 1
    got = read_all(everyone, lambda events: any(
        isinstance(e, TextMessage) and '"tick"' in e.data for e in events))
    assert len(got) == MANY
    # the calls took worker threads (up to max_workers), and the caller
    # has its reader thread: nothing else
    workers = [name for name in threadko_threads()
               if name.startswith('threadko-worker-faulty_')]
    assert 0 < len(workers) <= 4
    assert [name for name in threadko_threads() if name not in workers] == \
        sorted(set(threads_with_10) - set(workers)
               | {caller.app._thread.name})
    drop(everyone)
    still_serves(port, clients)
