"""Publishing on a consumer thread's own connection, confirmed without
waiting.

A :class:`LoopPublisher` belongs to a
:class:`~threadko.amqp.consumer.ConsumerLoop`. Any thread may hand it a
message; the loop's thread publishes it on a confirm-mode channel of the
loop's connection and calls the message's ``on_done(error)`` when the
broker has confirmed it (``error`` is None), returned it as unroutable
(:class:`~threadko.exceptions.UndeliverableMessage`), refused it, or the
connection went away first. Nothing waits in between, so many messages are
in flight at once and the broker batches its disk writes for them; a burst
of messages from many threads costs one wake-up of the loop.

This is the hot path of RPC: services publish replies this way (and ack
the request in ``on_done``, on the same connection that received it), and
RPC callers publish requests this way. Every ``on_done`` is called exactly
once: on the loop's thread, or on the caller's thread when there is no
connection to publish on. It must not block.

Other threads wake the loop through a pipe registered with pika's I/O loop
(:class:`_Waker`), and the loop's thread publishes from inside pika's poll
through the channel's asynchronous core. :meth:`LoopPublisher.run_in_poll`
uses the same wake-up for other short work, such as acks from worker
threads. These use three pika internals that are stable across pika 1.x:
``BlockingChannel._impl``, ``BlockingConnection._impl.ioloop`` and (in
:func:`threadko.amqp.consumer.basic_consume`) ``Channel._consumers``. The
in-process broker has no asynchronous core: there the loop publishes
through ``add_callback_threadsafe``, each message confirmed as it goes.

Resource alarms: RabbitMQ blocks a connection that publishes while a node
is low on memory or disk (``connection.blocked``), and then reads nothing
from it (acks included) until the alarm clears. The connection is not torn
down (consuming resumes by itself afterwards). Once the publisher knows
its connection is blocked it writes nothing more and holds what it is
given; on ``connection.unblocked`` it publishes what it holds. A message
published with a ``blocked_timeout`` (an RPC request: a caller waits for
it) gives up after that many seconds of blocking with
:class:`~threadko.exceptions.PublishBlocked`; a message without one (a
reply: its request stays unacked meanwhile) waits for the alarm to clear.
Warnings are logged when blocking starts and ends.

For metrics, the loop's thread counts the messages the broker returned
(:attr:`LoopPublisher.returns`) and nacked (:attr:`LoopPublisher.nacks`),
and, when :attr:`LoopPublisher.observe_confirm` is set, reports how long
each confirm took.
"""

import logging
import os
import threading
import time
from collections import deque
from functools import partial

import pika
import pika.exceptions

from threadko.amqp.connection import CONNECTION_ERRORS
from threadko.amqp.publish import log_blocked, log_unblocked
from threadko.exceptions import (
    BrokerRefused, PublishBlocked, UndeliverableMessage,
)
from threadko.utils import fork

_log = logging.getLogger(__name__)


class PublishNotConfirmed(ConnectionError):
    """The connection or channel a message was published on went away
    before the broker confirmed it; it may or may not have been routed."""


class PublishNacked(PublishNotConfirmed):
    """The broker refused (nacked) the message: it could not take it, for
    example because a queue it routes to is on a node going down."""


