"""Websockets (:mod:`threadko.web.websocket`) on a real container and its
web server: Nameko's protocol (the ``connected`` event, results with
correlation ids, errors), the hub, context data from the upgrade request,
concurrency (``max_workers``, one call at a time per socket, frames never
interleaved), clients that vanish, stopping, and what WSGI embedding does
with websockets.

Clients are :mod:`threadko.testing.websocket`'s (the ``websocket`` fixture
for the server of ``web_config``, ``make_virtual_socket`` for one on port
0). Nothing here sleeps: waits are on queues and events, with timeouts.
"""

import json
import logging
import queue
import threading
import uuid
from collections import defaultdict

import pytest
from werkzeug.test import Client

from support import WAIT, http_fetch, web_port

from threadko.contextdata import Language, UserId
from threadko.exceptions import (
    IncorrectSignature, MethodNotFound, RemoteError,
)
from threadko.testing.waiting import wait_for_call
from threadko.testing.websocket import HandshakeRejected, make_virtual_socket
from threadko.web.handlers import http
from threadko.web.server import WebServer
from threadko.web.websocket import (
    WebSocketHubProvider, WebSocketRpc, WebSocketServer, rpc,
)
from threadko.web.websocket_connection import WebSocket
from threadko.web.wsgi import ServiceApp, wsgi_app

class Hubbub:
    """Every hub operation as an ``@rpc`` method."""

    name = 'hubbub'
    hub = WebSocketHubProvider()

    @rpc
    def echo(self, socket_id, value=None):
        return {'socket_id': socket_id, 'value': value}

    @rpc
    def subscribe(self, socket_id, channel):
        self.hub.subscribe(socket_id, channel)

    @rpc
    def subscribe_other(self, socket_id, other, channel):
        self.hub.subscribe(other, channel)

    @rpc
    def unsubscribe(self, socket_id, channel):
        self.hub.unsubscribe(socket_id, channel)

    @rpc
    def get_subscriptions(self, socket_id):
        return self.hub.get_subscriptions(socket_id)

    @rpc
    def broadcast(self, socket_id, channel, event, data):
        self.hub.broadcast(channel, event, data)

    @rpc
    def unicast(self, socket_id, target, event, data):
        return self.hub.unicast(target, event, data)

    @rpc
    def state(self, socket_id):
        """The hub's ``connections`` and ``subscriptions`` attributes."""
        return {
            'connections': {
                key: {'socket_id': connection.socket_id,
                      'subscriptions': sorted(connection.subscriptions),
                      'context_data': connection.context_data}
                for key, connection in self.hub.connections.items()},
            'subscriptions': {
                channel: sorted(ids)
                for channel, ids in self.hub.subscriptions.items()},
        }

    @rpc
    def fail(self, socket_id, message):
        raise ValueError(message)

    @rpc
    def unserializable(self, socket_id):
        return object()


def hub_of(container):
    return next(ext for ext in container.extensions
                if isinstance(ext, WebSocketHubProvider)).hub


def server_of(container):
    return next(ext for ext in container.extensions
                if isinstance(ext, WebSocketRpc)).server


def socket_id_of(ws):
    event, data = ws.wait_for_event('connected', timeout=WAIT)
    return data['socket_id']


def raw_call(ws, method, data=None, correlation_id=None, **extra):
    """Send a message outside ``rpc`` (its result lands in
    ``ws.uncorrelated_results``)."""
    message = {'method': method, 'data': data or {},
               'correlation_id': correlation_id}
    message.update(extra)
    ws.app.send(json.dumps(message))


def next_result(ws):
    return ws.uncorrelated_results.get(timeout=WAIT)


@pytest.fixture
def hubbub(container_factory, web_config, memory_config):
    container = container_factory(Hubbub)
    container.start()
    return container


# -- the protocol -------------------------------------------------------------

def test_connected_event_gives_the_socket_id(hubbub, websocket):
    ws = websocket()
    queue_ = ws.get_event_queue('connected')
    event, data = queue_.get(timeout=WAIT)
    assert event == 'connected'
    assert list(data) == ['socket_id']
    assert uuid.UUID(data['socket_id'])
    assert queue_.empty()  # one greeting only
    # the server knows it, and calls get it first
    assert data['socket_id'] in server_of(hubbub).sockets
    assert ws.rpc('echo', value=1) == {
        'socket_id': data['socket_id'], 'value': 1}

    other = websocket()
    assert socket_id_of(other) != data['socket_id']


