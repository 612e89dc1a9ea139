"""A websocket client for tests, in the shape of Nameko's
``nameko.testing.websocket``: :func:`make_virtual_socket` returns
``(ws_app, connect_socket)``, and ``connect_socket()`` a socket object
speaking Nameko's websocket RPC protocol (see
:mod:`threadko.web.websocket`)::

    ws_app, connect_socket = make_virtual_socket("127.0.0.1", port)
    socket = connect_socket()
    socket.wait_for_event("connected")     # ("connected", {"socket_id": ...})
    socket.rpc("join", room="lobby")       # the result, or raises
    socket.wait_for_event("said")          # ("said", {...})
    ws_app.close()

The ``websocket`` pytest fixture makes such sockets for the server of
``web_config``. The protocol (handshake, framing, masking, ping/pong,
close) is done by `wsproto <https://python-hyper.org/projects/wsproto/>`_
in client mode, over a plain socket; each client has one reader thread
(``threadko-websocket-client-<n>``), started by ``connect_socket()`` and
ended (and joined) by ``ws_app.close()``.

Differences from Nameko's, which runs on eventlet and ``websocket-client``:
nothing waits for ever. :meth:`Socket.rpc` and :meth:`Socket.wait_for_event`
wait up to :attr:`Socket.timeout` seconds (default 30), then raise
:class:`TimeoutError`; an ``rpc`` whose connection closes before its
answer raises :class:`ConnectionError`. ``ws_app.run_forever()`` exists
for code that starts it itself, as Nameko's fixture does: it starts the
client if ``connect_socket()`` has not, and waits until it is closed.
"""

import itertools
import json
import queue
import socket as socketlib
import threading
import uuid
from collections import defaultdict

__all__ = ['make_virtual_socket', 'WebSocketApp', 'Socket',
           'HandshakeRejected', 'DEFAULT_TIMEOUT']

#: seconds ``rpc`` and ``wait_for_event`` wait, unless told otherwise
DEFAULT_TIMEOUT = 30.0
#: seconds ``close()`` waits for the server to answer a close frame
CLOSE_TIMEOUT = 5.0

_client_numbers = itertools.count(1)


class HandshakeRejected(ConnectionError):
    """The server answered the upgrade request with an HTTP response
    instead of switching protocols: ``status_code``, ``headers`` (a list
    of ``(name, value)`` byte pairs) and ``body`` (bytes)."""

    def __init__(self, status_code, headers, body):
        self.status_code = status_code
        self.headers = headers
        self.body = body
        super().__init__('websocket handshake rejected: {} {!r}'.format(
            status_code, body[:200]))


