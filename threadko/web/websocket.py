"""Websockets: Nameko's websocket RPC and hub, on the ``/ws`` route of the
``WEB_SERVER_ADDRESS`` that serves the ``@http`` routes (install with
``pip install "threadko[websocket]"``)::

    from threadko.web.websocket import WebSocketHubProvider, rpc

    class Chat:
        name = "chat"
        hub = WebSocketHubProvider()

        @rpc
        def join(self, socket_id, room):
            self.hub.subscribe(socket_id, room)

        @rpc
        def say(self, socket_id, room, text):
            self.hub.broadcast(room, "said", {"text": text})

The protocol is Nameko's, so clients written for Nameko work unchanged: on
connect the server sends ``{"type": "event", "event": "connected",
"data": {"socket_id": ...}}``; a message ``{"method": ..., "data": {...},
"correlation_id": ...}`` calls ``@rpc`` method ``method`` with the
socket's id and the data as keyword arguments, and is answered by
``{"type": "result", "success": true, "data": <result>, "correlation_id":
...}``, or ``"success": false`` with ``"error"`` (Nameko's serialised
exception); hub events are ``{"type": "event", "event": ..., "data":
...}``.

Threads: the connections are held by the web server's one I/O thread;
each call runs as a worker of the container (``max_workers`` bounds them);
the calls of one socket run one at a time, in order, as in Nameko. See
:mod:`threadko.web.websocket_connection` for the protocol's side.
"""

import json
import logging
import queue
import threading
from collections import namedtuple
from functools import partial

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from threadko.exceptions import (
    ConnectionNotFound, MalformedRequest,
    MethodNotFound, serialize,
)
from threadko.extensions import (
    DependencyProvider, Entrypoint, ProviderCollector, SharedExtension,
)
from threadko.web.server import WebServer

__all__ = ['WebSocketServer', 'WebSocketHubProvider', 'WebSocketHub',
           'WebSocketRpc', 'Connection', 'rpc']

_log = logging.getLogger(__name__)

WEBSOCKET_PATH = '/ws'
#: a close code: the server (container) is stopping
GOING_AWAY = 1001

SocketInfo = namedtuple('SocketInfo', ['socket', 'data'])
SocketInfo.__doc__ = """A connected socket (a
:class:`~threadko.web.websocket_connection.WebSocket`) and the context data
of its upgrade request."""

_STOP = object()


class Connection:
    """A socket the hub knows: its id, context data and channels."""

    def __init__(self, socket_id, context_data):
        self.socket_id = socket_id
        self.context_data = context_data
        self.subscriptions = set()


