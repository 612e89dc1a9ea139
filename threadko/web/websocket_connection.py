"""One websocket, held by the front's I/O thread
(:mod:`threadko.web.front`): the protocol, done by wsproto (sans-IO),
between the bytes of a waitress connection and the text messages a
:class:`~threadko.web.websocket.WebSocketServer` handles.

Threads: :meth:`WebSocket.receive`, :meth:`~WebSocket.check` and
:meth:`~WebSocket.connection_lost` run on the I/O thread;
:meth:`~WebSocket.send_text` and :meth:`~WebSocket.close` on any thread
(workers replying and broadcasting). One lock per socket orders every use
of its protocol state and every write, so frames never interleave.

No write waits: waitress's ``write_soon`` blocks its caller while more
than ``outbuf_high_watermark`` bytes (16 MiB) wait to be sent, until the
I/O thread sent some; that would hold the socket's lock (which the I/O
thread then waits for) or, on the I/O thread, never end. A socket with
that much unsent is dropped instead, whatever
``WEBSOCKET_MAX_SEND_BUFFER`` says.

Closing: a close frame is queued and the connection closed once it is
sent. A client that does not read never gets it, and the I/O thread sees
no moment to close the connection (it is never writable): the socket's
:meth:`~WebSocket.check` drops a socket that is still closing
:data:`CLOSE_TIMEOUT` seconds later, and one dropped from another thread
is closed by the I/O thread at once.
"""

import logging
import threading
import time
import uuid
from collections import deque

try:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection, BytesMessage, CloseConnection, Message, Ping,
        Request, TextMessage,
    )
    from wsproto.frame_protocol import FrameProtocol
    from wsproto.utilities import LocalProtocolError, RemoteProtocolError
except ImportError as exc:  # pragma: no cover (the extra is installed)
    raise ImportError(
        'threadko.web.websocket needs wsproto: pip install '
        '"threadko[websocket]"') from exc

_log = logging.getLogger(__name__)

#: close codes (RFC 6455, 7.4.1)
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
#: messages of one socket waiting for its call in progress before the
#: server stops reading from it (the client then waits, as TCP makes it)
BACKLOG = 16
#: seconds a socket may take to get its close frame out before its
#: connection is dropped anyway (a client that does not read)
CLOSE_TIMEOUT = 5.0