class WebSocketApp:
    """One websocket client connection (the ``ws_app`` of
    :func:`make_virtual_socket`).

    :param url: ``ws://host:port/path``
    :param on_message: called with ``(ws_app, message)`` for every message
        (``str``, or ``bytes`` for a binary one), on the reader thread
    :param on_open: called with ``(ws_app,)`` once the handshake is done
    :param on_error: called with ``(ws_app, exception)`` when connecting
        fails
    :param on_close: called with ``(ws_app,)`` when the connection is gone
    :param headers: extra headers of the upgrade request (a dict or
        ``(name, value)`` pairs)

    After the connection closed, :attr:`close_code` and
    :attr:`close_reason` are those of the server's close frame (``None``
    if it sent none).
    """

    def __init__(self, url, on_message=None, on_open=None, on_error=None,
                 on_close=None, headers=None):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != 'ws':
            raise ValueError('only ws:// urls: {}'.format(url))
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or '/') + (
            '?' + parts.query if parts.query else '')
        self.headers = list(dict(headers).items()
                            if isinstance(headers, dict) else headers or ())
        self.on_message = on_message
        self.on_open = on_open
        self.on_error = on_error
        self.on_close = on_close
        self.close_code = None
        self.close_reason = None
        self.sock = None
        self._protocol = None
        self._lock = threading.Lock()  # the protocol state and the writes
        self._start_lock = threading.Lock()
        self._connected = None  # None: not tried; True; or the exception
        self._thread = None
        self._closed = threading.Event()
        self._message = []

    def __repr__(self):
        return '<WebSocketApp {}>'.format(self.url)

    @property
    def connected(self):
        """Whether the connection is open (the handshake done and the
        connection not closed)."""
        return self._connected is True and not self._closed.is_set()

    # -- connecting ----------------------------------------------------------

    def start(self, timeout=DEFAULT_TIMEOUT):
        """Connect and start the reader thread (once); raise what
        connecting raised (:class:`HandshakeRejected`, an ``OSError``)."""
        with self._start_lock:
            if self._connected is None:
                try:
                    self._connect(timeout)
                except BaseException as exc:
                    self._connected = exc
                    self._closed.set()
                    if self.on_error is not None:
                        self.on_error(self, exc)
                    raise
                self._connected = True
                self._thread = threading.Thread(
                    target=self._read, daemon=True,
                    name='threadko-websocket-client-{}'.format(
                        next(_client_numbers)))
                self._thread.start()
                if self.on_open is not None:
                    self.on_open(self)
            elif self._connected is not True:
                raise self._connected

    def _connect(self, timeout):
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import (
            AcceptConnection, RejectConnection, RejectData, Request,
        )

        protocol = WSConnection(ConnectionType.CLIENT)
        sock = socketlib.create_connection((self.host, self.port), timeout)
        try:
            sock.setsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY, 1)
            sock.sendall(protocol.send(Request(
                host='{}:{}'.format(self.host, self.port), target=self.path,
                extra_headers=[(_bytes(name), _bytes(value))
                               for name, value in self.headers])))
            rejected = None
            body = []
            while True:
                data = sock.recv(65536)
                protocol.receive_data(data or None)
                for event in protocol.events():
                    if isinstance(event, AcceptConnection):
                        sock.settimeout(None)
                        self.sock, self._protocol = sock, protocol
                        return
                    if isinstance(event, RejectConnection):
                        rejected = event
                        if not event.has_body:
                            raise HandshakeRejected(
                                event.status_code, event.headers, b'')
                    elif isinstance(event, RejectData):
                        body.append(event.data)
                        if event.body_finished:
                            raise HandshakeRejected(
                                rejected.status_code, rejected.headers,
                                b''.join(body))
                    else:  # pragma: no cover (a message before accepting)
                        raise ConnectionError(
                            'unexpected {!r} during the handshake'.format(
                                event))
                if not data:
                    if rejected is not None:
                        raise HandshakeRejected(
                            rejected.status_code, rejected.headers,
                            b''.join(body))
                    raise ConnectionError(
                        'the server closed the connection during the '
                        'websocket handshake')
        except BaseException:
            sock.close()
            raise

    def run_forever(self, timeout=None):
        """Start (if :meth:`start` or ``connect_socket()`` has not) and
        wait until the connection is closed (up to ``timeout`` seconds;
        ``None``: for ever). Nameko's fixture runs it on a greenthread;
        here the reader thread exists anyway."""
        try:
            self.start()
        except Exception:
            return
        self._closed.wait(timeout)

    # -- the reader thread ---------------------------------------------------

    def _read(self):
        from wsproto.events import (
            BytesMessage, CloseConnection, Ping, TextMessage,
        )
        from wsproto.utilities import LocalProtocolError

        # the bytes that came after the handshake's response
        data = b''
        try:
            while True:
                messages = []
                with self._lock:
                    if data:
                        self._protocol.receive_data(data)
                    for event in self._protocol.events():
                        if isinstance(event, (TextMessage, BytesMessage)):
                            self._message.append(event.data)
                            if event.message_finished:
                                parts, self._message = self._message, []
                                messages.append(
                                    ''.join(parts)
                                    if isinstance(event, TextMessage)
                                    else b''.join(parts))
                        elif isinstance(event, Ping):
                            self._send_locked(event.response())
                        elif isinstance(event, CloseConnection):
                            if self.close_code is None:
                                self.close_code = event.code
                                self.close_reason = event.reason
                            try:
                                self._send_locked(event.response())
                            except LocalProtocolError:
                                pass  # it answers our own close
                for message in messages:
                    if self.on_message is not None:
                        self.on_message(self, message)
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b''
                if not data:
                    break
        finally:
            self._gone()

    def _gone(self):
        with self._lock:
            self._closed.set()
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
        if self.on_close is not None:
            self.on_close(self)

    # -- any thread -----------------------------------------------------------

    def _send_locked(self, event):
        data = self._protocol.send(event)
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader notices the connection is gone

    def send(self, data):
        """Send one message: text for a ``str``, binary for ``bytes``.

        :raises ConnectionError: the connection is closed
        """
        from wsproto.connection import ConnectionState
        from wsproto.events import Message

        if self._connected is not True:
            self.start()
        with self._lock:
            if (self._closed.is_set()
                    or self._protocol.state is not ConnectionState.OPEN):
                raise ConnectionError('the websocket is closed')
            self.sock.sendall(self._protocol.send(Message(data=data)))

    def close(self, code=1000, reason='', timeout=CLOSE_TIMEOUT):
        """Close the connection (a close frame, then wait up to ``timeout``
        seconds for the server's answer) and join the reader thread.
        Idempotent; a no-op for a client never started."""
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        with self._start_lock:
            if self._connected is None:
                self._connected = ConnectionError('closed before connecting')
                self._closed.set()
                return
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            if (not self._closed.is_set()
                    and self._protocol.state is ConnectionState.OPEN):
                self._send_locked(CloseConnection(code=code, reason=reason))
        if thread is threading.current_thread():
            return  # an on_message callback: the reader ends by itself
        if not self._closed.wait(timeout):
            self.abort()
        thread.join(timeout)

    def abort(self):
        """Drop the connection without a close frame (as a client that
        vanished); the reader thread ends by itself."""
        with self._lock:
            sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socketlib.SHUT_RDWR)
            except OSError:
                pass

    def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """Wait until the connection is gone; return whether it is."""
        return self._closed.wait(timeout)