class WebSocketServer(ProviderCollector, SharedExtension):
    """The container's websocket endpoint, ``GET /ws`` on its web server.

    Holds the sockets connected to this container (:attr:`sockets`:
    socket id -> :class:`SocketInfo`), hands their messages to the
    ``@rpc`` entrypoints, and closes them (1001, going away) when the
    container stops or is killed.
    """

    wsgi_server = WebServer()

    def __init__(self):
        super().__init__()
        self.sockets = {}
        self._lock = threading.Lock()
        self._inbox = None
        self._dispatcher = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------

    def setup(self):
        import threadko.web.websocket_connection  # noqa: F401 (fail early)

        self.wsgi_server.register_provider(self)

    def start(self):
        self._stopping = False
        self._inbox = queue.SimpleQueue()
        self._dispatcher = self.container.spawn_managed_thread(
            self._dispatch, identifier='websocket-dispatcher')

    def stop(self):
        # new sockets are refused from now on; the ones open are told the
        # server is going away once the entrypoints stopped, before the
        # web server (which waits for this) stops
        self._stopping = True
        self.wait_for_providers()
        self._close_all()
        self.wsgi_server.unregister_provider(self)
        self._end_dispatcher(self.container.thread_join_timeout)

    def kill(self):
        self._stopping = True
        self._close_all()
        self.wsgi_server.unregister_provider(self)
        self._end_dispatcher(1.0)

    def _close_all(self):
        with self._lock:
            sockets = [info.socket for info in self.sockets.values()]
        for websocket in sockets:
            websocket.close(GOING_AWAY, 'server stopping')

    def _end_dispatcher(self, timeout):
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._inbox.put(_STOP)
            if dispatcher is not threading.current_thread():
                dispatcher.join(timeout)

    # -- the web server's side ---------------------------------------------

    def get_url_rule(self):
        return Rule(WEBSOCKET_PATH, methods=['GET'])

    def handle_request(self, request):
        """``GET /ws`` that is not a websocket upgrade."""
        return Response(
            'Bad Request: {} takes websocket connections only (an upgrade '
            'request with "Upgrade: websocket")\n'.format(WEBSOCKET_PATH),
            status=400, content_type='text/plain')

    def accept_websocket(self, websocket, environ, open_socket):
        """A new socket (on a request thread): its upgrade request's WSGI
        ``environ``; ``open_socket(greeting, before)`` completes the
        handshake and sends the ``connected`` event, calling ``before()``
        first. Returns False to refuse it (the container is stopping)."""
        if self._stopping:
            return False
        context_data = self.wsgi_server.context_data_from_headers(
            Request(environ))
        websocket.on_message = self._received
        websocket.on_closed = self.remove_socket
        # registered before the handshake goes out, so that a call the
        # client makes as soon as it has it finds the socket; under the
        # socket's lock, so that nothing reaches it before its greeting
        open_socket(
            self.serialize_event(
                'connected', {'socket_id': websocket.socket_id}),
            partial(self.add_websocket, websocket, context_data))
        if websocket.closing:
            # gone during the handshake, perhaps before the front knew it
            # was a websocket (then nothing else tells us it left)
            self.remove_socket(websocket)
        elif self._stopping:
            # stop() began meanwhile, and may have closed the others
            # before this one was registered
            websocket.close(GOING_AWAY, 'server stopping')
        return True

    def add_websocket(self, websocket, initial_context_data=None):
        """Register ``websocket``; return ``(socket_id, context_data)``."""
        context_data = dict(initial_context_data or ())
        with self._lock:
            self.sockets[websocket.socket_id] = SocketInfo(
                websocket, context_data)
        return websocket.socket_id, context_data

    def remove_socket(self, websocket_or_id):
        """Forget a socket that went away, and its hub subscriptions."""
        socket_id = getattr(websocket_or_id, 'socket_id', websocket_or_id)
        with self._lock:
            self.sockets.pop(socket_id, None)
        for provider in self.providers:
            if isinstance(provider, WebSocketHubProvider):
                provider.cleanup_websocket(socket_id)

    # -- messages ----------------------------------------------------------

    def serialize_for_ws(self, payload):
        return json.dumps(payload)

    def serialize_event(self, event, data):
        return self.serialize_for_ws(
            {'type': 'event', 'event': event, 'data': data})

    def deserialize_ws_frame(self, payload):
        """``(method, data, correlation_id)`` of a message.

        :raises MalformedRequest: not JSON, not an object, or no ``method``
        """
        try:
            data = json.loads(payload)
            return (data['method'], data.get('data') or {},
                    data.get('correlation_id'))
        except Exception:
            raise MalformedRequest('Invalid JSON data')

    def get_provider_for_method(self, method):
        for provider in self.providers:
            if (isinstance(provider, WebSocketRpc)
                    and provider.method_name == method):
                return provider
        raise MethodNotFound()

    def _received(self, websocket, payload):
        # the I/O thread: never block it. One call per socket at a time,
        # in order (as Nameko's server reads the next message only once it
        # answered the last); the rest wait in the socket's queue
        with self._lock:
            if websocket.busy:
                websocket.pending.append(payload)
                return
            websocket.busy = True
        # with a worker free and no call of another socket waiting before
        # it, the call starts here (as the AMQP consumer's deliveries do);
        # otherwise the dispatcher thread waits for a worker
        if self._inbox.empty():
            with self.container.reserved_worker_slot() as reserved:
                if reserved:
                    self._call(websocket, payload)
                    return
        self._inbox.put((websocket, payload))

    def _finished(self, websocket):
        """The socket's call is answered: start its next one, if any."""
        with self._lock:
            if websocket.pending:
                was_backlogged = websocket.backlogged()
                payload = websocket.pending.popleft()
            else:
                websocket.busy = False
                return
        self._inbox.put((websocket, payload))
        if was_backlogged:
            websocket.resume_reading()

    def _dispatch(self):
        # the dispatcher thread: waiting for a free worker happens here
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            websocket, payload = item
            self._call(websocket, payload)

    def _call(self, websocket, payload):
        correlation_id = None
        try:
            method, data, correlation_id = self.deserialize_ws_frame(payload)
            info = self.sockets.get(websocket.socket_id)
            if info is None:
                raise ConnectionNotFound(websocket.socket_id)
            provider = self.get_provider_for_method(method)
            provider.handle_message(
                websocket.socket_id, data, info.data,
                partial(self._reply, websocket, correlation_id))
        except Exception as exc:
            self._reply(websocket, correlation_id, None, exc)

    def _reply(self, websocket, correlation_id, result, exc):
        """Answer a call (on its worker's thread, or the dispatcher's)."""
        if exc is None:
            response = {'type': 'result', 'success': True, 'data': result,
                        'correlation_id': correlation_id}
        else:
            response = {'type': 'result', 'success': False,
                        'error': serialize(exc),
                        'correlation_id': correlation_id}
        try:
            text = self.serialize_for_ws(response)
        except (TypeError, ValueError) as error:  # a result JSON refuses
            text = self.serialize_for_ws({
                'type': 'result', 'success': False,
                'error': serialize(error), 'correlation_id': correlation_id})
        # a socket that left is dropped quietly
        websocket.send_text(text)
        self._finished(websocket)