def test_results_carry_the_correlation_id(hubbub, websocket):
    ws = websocket()
    socket_id = socket_id_of(ws)
    raw_call(ws, 'echo', {'value': 'a'}, correlation_id='first')
    raw_call(ws, 'echo', {'value': 'b'}, correlation_id=42)
    raw_call(ws, 'echo', {'value': 'c'})  # none: null
    assert next_result(ws) == {
        'type': 'result', 'success': True,
        'data': {'socket_id': socket_id, 'value': 'a'},
        'correlation_id': 'first'}
    assert next_result(ws)['correlation_id'] == 42
    assert next_result(ws)['correlation_id'] is None
    # "data" may be left out or null: no arguments
    ws.app.send(json.dumps({'method': 'echo', 'correlation_id': 'x'}))
    ws.app.send(json.dumps(
        {'method': 'echo', 'data': None, 'correlation_id': 'y'}))
    assert next_result(ws)['data'] == {'socket_id': socket_id, 'value': None}
    assert next_result(ws)['correlation_id'] == 'y'


def test_rpc_of_several_threads_on_one_socket(hubbub, websocket, background):
    ws = websocket()
    futures = [background(ws.rpc, 'echo', value=n) for n in range(20)]
    assert [f.result(WAIT)['value'] for f in futures] == list(range(20))


# -- the hub ------------------------------------------------------------------

def test_subscribe_broadcast_unsubscribe(hubbub, websocket):
    a, b = websocket(), websocket()
    a_id, b_id = socket_id_of(a), socket_id_of(b)
    a.rpc('subscribe', channel='news')
    a.rpc('subscribe', channel='sport')
    b.rpc('subscribe', channel='news')
    assert a.rpc('get_subscriptions') == ['news', 'sport']
    assert b.rpc('get_subscriptions') == ['news']

    b.rpc('broadcast', channel='news', event='headline', data={'n': 1})
    assert a.wait_for_event('headline') == ('headline', {'n': 1})
    assert b.wait_for_event('headline') == ('headline', {'n': 1})

    b.rpc('broadcast', channel='sport', event='score', data='1-0')
    assert a.wait_for_event('score') == ('score', '1-0')

    a.rpc('unsubscribe', channel='news')
    a.rpc('unsubscribe', channel='never-subscribed')  # no error
    assert a.rpc('get_subscriptions') == ['sport']
    b.rpc('broadcast', channel='news', event='headline', data={'n': 2})
    assert b.wait_for_event('headline') == ('headline', {'n': 2})
    # b's unicast reaches a after anything sent to a before it
    assert b.rpc('unicast', target=a_id, event='marker', data=None) is True
    a.wait_for_event('marker')
    assert a.get_event_queue('headline').empty()
    assert b.get_event_queue('score').empty()

    # a broadcast to a channel nobody listens to reaches nobody
    b.rpc('broadcast', channel='nobody', event='lost', data=None)
    assert b.rpc('unicast', target=b_id, event='marker', data=None) is True
    b.wait_for_event('marker')
    assert b.get_event_queue('lost').empty()


def test_unicast_says_whether_the_socket_exists(hubbub, websocket):
    a, b = websocket(), websocket()
    b_id = socket_id_of(b)
    socket_id_of(a)
    assert a.rpc('unicast', target=b_id, event='hello',
                 data={'from': 'a'}) is True
    assert b.wait_for_event('hello') == ('hello', {'from': 'a'})
    assert a.rpc('unicast', target=str(uuid.uuid4()), event='hello',
                 data=None) is False


def test_subscribing_an_unknown_socket_is_connection_not_found(
        hubbub, websocket):
    ws = websocket()
    with pytest.raises(RemoteError) as raised:
        ws.rpc('subscribe_other', other='no-such-socket', channel='x')
    assert raised.value.exc_type == 'ConnectionNotFound'
    assert ws.rpc('get_subscriptions') == []