class LoopPublisher:
    """Publishes for a consumer loop (see the module docstring).

    The loop calls :meth:`attach` with each new connection and
    :meth:`detach` when it is lost or closed, both on its own thread.
    In a process forked from the loop's, it is detached (the loop's thread
    and connection stayed in the parent).
    """

    #: ``fn(seconds)``, called on the loop's thread with the time from
    #: publishing each message to its confirm (or nack), or None
    observe_confirm = None

    def __init__(self, loop):
        self._loop = loop
        self._lock = threading.Lock()
        self._outbox = deque()  # messages not yet published
        self._callbacks = deque()  # see run_in_poll
        self._attached = False
        self._wake_scheduled = False
        self._connection = None
        self._channel = None
        self._waker = None
        #: the broker's reason while it blocks the connection (see the
        #: module docstring); only the loop's thread changes it
        self._blocked = None
        self._blocked_since = None
        self._expiry_timer = None
        #: messages the broker returned as unroutable (mandatory ones)
        #: and refused (nacked); only the loop's thread counts them
        self.returns = 0
        self.nacks = 0
        fork.register(self)

    def _after_fork_in_child(self):
        self._lock = threading.Lock()
        self._attached = False
        self._wake_scheduled = False
        self._outbox = deque()
        self._callbacks = deque()
        self._connection = None
        self._channel = None
        self._blocked = None
        self._expiry_timer = None
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close_in_child()

    @property
    def blocked(self):
        """The broker's reason while it blocks this connection (a resource
        alarm), else None."""
        return self._blocked

    # -- any thread ----------------------------------------------------------

    def publish(self, exchange, routing_key, body, properties,
                mandatory=False, on_done=None, blocked_timeout=None):
        """Publish from the loop's thread; ``on_done(error)`` when settled.

        With ``mandatory``, ``properties.correlation_id`` must be unique
        among the messages in flight: it identifies a returned message.
        ``blocked_timeout``: seconds the message may wait while the broker
        blocks the connection, before ``on_done`` gets
        :class:`~threadko.exceptions.PublishBlocked`; None: until the
        alarm clears.
        """
        message = _Outgoing(exchange, routing_key, body, properties,
                            mandatory, on_done, blocked_timeout)
        with self._lock:
            attached = self._attached
            if attached:
                self._outbox.append(message)
                if not self._wake_scheduled:
                    self._wake_scheduled = True
                    self._wake()
        if not attached:
            message.done(PublishNotConfirmed(
                'not connected to the broker'))

    def _wake(self):
        # with self._lock held: the waker is only closed under it
        if self._waker is not None:
            self._waker.wake()
        else:
            self._loop.call_soon(self._flush)
        # if the connection is going, detach() fails the outbox

    # -- the loop's thread ------------------------------------------------

    def attach(self, connection):
        """Start publishing on ``connection`` (outside pika callbacks: this
        opens a channel)."""
        self._connection = connection
        self._channel = self._open_channel()
        self._blocked = None
        waker = None
        if isinstance(connection, pika.BlockingConnection):
            waker = _Waker(connection, self._flush)
            # called inside pika's poll, as the frames arrive
            connection._impl.add_on_connection_blocked_callback(
                partial(self._on_blocked, connection))
            connection._impl.add_on_connection_unblocked_callback(
                partial(self._on_unblocked, connection))
        with self._lock:
            self._waker = waker
            self._attached = True
            self._wake_scheduled = bool(self._outbox)
            if self._wake_scheduled:
                self._wake()

    def detach(self, error=None):
        """Fail every message not yet confirmed (the connection is gone)."""
        with self._lock:
            self._attached = False
            self._wake_scheduled = False
            waiting, self._outbox = list(self._outbox), deque()
            self._callbacks = deque()  # for the lost connection: moot
            waker, self._waker = self._waker, None
            if waker is not None:
                waker.close()
        channel, self._channel = self._channel, None
        self._connection = None
        self._blocked = None
        self._expiry_timer = None  # the connection's timers are gone
        failure = PublishNotConfirmed(
            'the connection to the broker was lost{}'.format(
                ': {}'.format(error) if error else ''))
        if channel is not None:
            channel.fail_all(failure)
        for message in waiting:
            message.done(failure)

    def _flush(self):
        """Run the waiting callbacks and publish the outbox. Runs inside
        pika's poll (woken by the waker), so it only uses the channel's
        asynchronous core."""
        channel = self._channel
        usable = channel is not None and channel.closed is None
        held = self._blocked is not None
        messages = None
        with self._lock:
            callbacks, self._callbacks = self._callbacks, deque()
            if usable:
                self._wake_scheduled = False
                if not held:
                    messages, self._outbox = self._outbox, deque()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.exception('error in a callback run on the consumer '
                               'thread')
        if not usable:
            # reopening blocks: do it outside the poll
            self._loop.call_soon(self._reopen_and_flush)
        elif held:
            self._hold()
        elif messages:
            channel.publish(messages)

    # -- resource alarms (the loop's thread) --------------------------------

    def _on_blocked(self, connection, impl, method_frame):
        if connection is not self._connection or self._blocked is not None:
            return
        now = time.monotonic()
        self._blocked = method_frame.method.reason or 'no reason given'
        self._blocked_since = now
        log_blocked(self._where(), self._safe_uri(), self._blocked, None,
                    'RPC requests give up after PUBLISH_BLOCKED_TIMEOUT '
                    'with PublishBlocked, replies wait, and acks and '
                    'deliveries on this connection pause until it clears')
        channel = self._channel
        for message in getattr(channel, 'in_flight', lambda: ())():
            message.hold(now)  # written already: its confirm waits too
        self._hold()

    def _on_unblocked(self, connection, impl, method_frame):
        if connection is not self._connection or self._blocked is None:
            return
        self._blocked = None
        timer, self._expiry_timer = self._expiry_timer, None
        if timer is not None:
            connection.remove_timeout(timer)
        log_unblocked(self._where(), self._safe_uri(),
                      time.monotonic() - self._blocked_since)
        for message in getattr(self._channel, 'in_flight', lambda: ())():
            message.deadline = None  # a later alarm starts a new clock
        self._flush()  # what was held

    def _where(self):
        return 'the connection of {}'.format(
            getattr(self._loop, 'description', 'a consumer'))

    def _safe_uri(self):
        connector = getattr(self._loop, 'connector', None)
        return getattr(connector, 'safe_uri', '?')

    def _hold(self):
        """The connection is blocked: start the clocks of the messages
        held, and wake up when the first of them runs out."""
        now = time.monotonic()
        with self._lock:
            for message in self._outbox:
                message.hold(now)
            outbox = list(self._outbox)
        channel = self._channel
        deadlines = [message.deadline for message in outbox +
                     list(getattr(channel, 'in_flight', lambda: ())())
                     if message.deadline is not None]
        timer, self._expiry_timer = self._expiry_timer, None
        if timer is not None:
            self._connection.remove_timeout(timer)
        if deadlines:
            self._expiry_timer = self._connection.call_later(
                max(0.0, min(deadlines) - now), self._expire)

    def _expire(self):
        """Fail the messages blocked for longer than their timeout."""
        self._expiry_timer = None
        if self._blocked is None:
            return
        now = time.monotonic()
        with self._lock:
            keep, expired = deque(), []
            for message in self._outbox:
                if message.deadline is not None and message.deadline <= now:
                    expired.append(message)
                else:
                    keep.append(message)
            self._outbox = keep
        channel = self._channel
        written = channel.expire(now) if channel is not None else []
        for message, maybe_sent in ([(m, False) for m in expired] +
                                    [(m, True) for m in written]):
            message.done(PublishBlocked(
                'publish to exchange {!r} with routing key {!r}'.format(
                    message.exchange, message.routing_key),
                self._blocked, message.blocked_timeout, maybe_sent))
        self._hold()

    def settled(self):
        """True when nothing handed to this publisher is still waiting: no
        message unpublished or unconfirmed, no :meth:`run_in_poll` callback
        pending. Called on the loop's thread."""
        with self._lock:
            if self._outbox or self._callbacks:
                return False
        channel = self._channel
        return channel is None or not channel.unconfirmed

    def run_in_poll(self, callback):
        """Run ``callback()`` soon on the loop's thread, inside pika's poll:
        for short work that does not block (an ack through the channel's
        asynchronous core). Returns False, without running it, when there
        is no pika connection to run it on."""
        with self._lock:
            if not self._attached or self._waker is None:
                return False
            self._callbacks.append(callback)
            if not self._wake_scheduled:
                self._wake_scheduled = True
                self._waker.wake()
        return True

    def _reopen_and_flush(self):
        try:
            self._channel = self._open_channel()
        except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as exc:
            with self._lock:
                self._wake_scheduled = False
                messages, self._outbox = self._outbox, deque()
            for message in messages:
                message.done(PublishNotConfirmed(
                    'could not open a channel: {!r}'.format(exc)))
            return
        self._flush()

    def _open_channel(self):
        if isinstance(self._connection, pika.BlockingConnection):
            self._channel = _PikaConfirmChannel(self._connection, self)
        else:
            self._channel = _SyncConfirmChannel(self._connection, self)
        return self._channel