class Socket:
    """The client side of Nameko's websocket RPC protocol (what
    ``connect_socket()`` returns)."""

    #: seconds :meth:`rpc` and :meth:`wait_for_event` wait
    timeout = DEFAULT_TIMEOUT

    def __init__(self):
        self._lock = threading.Lock()
        self._event_queues = defaultdict(queue.Queue)
        self._result_handlers = {}
        #: results whose correlation id no :meth:`rpc` waits for (replies to
        #: messages sent with ``app.send``), in arrival order
        self.uncorrelated_results = queue.Queue()
        #: the :class:`WebSocketApp` (set by :func:`make_virtual_socket`)
        self.app = None

    def get_event_queue(self, event_type):
        """The ``queue.Queue`` of ``(event_type, data)`` of the events of
        that type received and not yet taken."""
        with self._lock:
            return self._event_queues[event_type]

    def wait_for_event(self, event_type, timeout=None):
        """The next ``(event_type, data)`` of that type, in arrival order.

        :raises TimeoutError: none within ``timeout`` seconds (default
            :attr:`timeout`)
        """
        timeout = self.timeout if timeout is None else timeout
        try:
            return self.get_event_queue(event_type).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError('no {!r} event within {}s'.format(
                event_type, timeout)) from None

    def rpc(self, _method, **data):
        """Call ``@rpc`` method ``_method`` with ``data`` as keyword
        arguments; return its result or raise its error (deserialised as
        by the RPC clients: registered exceptions such as ``MethodNotFound``
        as themselves, others as ``RemoteError``).

        :raises TimeoutError: no answer within :attr:`timeout` seconds
        :raises ConnectionError: the connection closed first
        """
        from threadko.exceptions import deserialize

        correlation_id = str(uuid.uuid4())
        answer = queue.Queue(maxsize=1)
        with self._lock:
            self._result_handlers[correlation_id] = answer.put
        try:
            self.app.send(json.dumps({
                'method': _method, 'data': data,
                'correlation_id': correlation_id}))
            response = answer.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError('no answer to {}() within {}s'.format(
                _method, self.timeout)) from None
        finally:
            with self._lock:
                self._result_handlers.pop(correlation_id, None)
        if response is None:
            raise ConnectionError(
                'the websocket closed before {}() was answered (close code '
                '{})'.format(_method, self.app.close_code))
        if response['success']:
            return response['data']
        raise deserialize(response['error'])

    # -- the reader thread ---------------------------------------------------

    def _on_message(self, ws_app, message):
        msg = json.loads(message)
        if msg['type'] == 'event':
            self.get_event_queue(msg['event']).put(
                (msg['event'], msg['data']))
        elif msg['type'] == 'result':
            with self._lock:
                handler = self._result_handlers.pop(
                    msg.get('correlation_id'), None)
            if handler is not None:
                handler(msg)
            else:
                self.uncorrelated_results.put(msg)

    def _on_close(self, ws_app):
        with self._lock:
            handlers, self._result_handlers = self._result_handlers, {}
        for handler in handlers.values():
            handler(None)


def make_virtual_socket(host, port, path='/ws', headers=None):
    """A test websocket client for ``ws://host:port/path``, as Nameko's:
    returns ``(ws_app, connect_socket)``. ``connect_socket()`` connects
    (once) and returns the :class:`Socket`, or raises what connecting
    raised (:class:`HandshakeRejected` for an HTTP answer); ``ws_app``
    is the :class:`WebSocketApp` (``close()``, ``send(text)``), also the
    socket's ``app``. ``headers``: extra headers of the upgrade request
    (an addition to Nameko's signature)."""
    sock = Socket()
    ws_app = WebSocketApp(
        'ws://{}:{}{}'.format(host, port, path),
        on_message=sock._on_message, on_close=sock._on_close,
        headers=headers)
    sock.app = ws_app

    def connect_socket():
        ws_app.start()
        return sock

    return ws_app, connect_socket


def _bytes(value):
    return value if isinstance(value, bytes) else str(value).encode('latin-1')
