"""The embedded in-process AMQP broker behind ``memory://`` URIs.

:func:`connect` returns a :class:`MemoryConnection`, a drop-in for the part of
pika's ``BlockingConnection``/``BlockingChannel`` API that threadko uses: the
same method names, arguments, return values (``pika.frame.Method`` wrapping
``pika.spec`` methods), callback signatures, ``pika.BasicProperties`` and
``pika.exceptions``. Routing and errors follow RabbitMQ::

    connection = connect('/')
    channel = connection.channel()
    channel.queue_declare('work')
    channel.basic_consume('work', on_message)  # (channel, method, props, body)
    channel.basic_publish('', 'work', b'hello')
    connection.process_data_events(time_limit=1)  # runs on_message here

Threads
    Each vhost has one :class:`Broker`; one lock guards all of its state, so
    any number of threads may publish at once, each on its own connection.
    Like pika, a connection belongs to one thread. The broker hands each
    delivery to the consumer's connection as an item in that connection's
    inbox; the callback runs in whichever thread calls
    :meth:`MemoryConnection.process_data_events` (or ``sleep``).
    :meth:`MemoryConnection.add_callback_threadsafe` is the only method other
    threads may call. Besides, each broker has a thread of its own, a
    daemon named ``memory-broker-ttl``, while any queue's head message has
    a TTL: it expires messages on time (see below), and ends when there is
    nothing left to expire or the vhost is deleted (:func:`delete_vhost`
    joins it).

Processes
    The broker lives inside one process. In a process forked from it
    (``gunicorn --preload``, :mod:`multiprocessing`), every vhost starts
    empty: the child's clients reach only the child's own services (an RPC
    call to a service of the parent raises ``UnknownService``), and the
    connections inherited from the parent are closed.

Supported
    Exchanges ``direct``, ``topic``, ``fanout`` and ``headers`` (``x-match``
    ``all``/``any``/``all-with-x``/``any-with-x``), the default exchange and
    the ``amq.*`` exchanges; exclusive, auto-delete and server-named queues;
    ``x-expires``, ``x-message-ttl`` and per-message ``expiration``;
    dead-lettering (``x-dead-letter-exchange``, ``x-dead-letter-routing-key``)
    of expired, rejected (nack/reject without requeue) and ``maxlen``
    messages, with RabbitMQ 3.10's ``x-death`` and ``x-first-death-*``
    headers, ``expiration`` moved to ``original-expiration``, a missing
    dead-letter exchange dropping the message, and cycles without a
    rejection dropped; ``x-max-length`` with the default ``drop-head``
    overflow; ``basic_qos`` prefetch (per consumer, or per channel with
    ``global_qos=True`` as RabbitMQ does); manual and automatic acks,
    nack/reject with or without requeue, ``basic_get``; publisher confirms
    (mandatory + unroutable raises ``UnroutableError``); broker-cancelled
    consumers (``add_on_cancel_callback``); forced connection closes
    (:meth:`Broker.close_all_connections`, :func:`delete_vhost`).

Accepted and ignored
    ``durable`` (nothing survives the process; the flag only takes part in
    equivalence checks), ``prefetch_size``, consumer ``arguments``, message
    ``priority``, and queue/exchange arguments such as ``x-max-priority``,
    ``x-max-length-bytes``, ``x-overflow`` other than ``drop-head`` (the
    queue then has no length limit), ``x-queue-type``, ``x-delivery-limit``
    and ``alternate-exchange`` (no byte or delivery limits, no
    ``reject-publish``, no alternate exchanges); ``CC``/``BCC`` headers (no
    sender-selected distribution: ``routing-keys`` in ``x-death`` is just
    the routing key).

Differences from pika + RabbitMQ
    - Messages expire on time only at the head of their queue (as RabbitMQ
      does for per-message TTL; with a queue TTL the head expires first
      anyway): the expiry thread wakes up at the head's deadline and
      dead-letters or drops it. Unused ``x-expires`` queues are deleted
      lazily, at the next broker operation (the expiry thread's rounds
      included). Once the vhost is deleted, a :class:`Broker` object still
      in use expires messages lazily only.
    - Dead-lettering is immediate and synchronous (RabbitMQ's is
      asynchronous, at most once): a dead-lettered message is in its new
      queue when the call that rejected it returns.
    - Errors surface in the call that caused them, also for ``basic_publish``
      without confirms (pika reports a closed channel at the next call).
    - Once the broker closed a connection, every later use of it or its
      channels raises ``ConnectionClosedByBroker`` (pika raises it once, then
      wrong-state errors); ``close()`` still raises
      ``ConnectionWrongStateError``, as pika does.
    - Deliveries not yet dispatched when a consumer is cancelled are requeued
      (or, for ``auto_ack`` consumers, returned by ``basic_cancel``), as pika
      does.
    - Not implemented: ``start_consuming``/``consume``, ``call_later``,
      ``add_on_return_callback`` (an unroutable mandatory message published
      without confirms is dropped), exchange-to-exchange bindings,
      transactions, ``basic_recover``.
"""

import collections
import contextlib
import dataclasses
import datetime
import enum
import functools
import itertools
import secrets
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pika
from pika import spec, validators
from pika.adapters.blocking_connection import ReturnedMessage
from pika.compat import as_bytes, long
from pika.exceptions import (
    ChannelClosedByBroker, ChannelClosedByClient, ChannelWrongStateError,
    ConnectionClosedByBroker, ConnectionClosedByClient,
    ConnectionWrongStateError, DuplicateConsumerTag, UnroutableError)
from pika.frame import Method

from threadko.utils import fork

__all__ = [
    'Broker', 'MemoryChannel', 'MemoryConnection', 'connect', 'delete_vhost',
    'get_broker', 'topic_matches', 'headers_match',
]

DEFAULT_CLOSE_REASON = 'CONNECTION_FORCED - closed by test'

_REPLY_NAMES = {
    spec.NO_ROUTE: 'NO_ROUTE',
    spec.CONNECTION_FORCED: 'CONNECTION_FORCED',
    spec.ACCESS_REFUSED: 'ACCESS_REFUSED',
    spec.NOT_FOUND: 'NOT_FOUND',
    spec.RESOURCE_LOCKED: 'RESOURCE_LOCKED',
    spec.PRECONDITION_FAILED: 'PRECONDITION_FAILED',
    spec.COMMAND_INVALID: 'COMMAND_INVALID',
}

# Queue arguments RabbitMQ compares when a queue is redeclared; others may
# differ between declarations.
_QUEUE_EQUIVALENCE_ARGUMENTS = (
    'x-expires', 'x-message-ttl', 'x-dead-letter-exchange',
    'x-dead-letter-routing-key', 'x-max-length', 'x-max-length-bytes',
    'x-max-priority', 'x-overflow', 'x-queue-mode', 'x-queue-type',
    'x-single-active-consumer', 'x-delivery-limit',
)
_EXCHANGE_EQUIVALENCE_ARGUMENTS = ('alternate-exchange',)

_STANDARD_EXCHANGES = (
    ('amq.direct', 'direct'),
    ('amq.fanout', 'fanout'),
    ('amq.topic', 'topic'),
    ('amq.headers', 'headers'),
    ('amq.match', 'headers'),
)

_RESOURCE_LOCKED_TEXT = (
    "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It "
    "could be originally declared on another connection or the exclusive "
    "property value does not match that of the original declaration.")


# -- errors the broker raises while handling a method ----------------------

class _BrokerError(Exception):
    """An AMQP error: the broker closes the channel or connection with it."""

    def __init__(self, reply_code, detail):
        self.reply_code = reply_code
        self.reply_text = '{} - {}'.format(_REPLY_NAMES[reply_code], detail)
        super().__init__(self.reply_code, self.reply_text)


class _ChannelError(_BrokerError):
    """A channel exception: only the channel is closed."""


class _ConnectionError(_BrokerError):
    """A connection exception: the whole connection is closed."""


def _flag(value):
    return 'true' if value else 'false'