class _Waker:
    """Wakes a pika connection's poll from any thread and runs
    ``callback`` inside it: a pipe registered with the connection's I/O
    loop. Cheaper than ``add_callback_threadsafe``, whose callbacks go
    through a timer and the blocking adapter's event queue."""

    def __init__(self, connection, callback):
        self._ioloop = connection._impl.ioloop
        self._callback = callback
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._ioloop.add_handler(self._read_fd, self._on_readable,
                                 self._ioloop.READ)

    def wake(self):
        """Any thread (the owner serialises this with :meth:`close`)."""
        try:
            os.write(self._write_fd, b'x')
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _on_readable(self, fd, events):
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._callback()

    def close(self):
        try:
            self._ioloop.remove_handler(self._read_fd)
        except Exception:  # the I/O loop is already closed
            pass
        os.close(self._read_fd)
        os.close(self._write_fd)

    def close_in_child(self):
        """In a forked child: close the child's copies of the pipe. The I/O
        loop is left alone: its poller (epoll) is shared with the parent,
        so unregistering from it would unregister the parent's pipe."""
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class _Outgoing:
    __slots__ = ('exchange', 'routing_key', 'body', 'properties',
                 'mandatory', 'on_done', 'returned', 'blocked_timeout',
                 'deadline', 'published_at')

    def __init__(self, exchange, routing_key, body, properties, mandatory,
                 on_done, blocked_timeout=None):
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
        self.on_done = on_done
        self.returned = False
        self.blocked_timeout = blocked_timeout
        self.deadline = None  # set while the connection is blocked
        self.published_at = None  # when confirm latency is observed

    def hold(self, now):
        """The connection is blocked: the message gives up
        ``blocked_timeout`` seconds from ``now`` (or from when it was first
        held)."""
        if self.deadline is None and self.blocked_timeout is not None:
            self.deadline = now + self.blocked_timeout

    def done(self, error=None):
        if self.on_done is None:
            return
        on_done, self.on_done = self.on_done, None
        try:
            on_done(error)
        except Exception:
            _log.exception('error in the callback of a published message')

    def undeliverable(self):
        return UndeliverableMessage(
            'No queue is bound to exchange {!r} for routing key {!r}'
            .format(self.exchange, self.routing_key))