def test_connections_and_subscriptions_attributes(hubbub, websocket):
    a, b = websocket(), websocket()
    a_id, b_id = socket_id_of(a), socket_id_of(b)
    assert a.rpc('state') == {'connections': {}, 'subscriptions': {}}
    a.rpc('subscribe', channel='x')
    a.rpc('subscribe', channel='y')
    b.rpc('subscribe', channel='x')
    assert a.rpc('state') == {
        'connections': {
            a_id: {'socket_id': a_id, 'subscriptions': ['x', 'y'],
                   'context_data': {}},
            b_id: {'socket_id': b_id, 'subscriptions': ['x'],
                   'context_data': {}}},
        'subscriptions': {'x': sorted([a_id, b_id]), 'y': [a_id]}}

    # a socket that leaves is forgotten, with its subscriptions
    hub = hub_of(hubbub)
    with wait_for_call(hub, 'forget', timeout=WAIT,
                       callback=lambda args, kwargs, res, exc:
                       args == (b_id,)):
        b.app.close()
    assert b.app.close_code == 1000
    assert a.rpc('state') == {
        'connections': {
            a_id: {'socket_id': a_id, 'subscriptions': ['x', 'y'],
                   'context_data': {}}},
        'subscriptions': {'x': [a_id], 'y': [a_id]}}
    assert b_id not in server_of(hubbub).sockets


# -- errors -------------------------------------------------------------------

@pytest.mark.parametrize('payload', [
    'not json', '{"data": {}}', '[1, 2]', '"method"', '',
], ids=['not-json', 'no-method', 'a-list', 'a-string', 'empty'])
def test_malformed_messages_get_malformed_request_and_the_socket_stays(
        hubbub, websocket, payload):
    ws = websocket()
    ws.app.send(payload)
    result = next_result(ws)
    assert result['type'] == 'result'
    assert result['success'] is False
    assert result['correlation_id'] is None
    assert result['error']['exc_type'] == 'MalformedRequest'
    assert result['error']['value'] == 'Invalid JSON data'
    assert result['error']['exc_args'] == ['Invalid JSON data']
    assert ws.rpc('echo', value='still here')['value'] == 'still here'
    assert ws.app.connected


def test_unknown_method_is_method_not_found(hubbub, websocket):
    ws = websocket()
    with pytest.raises(MethodNotFound):
        ws.rpc('no_such_method')
    raw_call(ws, 'no_such_method', correlation_id='c')
    result = next_result(ws)
    assert result['correlation_id'] == 'c'
    assert result['error']['exc_type'] == 'MethodNotFound'
    assert ws.rpc('echo')['value'] is None


def test_wrong_arguments_are_incorrect_signature(hubbub, websocket):
    ws = websocket()
    with pytest.raises(IncorrectSignature) as raised:
        ws.rpc('echo', nonsense=1)
    assert 'nonsense' in str(raised.value)
    with pytest.raises(IncorrectSignature):
        ws.rpc('subscribe')  # channel missing
    # data that is not an object
    raw_call(ws, 'echo', correlation_id='list')
    ws.app.send(json.dumps(
        {'method': 'echo', 'data': [1, 2], 'correlation_id': 'list2'}))
    assert next_result(ws)['success'] is True
    result = next_result(ws)
    assert result['correlation_id'] == 'list2'
    assert result['success'] is False
    assert ws.rpc('echo', value=3)['value'] == 3


def test_an_exception_of_the_method_is_serialised(hubbub, websocket):
    ws = websocket()
    with pytest.raises(RemoteError) as raised:
        ws.rpc('fail', message='it broke')
    assert raised.value.exc_type == 'ValueError'
    assert raised.value.value == 'it broke'
    raw_call(ws, 'fail', {'message': 'again'}, correlation_id='f')
    assert next_result(ws) == {
        'type': 'result', 'success': False, 'correlation_id': 'f',
        'error': {'exc_type': 'ValueError', 'exc_path': 'builtins.ValueError',
                  'exc_args': ['again'], 'value': 'again'}}


def test_a_result_json_cannot_carry_is_an_error(hubbub, websocket):
    ws = websocket()
    with pytest.raises(RemoteError) as raised:
        ws.rpc('unserializable')
    assert raised.value.exc_type == 'TypeError'
    assert ws.rpc('echo', value=1)['value'] == 1


# -- context data -------------------------------------------------------------

class HeaderContextServer(WebServer):
    """As examples/http_context_data.py: context data from headers."""

    def context_data_from_headers(self, request):
        return {'language': request.headers.get('Accept-Language'),
                'user_id': request.headers.get('X-User-Id')}


class HeaderWebSocketServer(WebSocketServer):
    wsgi_server = HeaderContextServer()


class HeaderRpc(WebSocketRpc):
    server = HeaderWebSocketServer()


class HeaderHub(WebSocketHubProvider):
    server = HeaderWebSocketServer()


class Polyglot:
    name = 'polyglot'
    language = Language()
    user_id = UserId()
    hub = HeaderHub()

    @HeaderRpc.decorator
    def whoami(self, socket_id):
        self.hub.subscribe(socket_id, 'me')
        return {'language': self.language, 'user_id': self.user_id,
                'hub': self.hub.connections[socket_id].context_data}