class WebSocketRpc(Entrypoint):
    """The ``@rpc`` entrypoint of :mod:`threadko.web.websocket`: the method
    is called with the caller's ``socket_id`` first, and the message's
    ``data`` as keyword arguments."""

    server = WebSocketServer()

    def setup(self):
        self.server.register_provider(self)

    def stop(self):
        self.server.unregister_provider(self)

    def kill(self):
        self.server.unregister_provider(self)

    def handle_message(self, socket_id, data, context_data, reply):
        """Run a worker for a call; ``reply(result, exc)`` is called with
        its outcome (on the worker's thread).

        :raises IncorrectSignature: the data does not fit the method
        :raises ContainerBeingKilled: the container is stopping
        """
        self.check_signature((socket_id,), data)
        self.container.spawn_worker(
            self, (socket_id,), data, context_data=context_data,
            handle_result=partial(self.handle_result, reply))

    def handle_result(self, reply, worker_ctx, result, exc_info):
        reply(result, None if exc_info is None else exc_info[1])
        return result, exc_info


rpc = WebSocketRpc.decorator


class WebSocketHubProvider(DependencyProvider):
    """Injects the container's :class:`WebSocketHub`."""

    hub = None
    server = WebSocketServer()

    def setup(self):
        self.hub = WebSocketHub(self.server)
        self.server.register_provider(self)

    def stop(self):
        self.server.unregister_provider(self)

    def kill(self):
        self.server.unregister_provider(self)

    def get_dependency(self, worker_ctx):
        return self.hub

    def cleanup_websocket(self, socket_id):
        self.hub.forget(socket_id)


class WebSocketHub:
    """Subscriptions of sockets to channels, and sending to them.
    Thread-safe: workers use one hub at once.

    ``connections`` (socket id -> :class:`Connection`) and
    ``subscriptions`` (channel -> set of socket ids) are Nameko's
    attributes; read them, but change them through the methods.
    """

    def __init__(self, server):
        self._server = server
        self._lock = threading.RLock()
        self.connections = {}
        self.subscriptions = {}

    def _get_connection(self, socket_id, create=True):
        connection = self.connections.get(socket_id)
        if connection is not None:
            return connection
        info = self._server.sockets.get(socket_id)
        if info is None:
            if not create:
                return None
            raise ConnectionNotFound(socket_id)
        if not create:
            return None
        connection = self.connections[socket_id] = Connection(
            socket_id, info.data)
        return connection

    def get_subscriptions(self, socket_id):
        """The channels ``socket_id`` is subscribed to, sorted."""
        with self._lock:
            connection = self._get_connection(socket_id, create=False)
            return [] if connection is None else sorted(
                connection.subscriptions)

    def subscribe(self, socket_id, channel):
        """Subscribe a socket to a channel.

        :raises ConnectionNotFound: no such socket
        """
        with self._lock:
            connection = self._get_connection(socket_id)
            self.subscriptions.setdefault(channel, set()).add(socket_id)
            connection.subscriptions.add(channel)

    def unsubscribe(self, socket_id, channel):
        """Unsubscribe a socket from a channel."""
        with self._lock:
            connection = self._get_connection(socket_id, create=False)
            if connection is not None:
                connection.subscriptions.discard(channel)
            subscribed = self.subscriptions.get(channel)
            if subscribed is not None:
                subscribed.discard(socket_id)

    def broadcast(self, channel, event, data):
        """Send an event to every socket subscribed to ``channel``."""
        with self._lock:
            socket_ids = list(self.subscriptions.get(channel, ()))
        if not socket_ids:
            return
        from threadko.web.websocket_connection import text_frame

        # one message for all: framed once (server frames are unmasked)
        frame = text_frame(self._server.serialize_event(event, data))
        sockets = self._server.sockets
        for socket_id in socket_ids:
            info = sockets.get(socket_id)
            if info is not None:
                info.socket.send_frame(frame)

    def unicast(self, socket_id, event, data):
        """Send an event to one socket; return whether it exists."""
        info = self._server.sockets.get(socket_id)
        if info is None:
            return False
        info.socket.send_text(self._server.serialize_event(event, data))
        return True

    def forget(self, socket_id):
        """A socket left: drop its connection and subscriptions."""
        with self._lock:
            connection = self.connections.pop(socket_id, None)
            if connection is None:
                return
            for channel in connection.subscriptions:
                subscribed = self.subscriptions.get(channel)
                if subscribed:
                    subscribed.discard(socket_id)