def _inequivalent(kind, name, vhost, argument, received, current):
    return _ChannelError(
        spec.PRECONDITION_FAILED,
        "inequivalent arg '{}' for {} '{}' in vhost '{}': received {} but "
        "current is {}".format(argument, kind, name, vhost, received, current))


def _describe(arguments, key):
    return "'{}'".format(arguments[key]) if key in arguments else 'none'


# -- routing ----------------------------------------------------------------

def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic exchange binding key matches a routing key.

    Keys are words separated by ``.``; in the binding key ``*`` matches
    exactly one word and ``#`` zero or more words (so ``#`` matches
    everything and ``a.#`` matches ``a``). An empty key has no words.
    """
    pattern = binding_key.split('.') if binding_key else []
    words = routing_key.split('.') if routing_key else []

    @functools.lru_cache(maxsize=None)
    def match(p, w):
        # does pattern[p:] match words[w:]?
        if p == len(pattern):
            return w == len(words)
        if pattern[p] == '#':
            return match(p + 1, w) or (w < len(words) and match(p, w + 1))
        return (w < len(words) and pattern[p] in ('*', words[w])
                and match(p + 1, w + 1))

    return match(0, 0)


def headers_match(binding_arguments: Optional[dict],
                  headers: Optional[dict]) -> bool:
    """Whether a headers exchange binding matches a message's headers.

    ``x-match`` is ``all`` (the default: every binding argument must match)
    or ``any`` (at least one must); binding arguments starting with ``x-``
    are ignored unless ``x-match`` is ``all-with-x`` or ``any-with-x``. A
    binding argument whose value is ``None`` matches on presence alone.
    """
    arguments = binding_arguments or {}
    headers = headers or {}
    mode = arguments.get('x-match', 'all')
    with_x = mode.endswith('-with-x')
    keys = [key for key in arguments
            if key != 'x-match' and (with_x or not key.startswith('x-'))]

    def matches(key):
        expected = arguments[key]
        return key in headers and (
            expected is None or headers[key] == expected)

    if mode.startswith('any'):
        return any(matches(key) for key in keys)
    return all(matches(key) for key in keys)


_VALID_X_MATCH = ('all', 'any', 'all-with-x', 'any-with-x')


@dataclasses.dataclass
class _Binding:
    queue: str
    routing_key: str
    arguments: dict


_MATCHERS = {
    'direct': lambda binding, key, headers: binding.routing_key == key,
    'fanout': lambda binding, key, headers: True,
    'topic': lambda binding, key, headers: topic_matches(
        binding.routing_key, key),
    'headers': lambda binding, key, headers: headers_match(
        binding.arguments, headers),
}


class Exchange:
    """An exchange and its bindings to queues."""

    def __init__(self, name, exchange_type, durable=False, auto_delete=False,
                 internal=False, arguments=None):
        self.name = name
        self.type = exchange_type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        self.bindings: List[_Binding] = []

    def route(self, routing_key: str, headers: Optional[dict]) -> List[str]:
        """Names of the queues a message goes to, each once."""
        matches = _MATCHERS[self.type]
        return list(dict.fromkeys(
            binding.queue for binding in self.bindings
            if matches(binding, routing_key, headers)))

    def bind(self, binding):
        if binding not in self.bindings:
            self.bindings.append(binding)

    def unbind(self, binding):
        if binding in self.bindings:
            self.bindings.remove(binding)

    def unbind_queue(self, queue_name):
        self.bindings = [binding for binding in self.bindings
                         if binding.queue != queue_name]

    def assert_equivalent(self, vhost, exchange_type, durable, auto_delete,
                          internal, arguments):
        """Raise 406 if a redeclaration does not match this exchange."""
        received = {'type': exchange_type, 'durable': durable,
                    'auto_delete': auto_delete, 'internal': internal}
        for attribute, value in received.items():
            current = getattr(self, attribute)
            if value != current:
                if isinstance(value, bool):
                    value, current = _flag(value), _flag(current)
                raise _inequivalent(
                    'exchange', self.name, vhost, attribute,
                    "'{}'".format(value), "'{}'".format(current))
        arguments = arguments or {}
        for key in _EXCHANGE_EQUIVALENCE_ARGUMENTS:
            if arguments.get(key) != self.arguments.get(key):
                raise _inequivalent(
                    'exchange', self.name, vhost, key,
                    _describe(arguments, key), _describe(self.arguments, key))


# -- queues -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Message:
    """A message as stored in a queue. Immutable: every queue and every
    delivery gets its own decoded copy of the properties."""

    exchange: str
    routing_key: str
    body: bytes
    encoded_properties: bytes
    redelivered: bool = False
    expires_at: Optional[float] = None  # time.monotonic() deadline

    def properties(self) -> pika.BasicProperties:
        properties = pika.BasicProperties()
        properties.decode(self.encoded_properties)
        return properties


class _Consumer:
    """A ``basic_consume`` subscription of a channel to a queue."""

    def __init__(self, tag, channel, queue, callback, auto_ack, exclusive,
                 prefetch_count):
        self.tag = tag
        self.channel = channel
        self.queue = queue
        self.callback = callback
        self.auto_ack = auto_ack
        self.exclusive = exclusive
        self.prefetch_count = prefetch_count
        self.unacked = 0
        self.active = True  # False once removed from its queue

    def has_capacity(self):
        if self.auto_ack:
            return True
        if self.prefetch_count and self.unacked >= self.prefetch_count:
            return False
        return self.channel._has_global_capacity()


class Queue:
    """A queue: ready messages in order, and its consumers in round-robin
    order (the next consumer to try is first).

    Messages it drops (expired, over ``x-max-length``) go to its broker's
    :meth:`Broker._dead_letter`; a new head with a deadline is reported to
    :meth:`Broker._schedule_expiry`.
    """

    def __init__(self, name, durable, auto_delete, arguments, owner, now,
                 broker):
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.owner = owner  # the MemoryConnection of an exclusive queue
        self.broker = broker
        self.messages = collections.deque()
        self.consumers: List[_Consumer] = []
        self.message_ttl = self.arguments.get('x-message-ttl')
        self.expires = self.arguments.get('x-expires')
        self.dead_letter_exchange = self.arguments.get(
            'x-dead-letter-exchange')
        self.dead_letter_routing_key = self.arguments.get(
            'x-dead-letter-routing-key')
        # only the default overflow behaviour, drop-head, is implemented
        overflow = self.arguments.get('x-overflow', 'drop-head')
        self.max_length = (self.arguments.get('x-max-length')
                           if overflow == 'drop-head' else None)
        self.last_used = now

    @property
    def exclusive(self):
        return self.owner is not None

    def enqueue(self, message, message_ttl, now):
        ttls = [ttl for ttl in (self.message_ttl, message_ttl)
                if ttl is not None]
        if ttls:
            message = dataclasses.replace(
                message, expires_at=now + min(ttls) / 1000)
        self.messages.append(message)

    def requeue(self, message):
        """Put a message back at the front, marked redelivered."""
        self.messages.appendleft(
            dataclasses.replace(message, redelivered=True))

    def next_expiry(self) -> Optional[float]:
        """When the head message expires (only the head can), or None."""
        return self.messages[0].expires_at if self.messages else None

    def drop_expired(self, now):
        """Take the expired messages off the head and dead-letter them."""
        # expires_at == now still counts as live, so a message with TTL 0
        # reaches a consumer that is ready when it is published
        expired = []
        while (self.messages and self.messages[0].expires_at is not None
               and self.messages[0].expires_at < now):
            expired.append(self.messages.popleft())
        if expired:
            self.broker._dead_letter(self, expired, 'expired', now)
            self.broker._schedule_expiry(self)

    def drop_overflow(self, now):
        """Drop messages from the head beyond ``x-max-length`` and
        dead-letter them."""
        dropped = []
        while (self.max_length is not None
               and len(self.messages) > self.max_length):
            dropped.append(self.messages.popleft())
        if dropped:
            self.broker._dead_letter(self, dropped, 'maxlen', now)
            self.broker._schedule_expiry(self)

    def pop(self, now) -> Optional[_Message]:
        self.drop_expired(now)
        return self.messages.popleft() if self.messages else None

    def message_count(self, now):
        self.drop_expired(now)
        return len(self.messages)

    def next_consumer(self) -> Optional[_Consumer]:
        """The next consumer in turn that can take a message; it moves to
        the back of the line."""
        for index, consumer in enumerate(self.consumers):
            if consumer.has_capacity():
                self.consumers.append(self.consumers.pop(index))
                return consumer
        return None

    def has_exclusive_consumer(self):
        return any(consumer.exclusive for consumer in self.consumers)

    def is_expired(self, now):
        """Unused (no consumers, no get, no redeclare) for ``x-expires``."""
        return (self.expires is not None and not self.consumers
                and now - self.last_used >= self.expires / 1000)

    def assert_equivalent(self, vhost, durable, auto_delete, arguments):
        """Raise 406 if a redeclaration does not match this queue."""
        for attribute, value in (('durable', durable),
                                 ('auto_delete', auto_delete)):
            current = getattr(self, attribute)
            if value != current:
                raise _inequivalent(
                    'queue', self.name, vhost, attribute,
                    "'{}'".format(_flag(value)), "'{}'".format(_flag(current)))
        arguments = arguments or {}
        for key in _QUEUE_EQUIVALENCE_ARGUMENTS:
            if arguments.get(key) != self.arguments.get(key):
                raise _inequivalent(
                    'queue', self.name, vhost, key,
                    _describe(arguments, key), _describe(self.arguments, key))


@dataclasses.dataclass
class _Unacked:
    """A message delivered on a channel and not yet acked."""

    message: _Message
    queue: Queue
    consumer: Optional[_Consumer]  # None for basic_get


def _check_ttl_argument(queue, vhost, arguments, key, minimum):
    value = arguments.get(key)
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int)
            or value < minimum):
        raise _ChannelError(
            spec.PRECONDITION_FAILED,
            "invalid arg '{}' for queue '{}' in vhost '{}': {!r}".format(
                key, queue, vhost, value))


def _message_ttl(expiration):
    """Per-message TTL in ms from ``properties.expiration``, or None."""
    if expiration is None:
        return None
    try:
        ttl = int(expiration)
    except ValueError:
        ttl = -1
    if ttl < 0:
        raise _ChannelError(
            spec.PRECONDITION_FAILED,
            "invalid expiration '{}'".format(expiration))
    return ttl


# -- dead letters -----------------------------------------------------------

def _sorted_table(table):
    # RabbitMQ sorts a field table by key whenever it sets a value in it
    return dict(sorted(table.items()))


def _dead_letter_properties(message, reason, queue_name, when):
    """The properties of ``message`` dead-lettered from ``queue_name``, as
    RabbitMQ 3.10 makes them: no ``expiration`` (it moves to the death's
    ``original-expiration``), and the death recorded in ``x-death``.

    ``x-death`` lists the deaths most recent first, one entry per queue
    and reason: dying again the same way only counts up that entry's
    ``count`` (its other fields keep their first values) and moves it to
    the front. The first death also sets ``x-first-death-*``.
    """
    properties = message.properties()
    headers = dict(properties.headers or {})
    death = {'count': long(1), 'reason': reason, 'queue': queue_name,
             'time': when, 'exchange': message.exchange,
             'routing-keys': [message.routing_key]}
    if properties.expiration is not None:
        death['original-expiration'] = properties.expiration
    if 'x-death' not in headers:
        # the first entry keeps the field order above, as in RabbitMQ
        deaths = [death]
        headers['x-first-death-reason'] = reason
        headers['x-first-death-queue'] = queue_name
        headers['x-first-death-exchange'] = message.exchange
    else:
        deaths = headers['x-death']
        deaths = list(deaths) if isinstance(deaths, list) else []
        for index, old in enumerate(deaths):
            if (isinstance(old, dict) and old.get('queue') == queue_name
                    and old.get('reason') == reason):
                count = old.get('count')
                death = dict(old, count=long(
                    count + 1 if isinstance(count, int)
                    and not isinstance(count, bool) and count >= 0 else 1))
                del deaths[index]
                break
        deaths.insert(0, _sorted_table(death))
    headers['x-death'] = deaths
    properties.headers = _sorted_table(headers)
    properties.expiration = None
    return properties


def _is_death_cycle(queue_name, deaths):
    """Whether dead-lettering to ``queue_name`` closes a cycle with no
    rejection in it (RabbitMQ drops the message rather than loop)."""
    for index, death in enumerate(deaths):
        if isinstance(death, dict) and death.get('queue') == queue_name:
            return all(isinstance(earlier, dict)
                       and earlier.get('reason') != 'rejected'
                       for earlier in deaths[:index + 1])
    return False


# -- the broker -------------------------------------------------------------

class Broker:
    """All exchanges, queues and connections of one vhost.

    Get one with :func:`get_broker`. Besides :meth:`connect` and
    :meth:`close_all_connections`, its public methods are read-only views
    for tests. Everything else is driven by :class:`MemoryChannel`, under
    the broker lock.

    Messages with a TTL expire on time, by the broker's expiry thread
    (``memory-broker-ttl``, a daemon): it runs while a queue's head message
    has a deadline, and :func:`delete_vhost` stops it.
    """

    def __init__(self, vhost='/'):
        self.vhost = vhost
        self._lock = threading.RLock()
        self._deleted = False  # by delete_vhost: no more expiry thread
        self._reset_expiry_timer()
        self._clear()

    def _reset_expiry_timer(self):
        # all guarded by the broker lock
        self._expiry_cond = threading.Condition(self._lock)
        self._expiry_timer: Optional[threading.Thread] = None
        self._expiry_wake_at: Optional[float] = None  # its next deadline

    def _clear(self):
        self._exchanges: Dict[str, Exchange] = {
            '': Exchange('', 'direct', durable=True)}
        for name, exchange_type in _STANDARD_EXCHANGES:
            self._exchanges[name] = Exchange(name, exchange_type, durable=True)
        self._queues: Dict[str, Queue] = {}
        self._connections: List['MemoryConnection'] = []

    def _reset_after_fork(self):
        """In a forked child: start empty, with a new lock (the old one
        may be held by a thread that stayed in the parent). The inherited
        connections are closed, without running anything of theirs."""
        self._lock = threading.RLock()
        self._reset_expiry_timer()  # the thread stayed in the parent
        reason = ConnectionClosedByBroker(
            spec.CONNECTION_FORCED,
            'CONNECTION_FORCED - the process was forked; this connection '
            'belongs to the parent process')
        for connection in self._connections:
            connection._forget_after_fork(reason)
        self._clear()

    def __repr__(self):
        return '<Broker vhost={!r}>'.format(self.vhost)

    def connect(self) -> 'MemoryConnection':
        """Open a new connection to this vhost."""
        with self._lock:
            connection = MemoryConnection(self)
            self._connections.append(connection)
            return connection

    def close_all_connections(self, reason=DEFAULT_CLOSE_REASON):
        """Close every connection, as ``rabbitmqctl close_all_connections``.

        Unacked messages are requeued and exclusive queues deleted; any
        later use of the connections or their channels, including a
        ``process_data_events`` call blocked right now, raises
        ``ConnectionClosedByBroker(320, reason)``.
        """
        with self._lock:
            now = time.monotonic()
            for connection in list(self._connections):
                self._close_connection(
                    connection,
                    ConnectionClosedByBroker(spec.CONNECTION_FORCED, reason),
                    now)

    # timely expiry

    def _schedule_expiry(self, queue):
        """Make sure the expiry thread wakes up when the head of ``queue``
        expires (called whenever a queue gets a new head)."""
        deadline = queue.next_expiry()
        if deadline is None or self._deleted:
            return
        if self._expiry_timer is None:
            self._expiry_wake_at = deadline
            self._expiry_timer = threading.Thread(
                target=self._run_expiry_timer, name='memory-broker-ttl',
                daemon=True)
            self._expiry_timer.start()
        elif self._expiry_wake_at is None or deadline < self._expiry_wake_at:
            self._expiry_wake_at = deadline
            self._expiry_cond.notify()

    def _run_expiry_timer(self):
        # the expiry thread: at each deadline, expire (dead-letter or drop)
        # the expired head messages of every queue, as the next broker
        # operation would; exits when no head message has a deadline
        with self._lock:
            try:
                while not self._deleted:
                    now = time.monotonic()
                    self._delete_expired_queues(now)
                    for queue in list(self._queues.values()):
                        queue.drop_expired(now)
                    deadlines = [queue.next_expiry()
                                 for queue in self._queues.values()]
                    deadlines = [deadline for deadline in deadlines
                                 if deadline is not None]
                    if not deadlines:
                        break
                    self._expiry_wake_at = min(deadlines)
                    timeout = self._expiry_wake_at - time.monotonic()
                    if timeout > 0:
                        self._expiry_cond.wait(timeout)
            finally:
                # the next message with a TTL starts a new thread
                self._expiry_timer = None
                self._expiry_wake_at = None

    def _stop_expiry_timer(self):
        """Stop the expiry thread for good (the vhost is deleted) and wait
        for it to end; expired messages are then only dropped lazily."""
        with self._lock:
            self._deleted = True
            timer = self._expiry_timer
            self._expiry_cond.notify_all()
        if timer is not None and timer is not threading.current_thread():
            timer.join()

    # read-only views for tests

    def queue_names(self) -> List[str]:
        """Names of the existing queues."""
        with self._view():
            return list(self._queues)

    def exchange_names(self) -> List[str]:
        """Names of the existing exchanges, including the default ``''``."""
        with self._view():
            return list(self._exchanges)

    def message_count(self, queue: str) -> int:
        """Messages ready for delivery in ``queue`` (not counting unacked).

        :raises KeyError: no such queue
        """
        with self._view() as now:
            return self._queues[queue].message_count(now)

    def unacked_count(self, queue: str) -> int:
        """Messages from ``queue`` delivered and not yet acked.

        :raises KeyError: no such queue
        """
        with self._view():
            target = self._queues[queue]
            return sum(
                1 for connection in self._connections
                for channel in connection._channels.values()
                for entry in channel._unacked.values()
                if entry.queue is target)

    def consumer_count(self, queue: str) -> int:
        """Consumers of ``queue``.

        :raises KeyError: no such queue
        """
        with self._view():
            return len(self._queues[queue].consumers)

    def bindings(self, queue: str) -> List[Tuple[str, str, dict]]:
        """``(exchange, routing_key, arguments)`` of the bindings of
        ``queue``, leaving out its implicit binding to the default exchange.

        :raises KeyError: no such queue
        """
        with self._view():
            if queue not in self._queues:
                raise KeyError(queue)
            return [(exchange.name, binding.routing_key,
                     dict(binding.arguments))
                    for exchange in self._exchanges.values()
                    for binding in exchange.bindings if binding.queue == queue]

    def connection_count(self) -> int:
        """Open connections."""
        with self._lock:
            return len(self._connections)

    @contextlib.contextmanager
    def _view(self):
        with self._lock:
            now = time.monotonic()
            self._delete_expired_queues(now)
            yield now

    # the frame every channel method runs in

    @contextlib.contextmanager
    def _operation(self, channel):
        """Run one AMQP method of ``channel`` under the broker lock.

        Yields the current time. A ``_ChannelError`` closes the channel, a
        ``_ConnectionError`` the connection, and either surfaces as pika's
        exception, as RabbitMQ and pika do.
        """
        with self._lock:
            channel._raise_if_unusable()
            now = time.monotonic()
            self._delete_expired_queues(now)
            try:
                yield now
            except _ChannelError as error:
                args = error.reply_code, error.reply_text
                self._close_channel(channel, ChannelClosedByBroker(*args), now)
                raise ChannelClosedByBroker(*args) from None
            except _ConnectionError as error:
                args = error.reply_code, error.reply_text
                self._close_connection(
                    channel.connection, ConnectionClosedByBroker(*args), now)
                raise ConnectionClosedByBroker(*args) from None

    # lookups

    def _exchange(self, name) -> Exchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            raise _ChannelError(spec.NOT_FOUND, "no exchange '{}' in vhost "
                                "'{}'".format(name, self.vhost))
        return exchange

    def _queue(self, name, connection) -> Queue:
        """The queue ``connection`` wants to use: 404 if missing, 405 if
        another connection's exclusive queue."""
        queue = self._queues.get(name)
        if queue is None:
            raise _ChannelError(spec.NOT_FOUND, "no queue '{}' in vhost '{}'"
                                .format(name, self.vhost))
        self._check_exclusive_access(queue, connection)
        return queue

    def _check_exclusive_access(self, queue, connection, strict=False):
        # strict: the caller declares the queue exclusive, so a shared
        # queue of the same name is locked to it too
        if queue.owner is connection or (queue.owner is None and not strict):
            return
        raise _ChannelError(spec.RESOURCE_LOCKED, _RESOURCE_LOCKED_TEXT.format(
            queue.name, self.vhost))

    def _check_not_default(self, name):
        if name == '':
            raise _ChannelError(
                spec.ACCESS_REFUSED,
                'operation not permitted on the default exchange')

    # exchanges

    def _declare_exchange(self, name, exchange_type, passive, durable,
                          auto_delete, internal, arguments):
        self._check_not_default(name)
        if passive:
            self._exchange(name)
            return
        if exchange_type not in _MATCHERS:
            raise _ConnectionError(
                spec.COMMAND_INVALID,
                "unknown exchange type '{}'".format(exchange_type))
        exchange = self._exchanges.get(name)
        if exchange is None:
            if name.startswith('amq.'):
                raise _ChannelError(
                    spec.ACCESS_REFUSED,
                    "exchange name '{}' contains reserved prefix 'amq.*'"
                    .format(name))
            self._exchanges[name] = Exchange(
                name, exchange_type, durable, auto_delete, internal, arguments)
        else:
            exchange.assert_equivalent(self.vhost, exchange_type, durable,
                                       auto_delete, internal, arguments)

    def _delete_exchange(self, name, if_unused):
        self._check_not_default(name)
        if name.startswith('amq.'):
            raise _ChannelError(
                spec.ACCESS_REFUSED,
                "deletion of system exchange '{}' in vhost '{}' refused"
                .format(name, self.vhost))
        exchange = self._exchanges.get(name)
        if exchange is None:
            return  # deleting is idempotent, as in RabbitMQ
        if if_unused and exchange.bindings:
            raise _ChannelError(spec.PRECONDITION_FAILED,
                                "exchange '{}' in vhost '{}' in use"
                                .format(name, self.vhost))
        del self._exchanges[name]

    def _bind(self, connection, queue_name, exchange_name, routing_key,
              arguments):
        self._check_not_default(exchange_name)
        exchange = self._exchange(exchange_name)
        queue = self._queue(queue_name, connection)
        arguments = dict(arguments or {})
        if (exchange.type == 'headers'
                and arguments.get('x-match', 'all') not in _VALID_X_MATCH):
            raise _ChannelError(
                spec.PRECONDITION_FAILED,
                "Invalid x-match field value '{}'; expected all, any, "
                "all-with-x, or any-with-x".format(arguments['x-match']))
        exchange.bind(_Binding(queue.name, routing_key, arguments))

    def _unbind(self, connection, queue_name, exchange_name, routing_key,
                arguments):
        self._check_not_default(exchange_name)
        exchange = self._exchange(exchange_name)
        queue = self._queue(queue_name, connection)
        exchange.unbind(
            _Binding(queue.name, routing_key, dict(arguments or {})))
        self._auto_delete_exchange(exchange)

    def _auto_delete_exchange(self, exchange):
        if exchange.auto_delete and not exchange.bindings:
            self._exchanges.pop(exchange.name, None)

    # queues

    def _declare_queue(self, connection, name, passive, durable, exclusive,
                       auto_delete, arguments, now) -> Queue:
        if passive:
            queue = self._queue(name, connection)
        else:
            queue = self._queues.get(name) if name else None
            if queue is None:
                queue = self._create_queue(
                    connection, name, durable, exclusive, auto_delete,
                    arguments, now)
            else:
                self._check_exclusive_access(
                    queue, connection, strict=exclusive)
                queue.assert_equivalent(self.vhost, durable, auto_delete,
                                        arguments)
        queue.last_used = now
        return queue

    def _create_queue(self, connection, name, durable, exclusive, auto_delete,
                      arguments, now):
        if not name:
            name = 'amq.gen-' + secrets.token_urlsafe(16)
        elif name.startswith('amq.'):
            raise _ChannelError(
                spec.ACCESS_REFUSED,
                "queue name '{}' contains reserved prefix 'amq.*'"
                .format(name))
        arguments = arguments or {}
        _check_ttl_argument(name, self.vhost, arguments, 'x-expires', 1)
        _check_ttl_argument(name, self.vhost, arguments, 'x-message-ttl', 0)
        _check_ttl_argument(name, self.vhost, arguments, 'x-max-length', 0)
        if ('x-dead-letter-routing-key' in arguments
                and 'x-dead-letter-exchange' not in arguments):
            raise _ChannelError(
                spec.PRECONDITION_FAILED,
                "invalid arg 'x-dead-letter-routing-key' for queue '{}' in "
                "vhost '{}': routing_key_but_no_dlx_defined".format(
                    name, self.vhost))
        queue = Queue(name, durable, auto_delete, arguments,
                      connection if exclusive else None, now, self)
        self._queues[name] = queue
        return queue

    def _delete_queue(self, queue, now) -> int:
        """Delete a queue: unbind it, cancel its consumers (telling their
        channels), drop its messages. Returns how many were ready."""
        del self._queues[queue.name]
        for exchange in list(self._exchanges.values()):
            if any(binding.queue == queue.name
                   for binding in exchange.bindings):
                exchange.unbind_queue(queue.name)
                self._auto_delete_exchange(exchange)
        for consumer in list(queue.consumers):
            consumer.active = False
            consumer.channel._connection._post(_ConsumerCancelled(consumer))
        queue.consumers.clear()
        count = queue.message_count(now)
        queue.messages.clear()
        return count

    def _delete_expired_queues(self, now):
        for queue in [queue for queue in self._queues.values()
                      if queue.is_expired(now)]:
            self._delete_queue(queue, now)

    def _remove_consumer(self, consumer, now):
        """Take a consumer off its queue; an auto-delete queue goes with its
        last consumer."""
        if not consumer.active:
            return
        consumer.active = False
        queue = consumer.queue
        queue.consumers.remove(consumer)
        if not queue.consumers:
            queue.last_used = now
            if queue.auto_delete and self._queues.get(queue.name) is queue:
                self._delete_queue(queue, now)

    # messages

    def _publish(self, exchange_name, routing_key, body, properties,
                 encoded_properties, now) -> bool:
        """Route and enqueue a message; False if it reached no queue."""
        exchange = self._exchange(exchange_name)
        if exchange.internal:
            raise _ChannelError(
                spec.ACCESS_REFUSED,
                "cannot publish to internal exchange '{}' in vhost '{}'"
                .format(exchange_name, self.vhost))
        message_ttl = _message_ttl(properties.expiration)
        names = self._route(exchange, routing_key, properties.headers)
        message = _Message(
            exchange_name, routing_key, body, encoded_properties)
        for name in names:
            self._enqueue(self._queues[name], message, message_ttl, now)
        return bool(names)

    def _route(self, exchange, routing_key, headers) -> List[str]:
        if exchange.name == '':
            return [routing_key] if routing_key in self._queues else []
        return exchange.route(routing_key, headers)

    def _enqueue(self, queue, message, message_ttl, now):
        queue.enqueue(message, message_ttl, now)
        self._dispatch(queue, now)
        queue.drop_overflow(now)

    def _dispatch(self, queue, now):
        """Hand ready messages to the queue's consumers, round-robin, while
        they have prefetch capacity."""
        while queue.message_count(now):
            consumer = queue.next_consumer()
            if consumer is None:
                break
            consumer.channel._deliver(consumer, queue.messages.popleft())
        self._schedule_expiry(queue)

    def _requeue(self, entries: List[_Unacked], now):
        """Put unacked messages back at the front of their queues, in their
        original order; messages of deleted queues are dropped."""
        queues = {}
        for entry in reversed(entries):
            if self._queues.get(entry.queue.name) is entry.queue:
                entry.queue.requeue(entry.message)
                queues[entry.queue.name] = entry.queue
        for queue in queues.values():
            # as RabbitMQ: over x-max-length, requeued messages go first
            queue.drop_overflow(now)
            self._dispatch(queue, now)

    def _reject(self, entries: List[_Unacked], now):
        """Dead-letter rejected messages (nack/reject without requeue);
        messages of deleted queues are dropped."""
        for entry in entries:
            if self._queues.get(entry.queue.name) is entry.queue:
                self._dead_letter(entry.queue, [entry.message], 'rejected',
                                  now)

    def _dead_letter(self, queue, messages, reason, now):
        """Republish messages ``queue`` dropped (``reason``: ``expired``,
        ``rejected`` or ``maxlen``) to its ``x-dead-letter-exchange``, with
        its ``x-dead-letter-routing-key`` or their own routing key. Without
        a dead-letter exchange, or if it does not exist, they are gone."""
        if queue.dead_letter_exchange is None:
            return
        exchange = self._exchanges.get(queue.dead_letter_exchange)
        if exchange is None:
            return
        when = datetime.datetime.fromtimestamp(int(time.time()),
                                               datetime.timezone.utc)
        for message in messages:
            routing_key = queue.dead_letter_routing_key
            if routing_key is None:
                routing_key = message.routing_key
            properties = _dead_letter_properties(message, reason, queue.name,
                                                 when)
            names = self._route(exchange, routing_key, properties.headers)
            if reason != 'rejected':
                names = [name for name in names if not _is_death_cycle(
                    name, properties.headers['x-death'])]
            dead = _Message(exchange.name, routing_key, message.body,
                            b''.join(properties.encode()))
            for name in names:
                self._enqueue(self._queues[name], dead, None, now)

    # closing

    def _close_channel(self, channel, reason, now):
        """Close a channel: cancel its consumers, requeue its unacked
        messages, drop its undispatched deliveries."""
        channel._close_reason = reason
        for consumer in list(channel._consumers.values()):
            self._remove_consumer(consumer, now)
        channel._consumers.clear()
        entries = list(channel._unacked.values())
        channel._unacked.clear()
        channel.connection._channels.pop(channel.channel_number, None)
        channel.connection._discard(channel)
        self._requeue(entries, now)

    def _close_connection(self, connection, reason, now):
        """Close a connection: its channels, then its exclusive queues."""
        for channel in list(connection._channels.values()):
            self._close_channel(channel, reason, now)
        for queue in [queue for queue in self._queues.values()
                      if queue.owner is connection]:
            self._delete_queue(queue, now)
        if connection in self._connections:
            self._connections.remove(connection)
        connection._mark_closed(reason)