def test_context_data_from_the_upgrade_request_headers(
        container_factory, web_config, memory_config, websocket):
    container_factory(Polyglot).start()
    french = websocket(headers={'Accept-Language': 'fr',
                                'X-User-Id': 'alice'})
    plain = websocket()
    assert french.rpc('whoami') == {
        'language': 'fr', 'user_id': 'alice',
        'hub': {'language': 'fr', 'user_id': 'alice'}}
    assert plain.rpc('whoami') == {
        'language': None, 'user_id': None,
        'hub': {'language': None, 'user_id': None}}


def test_default_context_data_is_empty_as_in_nameko(hubbub, websocket):
    ws = websocket(headers={'Accept-Language': 'fr'})
    ws.rpc('subscribe', channel='x')
    state = ws.rpc('state')
    assert [c['context_data'] for c in state['connections'].values()] == [{}]


# -- concurrency --------------------------------------------------------------

class Steps:
    name = 'steps'

    @rpc
    def step(self, socket_id, n):
        Steps.started.put((socket_id, n))
        Steps.in_flight.enter()
        return n


@pytest.fixture
def steps(in_flight):
    Steps.in_flight = in_flight
    Steps.started = queue.Queue()
    yield Steps
    del Steps.in_flight, Steps.started


def test_max_workers_bounds_websocket_workers(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight, background):
    container_factory(Steps, {'max_workers': 2}).start()
    sockets = [websocket() for _ in range(5)]
    futures = [background(ws.rpc, 'step', n=n)
               for n, ws in enumerate(sockets)]
    in_flight.wait(lambda f: f.running == 2)
    assert in_flight.holds_for_a_moment(lambda f: f.running <= 2)
    in_flight.permits.release(5)
    assert sorted(f.result(WAIT) for f in futures) == list(range(5))
    assert in_flight.peak == 2


def test_calls_of_one_socket_run_one_at_a_time_in_order(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight):
    container_factory(Steps, {'max_workers': 10}).start()
    ws = websocket()
    socket_id = socket_id_of(ws)
    for n in range(40):  # more than the server reads ahead (16)
        raw_call(ws, 'step', {'n': n}, correlation_id=n)
    for n in range(40):
        assert steps.started.get(timeout=WAIT) == (socket_id, n)
        assert in_flight.holds_for_a_moment(lambda f: f.running <= 1) \
            if n < 2 else True
        assert steps.started.empty()  # the next waits for this one
        in_flight.permits.release()
        result = next_result(ws)
        assert (result['correlation_id'], result['data']) == (n, n)
    assert in_flight.peak == 1


def test_calls_of_different_sockets_run_at_once(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight, background):
    container_factory(Steps, {'max_workers': 10}).start()
    sockets = [websocket() for _ in range(4)]
    futures = [background(ws.rpc, 'step', n=n)
               for n, ws in enumerate(sockets)]
    in_flight.wait(lambda f: f.running == 4)
    in_flight.permits.release(4)
    assert [f.result(WAIT) for f in futures] == list(range(4))


class Broadcaster:
    name = 'broadcaster'
    hub = WebSocketHubProvider()

    @rpc
    def join(self, socket_id):
        self.hub.subscribe(socket_id, 'all')

    @rpc
    def blast(self, socket_id, sender, count, size):
        padding = 'x' * size
        for seq in range(count):
            self.hub.broadcast('all', 'tick', {
                'sender': sender, 'seq': seq, 'pad': padding})
            self.hub.unicast(socket_id, 'own', {'seq': seq})
        return count


def test_replies_and_broadcasts_from_many_workers_never_interleave(
        container_factory, web_config, memory_config, websocket,
        background):
    senders, count, clients = 8, 200, 20
    container_factory(Broadcaster, {'max_workers': senders + 2}).start()
    sockets = [websocket() for _ in range(clients)]
    for ws in sockets:
        ws.rpc('join')
    barrier = threading.Barrier(senders, timeout=WAIT)

    def blast(ws, sender):
        barrier.wait()
        return ws.rpc('blast', sender=sender, count=count,
                      size=100 + 50 * sender)

    futures = [background(blast, sockets[n], n) for n in range(senders)]
    assert [f.result(WAIT * 4) for f in futures] == [count] * senders

    for ws in sockets:
        ticks = ws.get_event_queue('tick')
        seen = defaultdict(list)
        for _ in range(senders * count):
            event, data = ticks.get(timeout=WAIT)
            assert data['pad'] == 'x' * (100 + 50 * data['sender'])
            seen[data['sender']].append(data['seq'])
        assert ticks.empty()
        assert seen == {n: list(range(count)) for n in range(senders)}
        assert ws.app.connected
    for n in range(senders):
        own = sockets[n].get_event_queue('own')
        assert [own.get(timeout=WAIT)[1]['seq'] for _ in range(count)] == \
            list(range(count))