class _PikaConfirmChannel:
    """A pika channel in confirm mode, used through its asynchronous core:
    publishing does not wait, confirms arrive as callbacks (RabbitMQ sends
    a message's ``basic.return`` before its ``basic.ack``)."""

    def __init__(self, connection, publisher):
        self._publisher = publisher  # counts returns and nacks
        self._blocking = connection.channel()  # opening may block briefly
        self._impl = impl = self._blocking._impl
        self._unconfirmed = {}  # delivery tag -> _Outgoing
        self._returnable = {}  # correlation id -> _Outgoing (mandatory)
        self._next_tag = 1
        impl.confirm_delivery(self._on_confirm)  # no callback: nowait
        impl.add_on_return_callback(self._on_return)
        impl.add_on_close_callback(self._on_close)
        self.closed = None

    def publish(self, messages):
        impl = self._impl
        # one clock reading for the batch, and only for metrics
        now = (time.monotonic()
               if self._publisher.observe_confirm is not None else None)
        for message in messages:
            if self.closed is not None:
                message.done(self.closed)
                continue
            message.published_at = now
            try:
                impl.basic_publish(
                    message.exchange, message.routing_key, message.body,
                    message.properties, message.mandatory)
            except Exception as exc:  # e.g. an invalid property
                message.done(exc)
                continue
            self._unconfirmed[self._next_tag] = message
            self._next_tag += 1
            if message.mandatory:
                self._returnable[message.properties.correlation_id] = message

    @property
    def unconfirmed(self):
        return bool(self._unconfirmed)

    def in_flight(self):
        """The messages published and not yet confirmed."""
        return list(self._unconfirmed.values())

    def expire(self, now):
        """Forget, and return, the messages whose deadline has passed (a
        late confirm of theirs is ignored)."""
        expired = [tag for tag, message in self._unconfirmed.items()
                   if message.deadline is not None
                   and message.deadline <= now]
        messages = []
        for tag in expired:
            message = self._unconfirmed.pop(tag)
            if message.mandatory:
                self._returnable.pop(message.properties.correlation_id, None)
            messages.append(message)
        return messages

    def _on_return(self, channel, method, properties, body):
        self._publisher.returns += 1
        message = self._returnable.get(properties.correlation_id)
        if message is not None:
            message.returned = True

    def _on_confirm(self, frame):
        method = frame.method
        error = None if isinstance(method, pika.spec.Basic.Ack) else \
            PublishNacked('the broker refused (nacked) the message')
        tag = method.delivery_tag
        if method.multiple:
            tags = [t for t in self._unconfirmed if t <= tag]
        else:
            tags = [tag]
        observe = self._publisher.observe_confirm
        now = time.monotonic() if observe is not None else None
        for tag in tags:
            message = self._unconfirmed.pop(tag, None)
            if message is None:
                continue
            if error is not None:
                self._publisher.nacks += 1
            if now is not None and message.published_at is not None:
                observe(now - message.published_at)
            if message.mandatory:
                self._returnable.pop(message.properties.correlation_id, None)
            if message.returned and error is None:
                message.done(message.undeliverable())
            else:
                message.done(error)

    def _on_close(self, channel, reason):
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self.closed = BrokerRefused(
                'publish', reason.reply_code, reason.reply_text)
        else:
            self.closed = PublishNotConfirmed(
                'the channel closed: {!r}'.format(reason))
        self.fail_all(self.closed)

    def fail_all(self, error):
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        self._returnable = {}
        for message in unconfirmed.values():
            message.done(error)