# -- connection inbox items -------------------------------------------------

class _Delivery:
    """A message for a consumer, to be passed to its callback."""

    def __init__(self, consumer, method, message):
        self.channel = consumer.channel
        self.consumer = consumer
        self.method = method
        self.message = message

    def run(self):
        self.channel._run_delivery(self)


class _ConsumerCancelled:
    """The broker cancelled a consumer (its queue was deleted)."""

    def __init__(self, consumer):
        self.channel = consumer.channel
        self.consumer = consumer

    def run(self):
        self.channel._run_cancelled(self.consumer)


class _ThreadsafeCallback:
    """A callback from ``add_callback_threadsafe``."""

    channel = None

    def __init__(self, callback):
        self.callback = callback

    def run(self):
        self.callback()


# -- the client API ---------------------------------------------------------

class MemoryConnection:
    """An in-process stand-in for ``pika.BlockingConnection``.

    Get one with :func:`connect`. Like pika's, it belongs to one thread;
    only :meth:`add_callback_threadsafe` may be called from others.
    """

    def __init__(self, broker: Broker):
        self._broker = broker
        # the inbox and the close reason are guarded by _cond; the broker
        # lock may be held while taking _cond, never the other way round
        self._cond = threading.Condition()
        self._inbox = collections.deque()
        self._close_reason = None
        self._channels: Dict[int, MemoryChannel] = {}  # guarded by broker lock
        self._channel_numbers = itertools.count(1)
        self._dispatch_depth = 0

    def __repr__(self):
        state = 'open' if self.is_open else 'closed'
        return '<MemoryConnection vhost={!r} {}>'.format(
            self._broker.vhost, state)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.is_open:
            self.close()

    @property
    def is_open(self) -> bool:
        """True until the connection is closed by the client or broker."""
        return self._close_reason is None

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed by the client or broker."""
        return self._close_reason is not None

    def channel(self, channel_number: Optional[int] = None) -> 'MemoryChannel':
        """Open a channel.

        :param channel_number: a free channel number; by default the next one
        :raises ConnectionClosedByBroker: the broker closed the connection
        :raises ConnectionWrongStateError: the connection was closed
        """
        with self._broker._lock:
            self._raise_if_closed('Channel allocation requires an open '
                                  'connection: {!r}'.format(self))
            if not channel_number:
                channel_number = next(self._channel_numbers)
                while channel_number in self._channels:
                    channel_number = next(self._channel_numbers)
            elif channel_number in self._channels:
                raise ValueError(
                    'channel {} is already open'.format(channel_number))
            channel = MemoryChannel(self, channel_number)
            self._channels[channel_number] = channel
            return channel

    def close(self, reply_code: int = 200,
              reply_text: str = 'Normal shutdown'):
        """Close the connection and its channels: their unacked messages are
        requeued, consumers cancelled, exclusive queues deleted.

        :raises ConnectionWrongStateError: already closed (by either side)
        """
        with self._broker._lock:
            if not self.is_open:
                raise ConnectionWrongStateError(
                    'MemoryConnection.close({}, {!r}) called on closed '
                    'connection.'.format(reply_code, reply_text))
            self._broker._close_connection(
                self, ConnectionClosedByClient(reply_code, reply_text),
                time.monotonic())

    def process_data_events(self, time_limit: Optional[float] = 0):
        """Run pending consumer callbacks and threadsafe callbacks, here.

        Waits up to ``time_limit`` seconds for the first event (``None``:
        until one arrives), then runs the events already queued and
        returns. Called from inside a callback it only waits, as in pika.

        :raises ConnectionClosedByBroker: the broker closed the connection
        :raises ConnectionWrongStateError: the client closed the connection
        """
        self._raise_if_closed()
        nested = self._dispatch_depth > 0

        def ready():
            return (self._close_reason is not None
                    or (self._inbox and not nested))

        with self._cond:
            if time_limit is None:
                self._cond.wait_for(ready)
            elif time_limit > 0:
                self._cond.wait_for(ready, timeout=time_limit)
            pending = len(self._inbox)
        self._raise_if_closed()
        if nested:
            return
        self._dispatch_depth += 1
        try:
            for _ in range(pending):
                with self._cond:
                    if not self._inbox:
                        break
                    item = self._inbox.popleft()
                item.run()
        finally:
            self._dispatch_depth -= 1

    def sleep(self, duration: float):
        """Sleep ``duration`` seconds while processing events, like pika."""
        assert duration >= 0, duration
        deadline = time.monotonic() + duration
        time_limit = duration
        while True:
            self.process_data_events(time_limit)
            time_limit = deadline - time.monotonic()
            if time_limit <= 0:
                break

    def add_callback_threadsafe(self, callback: Callable[[], Any]):
        """Ask for ``callback()`` to run in the connection's thread, within
        its next ``process_data_events``. Safe to call from any thread.

        :raises ConnectionWrongStateError: the connection is closed
        """
        validators.require_callback(callback)
        with self._cond:
            if self._close_reason is not None:
                raise ConnectionWrongStateError(
                    'BlockingConnection.add_callback_threadsafe() called on '
                    'closed or closing connection.')
            self._inbox.append(_ThreadsafeCallback(callback))
            self._cond.notify_all()

    # used by the broker and channels

    def _raise_if_closed(self, message=None):
        reason = self._close_reason
        if isinstance(reason, ConnectionClosedByBroker):
            raise ConnectionClosedByBroker(
                reason.reply_code, reason.reply_text)
        if reason is not None and message:
            raise ConnectionWrongStateError(message)
        if reason is not None:
            raise ConnectionWrongStateError()

    def _post(self, item):
        with self._cond:
            if self._close_reason is None:
                self._inbox.append(item)
                self._cond.notify_all()

    def _take_deliveries(self, consumer) -> List[_Delivery]:
        """Remove and return the undispatched deliveries for ``consumer``."""
        with self._cond:
            taken = [item for item in self._inbox
                     if isinstance(item, _Delivery)
                     and item.consumer is consumer]
            self._inbox = collections.deque(
                item for item in self._inbox if item not in taken)
            return taken

    def _discard(self, channel):
        """Drop the undispatched items of a closed channel."""
        with self._cond:
            self._inbox = collections.deque(
                item for item in self._inbox if item.channel is not channel)

    def _mark_closed(self, reason):
        with self._cond:
            self._close_reason = reason
            self._inbox.clear()
            self._cond.notify_all()

    def _forget_after_fork(self, reason):
        # in a forked child, from Broker._reset_after_fork: new lock, no
        # callbacks run; every later use raises
        self._cond = threading.Condition()
        self._inbox = collections.deque()
        for channel in self._channels.values():
            channel._close_reason = reason
        self._channels = {}
        self._close_reason = reason


class MemoryChannel:
    """An in-process stand-in for pika's ``BlockingChannel``.

    Every method takes the broker lock for its whole run. Broker errors
    close the channel and raise ``ChannelClosedByBroker`` (or close the
    connection and raise ``ConnectionClosedByBroker``); later use of a
    closed channel raises ``ChannelWrongStateError``.
    """

    def __init__(self, connection: MemoryConnection, channel_number: int):
        self._connection = connection
        self._broker = connection._broker
        self._number = channel_number
        self._close_reason = None
        self._confirming = False
        self._on_cancel_callbacks = []
        # guarded by the broker lock
        self._consumers: Dict[str, _Consumer] = {}
        self._delivery_tags = itertools.count(1)
        self._unacked: Dict[int, _Unacked] = {}  # in delivery tag order
        self._prefetch_count = 0  # for consumers started from now on
        self._global_prefetch_count = 0  # for all consumers together

    def __repr__(self):
        return '<MemoryChannel number={} {!r}>'.format(
            self._number, self._connection)

    def __int__(self):
        return self._number

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.is_open:
            self.close()

    @property
    def channel_number(self) -> int:
        """The channel's number within its connection."""
        return self._number

    @property
    def connection(self) -> MemoryConnection:
        """The connection the channel belongs to."""
        return self._connection

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection is closed."""
        return self._close_reason is None

    @property
    def is_closed(self) -> bool:
        """True once the channel or its connection is closed."""
        return self._close_reason is not None

    @property
    def consumer_tags(self) -> List[str]:
        """Tags of the channel's consumers."""
        return list(self._consumers)

    def close(self, reply_code: int = 0, reply_text: str = 'Normal shutdown'):
        """Close the channel: cancel its consumers and requeue its unacked
        messages."""
        with self._broker._operation(self) as now:
            self._broker._close_channel(
                self, ChannelClosedByClient(reply_code, reply_text), now)

    # exchanges

    def exchange_declare(self, exchange: str, exchange_type='direct',
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: Optional[dict] = None) -> Method:
        """Declare an exchange, or check it exists if ``passive``.

        :returns: Method frame wrapping ``spec.Exchange.DeclareOk``
        :raises ChannelClosedByBroker: 404 (passive, missing), 406 (exists
            with other type or flags), 403 (default exchange, ``amq.``)
        :raises ConnectionClosedByBroker: 503, unknown exchange type
        """
        validators.require_string(exchange, 'exchange')
        if isinstance(exchange_type, enum.Enum):
            exchange_type = exchange_type.value
        with self._broker._operation(self):
            self._broker._declare_exchange(
                exchange, exchange_type, passive, durable, auto_delete,
                internal, arguments)
        return Method(self._number, spec.Exchange.DeclareOk())

    def exchange_delete(self, exchange: Optional[str] = None,
                        if_unused: bool = False) -> Method:
        """Delete an exchange (a missing one is not an error).

        :returns: Method frame wrapping ``spec.Exchange.DeleteOk``
        :raises ChannelClosedByBroker: 406 (``if_unused`` and has bindings),
            403 (default or ``amq.*`` exchange)
        """
        with self._broker._operation(self):
            self._broker._delete_exchange(exchange or '', if_unused)
        return Method(self._number, spec.Exchange.DeleteOk())

    # queues

    def queue_declare(self, queue: str, passive: bool = False,
                      durable: bool = False, exclusive: bool = False,
                      auto_delete: bool = False,
                      arguments: Optional[dict] = None) -> Method:
        """Declare a queue (``''``: a server-named ``amq.gen-...`` queue), or
        check it exists if ``passive``.

        :returns: Method frame wrapping ``spec.Queue.DeclareOk`` (``queue``,
            ``message_count``, ``consumer_count``)
        :raises ChannelClosedByBroker: 404 (passive, missing), 405 (another
            connection's exclusive queue), 406 (exists with other flags or
            arguments), 403 (``amq.`` name)
        """
        validators.require_string(queue, 'queue')
        with self._broker._operation(self) as now:
            declared = self._broker._declare_queue(
                self._connection, queue, passive, durable, exclusive,
                auto_delete, arguments, now)
            declare_ok = spec.Queue.DeclareOk(
                declared.name, declared.message_count(now),
                len(declared.consumers))
        return Method(self._number, declare_ok)

    def queue_bind(self, queue: str, exchange: str,
                   routing_key: Optional[str] = None,
                   arguments: Optional[dict] = None) -> Method:
        """Bind a queue to an exchange (``routing_key`` defaults to the
        queue name, as in pika).

        :returns: Method frame wrapping ``spec.Queue.BindOk``
        :raises ChannelClosedByBroker: 404 (queue or exchange missing), 405,
            403 (default exchange)
        """
        validators.require_string(queue, 'queue')
        validators.require_string(exchange, 'exchange')
        if routing_key is None:
            routing_key = queue
        with self._broker._operation(self):
            self._broker._bind(self._connection, queue, exchange, routing_key,
                               arguments)
        return Method(self._number, spec.Queue.BindOk())

    def queue_unbind(self, queue: str, exchange: str,
                     routing_key: Optional[str] = None,
                     arguments: Optional[dict] = None) -> Method:
        """Remove a binding (a missing binding is not an error).

        :returns: Method frame wrapping ``spec.Queue.UnbindOk``
        :raises ChannelClosedByBroker: 404 (queue or exchange missing), 405
        """
        if routing_key is None:
            routing_key = queue
        with self._broker._operation(self):
            self._broker._unbind(self._connection, queue, exchange,
                                 routing_key, arguments)
        return Method(self._number, spec.Queue.UnbindOk())

    def queue_delete(self, queue: str, if_unused: bool = False,
                     if_empty: bool = False) -> Method:
        """Delete a queue (a missing one is not an error); its consumers are
        cancelled by the broker.

        :returns: Method frame wrapping ``spec.Queue.DeleteOk``
            (``message_count``: ready messages dropped)
        :raises ChannelClosedByBroker: 406 (``if_unused``/``if_empty`` not
            met), 405
        """
        with self._broker._operation(self) as now:
            target = self._broker._queues.get(queue)
            if target is None:
                return Method(self._number, spec.Queue.DeleteOk(0))
            self._broker._check_exclusive_access(target, self._connection)
            where = "queue '{}' in vhost '{}'".format(
                queue, self._broker.vhost)
            if if_unused and target.consumers:
                raise _ChannelError(spec.PRECONDITION_FAILED,
                                    where + ' in use')
            if if_empty and target.message_count(now):
                raise _ChannelError(spec.PRECONDITION_FAILED,
                                    where + ' is not empty')
            count = self._broker._delete_queue(target, now)
        return Method(self._number, spec.Queue.DeleteOk(count))

    def queue_purge(self, queue: str) -> Method:
        """Drop a queue's ready messages (unacked ones are kept).

        :returns: Method frame wrapping ``spec.Queue.PurgeOk``
        :raises ChannelClosedByBroker: 404, 405
        """
        with self._broker._operation(self) as now:
            target = self._broker._queue(queue, self._connection)
            count = target.message_count(now)
            target.messages.clear()
        return Method(self._number, spec.Queue.PurgeOk(count))

    # publishing

    def confirm_delivery(self):
        """Turn on publisher confirms: ``basic_publish`` then raises
        ``UnroutableError`` for an unroutable mandatory message."""
        with self._broker._operation(self):
            self._confirming = True

    def basic_publish(self, exchange: str, routing_key: str, body,
                      properties: Optional[pika.BasicProperties] = None,
                      mandatory: bool = False):
        """Publish a message; it is routed and enqueued before this returns.

        :param body: bytes, or str (encoded as UTF-8)
        :raises UnroutableError: confirms on, ``mandatory`` and no queue
            matched
        :raises ChannelClosedByBroker: 404 (no such exchange), 403 (internal
            exchange), 406 (invalid ``expiration``)
        """
        body = as_bytes(body)
        properties = properties or pika.BasicProperties()
        # encoding copies the properties the way the wire does (and raises
        # pika's errors for unsupported header values)
        encoded = b''.join(properties.encode())
        with self._broker._operation(self) as now:
            routed = self._broker._publish(
                exchange, routing_key, body, properties, encoded, now)
        if not routed and mandatory and self._confirming:
            returned = _Message(exchange, routing_key, body, encoded)
            method = spec.Basic.Return(spec.NO_ROUTE, 'NO_ROUTE', exchange,
                                       routing_key)
            raise UnroutableError([ReturnedMessage(
                method, returned.properties(), body)])

    # consuming

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0,
                  global_qos: bool = False):
        """Limit unacked deliveries: per consumer started after this call,
        or, with ``global_qos``, for all consumers of the channel together.
        0 means no limit. ``prefetch_size`` is ignored."""
        validators.zero_or_greater('prefetch_size', prefetch_size)
        validators.zero_or_greater('prefetch_count', prefetch_count)
        with self._broker._operation(self) as now:
            if global_qos:
                self._global_prefetch_count = prefetch_count
            else:
                self._prefetch_count = prefetch_count
            self._dispatch_own_queues(now)

    def basic_consume(self, queue: str, on_message_callback,
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: Optional[str] = None,
                      arguments: Optional[dict] = None) -> str:
        """Start a consumer; ``on_message_callback(channel, method,
        properties, body)`` runs in ``process_data_events``, with ``method``
        a ``spec.Basic.Deliver``.

        :returns: the consumer tag
        :raises DuplicateConsumerTag: the tag is in use on this channel
        :raises ChannelClosedByBroker: 404, 405, 403 (queue in exclusive use)
        """
        validators.require_string(queue, 'queue')
        validators.require_callback(on_message_callback, 'on_message_callback')
        if not consumer_tag:
            consumer_tag = 'ctag{}.{}'.format(self._number, uuid.uuid4().hex)
        if consumer_tag in self._consumers:
            raise DuplicateConsumerTag(consumer_tag)
        with self._broker._operation(self) as now:
            target = self._broker._queue(queue, self._connection)
            if (target.has_exclusive_consumer()
                    or (exclusive and target.consumers)):
                raise _ChannelError(
                    spec.ACCESS_REFUSED,
                    "queue '{}' in vhost '{}' in exclusive use".format(
                        queue, self._broker.vhost))
            consumer = _Consumer(consumer_tag, self, target,
                                 on_message_callback, auto_ack, exclusive,
                                 self._prefetch_count)
            target.consumers.append(consumer)
            self._consumers[consumer_tag] = consumer
            self._broker._dispatch(target, now)
        return consumer_tag

    def basic_cancel(self, consumer_tag: str) -> list:
        """Stop a consumer. Its deliveries not yet passed to the callback
        are requeued, or for an ``auto_ack`` consumer returned.

        :returns: ``[]``, or for an ``auto_ack`` consumer a list of
            ``(method, properties, body)`` not yet dispatched
        """
        with self._broker._operation(self) as now:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is None:
                return []
            self._broker._remove_consumer(consumer, now)
            pending = self._connection._take_deliveries(consumer)
            if consumer.auto_ack:
                return [(item.method, item.message.properties(),
                         item.message.body) for item in pending]
            tags = [item.method.delivery_tag for item in pending]
            self._broker._requeue([self._unacked.pop(tag) for tag in tags
                                   if tag in self._unacked], now)
            return []

    def add_on_cancel_callback(self, callback):
        """Call ``callback(method_frame)`` (``method_frame.method`` a
        ``spec.Basic.Cancel``) when the broker cancels a consumer of this
        channel, e.g. because its queue was deleted."""
        validators.require_callback(callback)
        self._on_cancel_callbacks.append(callback)

    def basic_get(self, queue: str, auto_ack: bool = False):
        """Take one message from a queue.

        :returns: ``(spec.Basic.GetOk, properties, body)``, or
            ``(None, None, None)`` if the queue is empty
        :raises ChannelClosedByBroker: 404, 405
        """
        validators.require_string(queue, 'queue')
        with self._broker._operation(self) as now:
            target = self._broker._queue(queue, self._connection)
            target.last_used = now
            message = target.pop(now)
            if message is None:
                return None, None, None
            self._broker._schedule_expiry(target)
            delivery_tag = next(self._delivery_tags)
            if not auto_ack:
                self._unacked[delivery_tag] = _Unacked(message, target, None)
            method = spec.Basic.GetOk(
                delivery_tag, message.redelivered, message.exchange,
                message.routing_key, target.message_count(now))
        return method, message.properties(), message.body

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False):
        """Acknowledge a delivery (with ``multiple``, all up to and including
        ``delivery_tag``; 0 = all outstanding).

        :raises ChannelClosedByBroker: 406, unknown delivery tag
        """
        with self._broker._operation(self) as now:
            self._settle(delivery_tag, multiple)
            self._dispatch_own_queues(now)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True):
        """Reject one or more deliveries; requeued messages go back to the
        front of their queue marked redelivered, others are dead-lettered
        (reason ``rejected``), or dropped if their queue has no dead-letter
        exchange.

        :raises ChannelClosedByBroker: 406, unknown delivery tag
        """
        with self._broker._operation(self) as now:
            entries = self._settle(delivery_tag, multiple)
            if requeue:
                self._broker._requeue(entries, now)
            else:
                self._broker._reject(entries, now)
            self._dispatch_own_queues(now)

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True):
        """Reject one delivery; see :meth:`basic_nack`."""
        self.basic_nack(delivery_tag, multiple=False, requeue=requeue)

    # used by the broker and the connection (under the broker lock unless
    # noted)

    def _raise_if_unusable(self):
        reason = self._close_reason
        if isinstance(reason, ConnectionClosedByBroker):
            raise ConnectionClosedByBroker(
                reason.reply_code, reason.reply_text)
        if reason is not None:
            raise ChannelWrongStateError('Channel is closed.')

    def _has_global_capacity(self):
        if not self._global_prefetch_count:
            return True
        unacked = sum(1 for entry in self._unacked.values()
                      if entry.consumer is not None)
        return unacked < self._global_prefetch_count

    def _deliver(self, consumer, message):
        delivery_tag = next(self._delivery_tags)
        if not consumer.auto_ack:
            self._unacked[delivery_tag] = _Unacked(message, consumer.queue,
                                                   consumer)
            consumer.unacked += 1
        method = spec.Basic.Deliver(consumer.tag, delivery_tag,
                                    message.redelivered, message.exchange,
                                    message.routing_key)
        self._connection._post(_Delivery(consumer, method, message))

    def _settle(self, delivery_tag, multiple) -> List[_Unacked]:
        """Remove deliveries from the unacked set (ack, nack or reject)."""
        if multiple:
            tags = [tag for tag in self._unacked
                    if delivery_tag == 0 or tag <= delivery_tag]
            if not tags and delivery_tag != 0:
                tags = [delivery_tag]  # fails below
        else:
            tags = [delivery_tag]
        for tag in tags:
            if tag not in self._unacked:
                raise _ChannelError(spec.PRECONDITION_FAILED,
                                    'unknown delivery tag {}'.format(tag))
        entries = [self._unacked.pop(tag) for tag in tags]
        for entry in entries:
            if entry.consumer is not None:
                entry.consumer.unacked -= 1
        return entries

    def _dispatch_own_queues(self, now):
        """Deliver to this channel's consumers after their capacity grew."""
        for consumer in list(self._consumers.values()):
            if consumer.active:
                self._broker._dispatch(consumer.queue, now)

    def _run_delivery(self, delivery):
        # in the owner thread, from process_data_events, without the lock.
        # Closing the channel or cancelling the consumer already took this
        # delivery out of the inbox (and requeued it); the check is a guard.
        consumer = delivery.consumer
        if self.is_closed or self._consumers.get(consumer.tag) is not consumer:
            return
        consumer.callback(self, delivery.method,
                          delivery.message.properties(), delivery.message.body)

    def _run_cancelled(self, consumer):
        # in the owner thread, from process_data_events, without the lock
        with self._broker._lock:
            if self._consumers.get(consumer.tag) is not consumer:
                return
            del self._consumers[consumer.tag]
        frame = Method(self._number,
                       spec.Basic.Cancel(consumer_tag=consumer.tag))
        for callback in list(self._on_cancel_callbacks):
            callback(frame)