# -- clients that go away -----------------------------------------------------

class Slow:
    name = 'slow'
    hub = WebSocketHubProvider()

    @rpc
    def subscribe(self, socket_id, channel):
        self.hub.subscribe(socket_id, channel)

    @rpc
    def step(self, socket_id, n):
        Steps.in_flight.enter()
        return n


def test_a_client_vanishing_mid_call(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight, caplog):
    container = container_factory(Slow)
    container.start()
    server, hub = server_of(container), hub_of(container)
    ws, other = websocket(), websocket()
    socket_id = socket_id_of(ws)
    ws.rpc('subscribe', channel='room')
    other.rpc('subscribe', channel='room')
    raw_call(ws, 'step', {'n': 1}, correlation_id='lost')
    in_flight.wait(lambda f: f.running == 1)

    caplog.set_level(logging.DEBUG)
    with wait_for_call(hub, 'forget', timeout=WAIT,
                       callback=lambda args, kwargs, res, exc:
                       args == (socket_id,)):
        ws.app.abort()  # no close frame: the client is just gone
    assert ws.app.wait_closed(WAIT)
    assert socket_id not in server.sockets
    assert socket_id not in hub.connections
    assert hub.subscriptions['room'] == {socket_id_of(other)}

    # the worker finishes; its reply has nowhere to go
    with wait_for_call(server, '_finished', timeout=WAIT):
        in_flight.permits.release()
    in_flight.wait(lambda f: f.finished == 1)
    assert other.rpc('subscribe', channel='more') is None
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


def test_a_socket_is_registered_before_its_handshake_goes_out(
        hubbub, websocket, monkeypatch, background):
    # a client may call as soon as it has the handshake's answer; the
    # server must know the socket by then (it used to register it just
    # after, and a quick call got ConnectionNotFound)
    server = server_of(hubbub)
    registered = queue.Queue()
    original = WebSocket._write

    def spy(self, data):
        if data.startswith(b'HTTP/1.1 101 '):
            registered.put(self.socket_id in server.sockets)
        return original(self, data)

    monkeypatch.setattr(WebSocket, '_write', spy)
    ws = websocket()
    assert registered.get(timeout=WAIT) is True
    assert ws.rpc('get_subscriptions') == []

    # many clients calling at once, each right after connecting
    def connect_and_subscribe(n):
        client = websocket()
        client.rpc('subscribe', channel='c{}'.format(n))
        return client.rpc('get_subscriptions')

    futures = [background(connect_and_subscribe, n) for n in range(20)]
    assert [f.result(WAIT) for f in futures] == [
        ['c{}'.format(n)] for n in range(20)]
    assert [registered.get(timeout=WAIT) for _ in range(20)] == [True] * 20


# -- stopping -----------------------------------------------------------------

def test_container_stop_closes_every_socket_with_1001(
        container_factory, web_config, memory_config, websocket):
    container = container_factory(Hubbub)
    container.start()
    sockets = [websocket() for _ in range(5)]
    for ws in sockets:
        ws.rpc('subscribe', channel='x')
    port = web_port(container)
    container.stop()
    for ws in sockets:
        assert ws.app.wait_closed(WAIT)
        assert (ws.app.close_code, ws.app.close_reason) == (
            1001, 'server stopping')
        ws.app.close()  # joins the reader thread
        assert not ws.app._thread.is_alive()
    # the server's threads and the dispatcher are gone when stop() returns
    assert not [t.name for t in threading.enumerate() if t.name in (
        'threadko-web-server-{}'.format(port),
        'threadko-hubbub-websocket-dispatcher')]


def test_container_kill_closes_every_socket_with_1001(
        container_factory, web_config, memory_config, websocket):
    container = container_factory(Hubbub)
    container.start()
    sockets = [websocket() for _ in range(3)]
    for ws in sockets:
        socket_id_of(ws)
    container.kill()
    for ws in sockets:
        assert ws.app.wait_closed(WAIT)
        assert ws.app.close_code == 1001


# -- plain HTTP on /ws --------------------------------------------------------