class WebSocket:
    """A websocket on a waitress channel.

    :param channel: the front's channel the upgrade request came on
    :param settings: the front's :class:`~threadko.web.front.Settings`
    """

    def __init__(self, channel, settings):
        self.socket_id = str(uuid.uuid4())
        self.open = False
        self._channel = channel
        self._settings = settings
        self._protocol = WSConnection(ConnectionType.SERVER)
        self._lock = threading.Lock()
        self._closing = False
        self._close_deadline = None
        self._lost = False  # the connection is closed
        self._parts = []  # of the message being received
        self._size = 0
        self._last_heard = time.monotonic()
        self._pinged = False
        #: the server's: called with (websocket, message) on the I/O
        #: thread, and with (websocket,) when the connection is gone
        self.on_message = None
        self.on_closed = None
        #: the server's: whether a call of this socket is in progress, and
        #: the messages waiting for it (see :meth:`backlogged`)
        self.busy = False
        self.pending = deque()

    def __repr__(self):
        return '<WebSocket {}>'.format(self.socket_id)

    # -- the handshake (a request thread) ----------------------------------

    def handshake(self, request):
        """The bytes answering the upgrade ``request`` (waitress's parsed
        request): ``101 Switching Protocols``, after which :attr:`open` is
        true; or an error response (400 for a missing or bad key, 426 for
        another protocol version)."""
        headers = [(name.replace('_', '-'), value)
                   for name, value in request.headers.items()]
        try:
            self._protocol.initiate_upgrade_connection(headers, request.path)
            requested = [event for event in self._protocol.events()
                         if isinstance(event, Request)]
            assert requested, 'wsproto made no Request of the upgrade'
            response = self._protocol.send(AcceptConnection())
        except RemoteProtocolError as exc:
            return _rejection(exc)
        self.open = True
        return response

    def send_handshake(self, response, greeting, before=None):
        """Send the handshake's ``response`` and, in the same write, the
        first message (so nothing can come between them).

        ``before()`` is called first, holding the socket's lock: the server
        registers the socket there, so that a message the client sends as
        soon as it has the response finds it registered, and anything
        sent to it from then on (a broadcast) waits for the lock, coming
        after the greeting."""
        with self._lock:
            if before is not None:
                before()
            self._write(response + self._protocol.send(
                Message(data=greeting)))

    @property
    def closing(self):
        """Whether the socket is closed or closing (it takes no more
        messages)."""
        return self._closing

    # -- the I/O thread ------------------------------------------------------

    def receive(self, data):
        """Bytes from the client."""
        self._last_heard = time.monotonic()
        self._pinged = False
        messages = []
        with self._lock:
            if self._closing:
                return
            self._protocol.receive_data(data)
            for event in self._protocol.events():
                if self._closing:
                    break
                if isinstance(event, (TextMessage, BytesMessage)):
                    message = self._take_part(event)
                    if message is not None:
                        messages.append(message)
                elif isinstance(event, Ping):
                    self._write(self._protocol.send(event.response()))
                elif isinstance(event, CloseConnection):
                    # the client's close, or a frame wsproto refused
                    # (invalid UTF-8 is 1007, a protocol error 1002)
                    if event.code not in (1000, GOING_AWAY, 1005):
                        _log.info('closing %s: %s (%s)', self, event.reason,
                                  event.code)
                    self._close_locked(event.code, event.reason,
                                       answer=event)
        for message in messages:
            self.on_message(self, message)

    def _take_part(self, event):
        """Collect a part of a message; the whole message when it is
        complete (``str`` or ``bytes``), else ``None``."""
        self._parts.append(event.data)
        self._size += len(event.data)
        limit = self._settings.websocket_max_message_size
        if limit is not None and self._size > limit:
            _log.warning('closing %s: a message over %d bytes (%s)',
                         self, limit, 'WEBSOCKET_MAX_MESSAGE_SIZE')
            self._close_locked(MESSAGE_TOO_BIG, 'message too big')
            return None
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        return ''.join(parts) if isinstance(event, TextMessage) \
            else b''.join(parts)

    def backlogged(self):
        """Whether the server should stop reading from this socket for now:
        enough of its messages wait already."""
        return len(self.pending) >= BACKLOG

    def resume_reading(self):
        """The backlog went down (any thread): wake the I/O thread, which
        otherwise notices only at its next poll timeout."""
        self._channel.server.pull_trigger()

    def check(self, now):
        """Ping a quiet socket, close one quiet for too long, drop one that
        should be closed by now (the front's sweep, about every second,
        and its stop)."""
        if self._closing or self._channel.will_close:
            self.expire(now)
            return
        quiet = now - self._last_heard
        if quiet >= self._settings.websocket_idle_timeout:
            _log.info('closing %s: nothing heard for %.0fs (%s)', self,
                      quiet, 'WEBSOCKET_IDLE_TIMEOUT')
            self.close(GOING_AWAY, 'idle')
        elif (quiet >= self._settings.websocket_ping_interval
                and not self._pinged):
            self._pinged = True
            with self._lock:
                if not self._closing:
                    self._write(self._protocol.send(Ping()))

    def expire(self, now):
        """Drop the connection of a socket that was dropped (from another
        thread, or by waitress), or that has been closing since
        :data:`CLOSE_TIMEOUT` seconds. On the I/O thread."""
        if self._lost:
            return
        deadline = self._close_deadline
        if self._channel.will_close or (
                deadline is not None and now >= deadline):
            self._drop()

    def _drop(self):
        # on the I/O thread
        if not self._lost:
            self._channel.handle_close()

    def connection_lost(self):
        """The connection closed (either side)."""
        with self._lock:
            self._closing = True
            self._lost = True
        on_closed = self.on_closed
        if on_closed is not None:
            on_closed(self)

    # -- any thread ------------------------------------------------------------

    def send_text(self, text):
        """Send one text message; return whether it was sent (a closed or
        closing socket, or one whose client does not read, gets nothing,
        and in the last case it is closed)."""
        return self.send_frame(text_frame(text))

    def send_frame(self, frame):
        """Send a whole message already framed by :func:`text_frame` (a
        broadcast frames its message once for every socket); return
        whether it was sent, as :meth:`send_text`."""
        with self._lock:
            if self._closing:
                return False
            unsent = self._channel.total_outbufs_len
            limit = self._settings.websocket_max_send_buffer
            if limit is not None and unsent > limit:
                _log.warning(
                    'closing %s: its client does not read (%d bytes not '
                    'sent, %s)', self, unsent, 'WEBSOCKET_MAX_SEND_BUFFER')
                self._abort()
                return False
            return self._write(frame)

    def close(self, code=1000, reason=''):
        """Send a close frame and close the connection once it is out."""
        with self._lock:
            self._close_locked(code, reason)

    # -- with the lock ---------------------------------------------------------

    def _write(self, data):
        channel = self._channel
        unsent = channel.total_outbufs_len
        if not unsent:
            # nothing queued (only the holder of this socket's lock queues
            # anything): send straight away, as waitress's write_soon would,
            # without its buffers; what the socket does not take now is
            # queued below, for the I/O thread
            # waitress marks a channel disconnected under this lock, and
            # closes its socket only after
            with channel.outbuf_lock:
                sock = channel.socket
                if sock is None or not channel.connected:
                    self._closing = True  # gone already
                    return False
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the client is gone
                    self._abort()
                    return False
            if sent == len(data):
                return True
            data = data[sent:]
        elif unsent > channel.adj.outbuf_high_watermark:
            # write_soon would wait (see the module docstring)
            _log.warning(
                'closing %s: its client does not read (%d bytes not sent, '
                'more than the server buffers for one connection)', self,
                unsent)
            self._abort()
            return False
        try:
            channel.write_soon(data)
        except Exception:  # ClientDisconnected, or the socket failed
            self._closing = True
            return False
        return True

    def _close_locked(self, code, reason, answer=None):
        if self._closing:
            return
        try:
            data = self._protocol.send(
                answer.response() if answer is not None
                else CloseConnection(code=code, reason=reason))
        except LocalProtocolError:  # closed already, by the protocol
            data = b''
        if data:
            self._write(data)
        if self._closing:  # the write failed: gone already, or dropped
            return
        self._closing = True
        self._close_deadline = time.monotonic() + CLOSE_TIMEOUT
        channel = self._channel
        with channel.requests_lock:
            channel.close_when_flushed = True
        channel.server.pull_trigger()

    def _abort(self):
        """Drop the connection, sending nothing more. The I/O thread closes
        it at once: waitress would close a ``will_close`` channel only once
        it is writable, which one whose client does not read is not."""
        self._closing = True
        self._channel.will_close = True
        # the front's pull_trigger (FrontServer._wake) takes a function to
        # run on the I/O thread
        self._channel.server.pull_trigger(self._drop)