# -- vhosts -----------------------------------------------------------------

class _Vhosts:
    """The brokers of this process, by vhost.

    The broker lives in one process: in a process forked from it, every
    broker starts empty (a child's clients reach only the child's
    services), and the connections inherited from the parent are closed.
    """

    def __init__(self):
        self.brokers: Dict[str, Broker] = {}
        self.lock = threading.Lock()
        fork.register(self)

    def _after_fork_in_child(self):
        self.lock = threading.Lock()
        for broker in self.brokers.values():
            broker._reset_after_fork()


_vhosts = _Vhosts()


def get_broker(vhost: str = '/') -> Broker:
    """The broker of ``vhost``, created on first use."""
    with _vhosts.lock:
        broker = _vhosts.brokers.get(vhost)
        if broker is None:
            broker = _vhosts.brokers[vhost] = Broker(vhost)
        return broker


def connect(vhost: str = '/') -> MemoryConnection:
    """Open a connection to the in-process broker of ``vhost``; use it as a
    ``pika.BlockingConnection``."""
    return get_broker(vhost).connect()


def delete_vhost(vhost: str):
    """Close every connection of ``vhost`` (as
    :meth:`Broker.close_all_connections`), stop and join its expiry thread,
    and forget all its state. A later :func:`connect` starts from an empty
    vhost. Unknown vhosts are ignored."""
    with _vhosts.lock:
        broker = _vhosts.brokers.pop(vhost, None)
    if broker is not None:
        broker.close_all_connections(
            "CONNECTION_FORCED - vhost '{}' is deleted".format(vhost))
        broker._stop_expiry_timer()