class _SyncConfirmChannel:
    """The same for a connection without an asynchronous core (the
    in-process broker): each publish is confirmed as it is made."""

    def __init__(self, connection, publisher):
        self._publisher = publisher  # counts returns and nacks
        self._channel = connection.channel()
        self._channel.confirm_delivery()
        self.closed = None

    def publish(self, messages):
        channel = self._channel
        observe = self._publisher.observe_confirm
        for message in messages:
            began = time.monotonic() if observe is not None else None
            try:
                channel.basic_publish(
                    message.exchange, message.routing_key, message.body,
                    message.properties, message.mandatory)
            except pika.exceptions.UnroutableError:
                self._publisher.returns += 1
                message.done(message.undeliverable())
            except pika.exceptions.NackError as exc:
                self._publisher.nacks += 1
                message.done(exc)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self.closed = BrokerRefused(
                    'publish', exc.reply_code, exc.reply_text)
                message.done(self.closed)
            except Exception as exc:
                message.done(exc)
            else:
                if began is not None:
                    observe(time.monotonic() - began)
                message.done(None)

    unconfirmed = False  # each message is confirmed as it is published

    def in_flight(self):
        return ()

    def expire(self, now):
        return []

    def fail_all(self, error):
        pass  # nothing is ever left unconfirmed