_framers = threading.local()


def text_frame(text):
    """The bytes of one whole text message from the server (unmasked, so
    the same for every socket; no extension is negotiated), framed by
    wsproto."""
    framer = getattr(_framers, 'framer', None)
    if framer is None:  # one per thread: it keeps state between frames
        framer = _framers.framer = FrameProtocol(client=False, extensions=[])
    return bytes(framer.send_data(text, fin=True))


def _rejection(error):
    """The HTTP response refusing a bad upgrade request (wsproto's status
    and headers, with a body that says why)."""
    hint = error.event_hint
    status = getattr(hint, 'status_code', 400)
    body = 'Invalid websocket handshake: {}\n'.format(error).encode('utf-8')
    lines = ['HTTP/1.1 {} {}'.format(status, _REASONS.get(status, 'Error'))]
    for name, value in getattr(hint, 'headers', None) or ():
        lines.append('{}: {}'.format(
            _text(name), _text(value)))
    lines += ['Content-Type: text/plain; charset=utf-8',
              'Content-Length: {}'.format(len(body)), 'Connection: close',
              '', '']
    return '\r\n'.join(lines).encode('latin-1') + body


def service_unavailable():
    """The response refusing an upgrade because the service is stopping."""
    body = b'Service Unavailable: the service is stopping\n'
    return (b'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n'
            b'Content-Type: text/plain; charset=utf-8\r\n'
            b'Content-Length: ' + str(len(body)).encode() +
            b'\r\nConnection: close\r\n\r\n' + body)


_REASONS = {400: 'Bad Request', 426: 'Upgrade Required'}


def _text(value):
    return value.decode('latin-1') if isinstance(value, bytes) else value