def test_a_plain_get_on_ws_is_400_saying_to_use_a_websocket(
        container_factory, memory_config):
    container = container_factory(
        Hubbub, {'WEB_SERVER_ADDRESS': '127.0.0.1:0'})
    container.start()
    reply = http_fetch(web_port(container), 'GET', '/ws')
    assert reply.status == 400
    assert 'websocket' in reply.text
    # other methods: 405, as for any GET-only route
    assert http_fetch(web_port(container), 'POST', '/ws').status == 405


def test_port_0_and_make_virtual_socket(container_factory, memory_config):
    container = container_factory(
        Hubbub, {'WEB_SERVER_ADDRESS': '127.0.0.1:0'})
    container.start()
    ws_app, connect_socket = make_virtual_socket(
        '127.0.0.1', web_port(container))
    try:
        ws = connect_socket()
        assert ws.app is ws_app
        assert connect_socket() is ws  # one connection
        assert ws.rpc('echo', value=5)['value'] == 5
    finally:
        ws_app.close()
    assert not ws_app.connected


# -- WSGI embedding -----------------------------------------------------------

def test_wsgi_app_does_not_route_ws(container_factory, memory_config):
    # another WSGI server cannot hand a connection over: /ws is not among
    # the routes wsgi_app gives it
    container = container_factory(Hubbub, {'WEB_SERVER_ADDRESS': None})
    container.start()
    client = Client(wsgi_app(container))
    assert client.get('/ws').status_code == 404
    assert client.get('/ws', headers={
        'Upgrade': 'websocket', 'Connection': 'Upgrade'}).status_code == 404


def test_service_app_with_an_address_serves_websockets_there(
        memory_config, web_config, web_config_port, websocket):
    app = ServiceApp([Hubbub], dict(memory_config, **web_config),
                     stop_at_exit=False)
    with app:
        # the hosting server's routes (here werkzeug's test client) do not
        # include /ws ...
        assert Client(app).get('/ws').status_code == 404
        # ... the services' own port does
        ws = websocket()
        assert ws.rpc('echo', value='embedded')['value'] == 'embedded'
    assert ws.app.wait_closed(WAIT)
    assert ws.app.close_code == 1001


# -- the test client (threadko.testing.websocket) -----------------------------

class Plain:
    name = 'plain'

    @http('GET', '/')
    def index(self, request):
        return 'plain'


def test_the_client_raises_for_a_rejected_handshake(
        container_factory, web_config, memory_config, websocket):
    container_factory(Plain).start()  # no websocket route
    with pytest.raises(HandshakeRejected) as raised:
        websocket()
    assert raised.value.status_code == 404
    assert b'Not Found' in raised.value.body


def test_waits_of_the_client_end_with_timeout_error(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight):
    container_factory(Steps).start()
    ws = websocket()
    with pytest.raises(TimeoutError):
        ws.wait_for_event('never', timeout=0.1)
    ws.timeout = 0.2
    with pytest.raises(TimeoutError):
        ws.rpc('step', n=1)
    in_flight.permits.release()
    # its late answer is ignored; the next call gets its own
    ws.timeout = WAIT
    in_flight.permits.release()
    assert ws.rpc('step', n=2) == 2


def test_an_rpc_whose_connection_closes_raises_connection_error(
        container_factory, web_config, memory_config, websocket, steps,
        in_flight, background):
    container_factory(Steps).start()
    ws = websocket()
    future = background(ws.rpc, 'step', n=1)
    in_flight.wait(lambda f: f.running == 1)
    ws.app.abort()
    with pytest.raises(ConnectionError):
        future.result(WAIT)
    with pytest.raises(ConnectionError):
        ws.rpc('step', n=2)
    assert ws.app.close_code is None  # no close frame: just gone
    in_flight.permits.release()


def test_the_client_as_nameko_tests_use_it(
        hubbub, web_config_port, background):
    # Nameko's fixture spawns ws_app.run_forever, then connects
    ws_app, connect_socket = make_virtual_socket('127.0.0.1', web_config_port)
    running = background(ws_app.run_forever)
    ws = connect_socket()
    try:
        assert ws.wait_for_event('connected')[0] == 'connected'
        assert ws.rpc('echo', value='n')['value'] == 'n'
        client_threads = [t.name for t in threading.enumerate()
                          if t.name.startswith('threadko-websocket-client-')]
        assert len(client_threads) == 1  # one reader thread per client
    finally:
        ws_app.close()
    running.result(WAIT)  # run_forever returns once closed
    assert not ws_app.connected
