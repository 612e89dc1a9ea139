"""Thread-safe publishing with publisher confirms.

A :class:`ProducerPool` lends each publishing thread a connection of its own
(pika connections belong to one thread at a time) and takes it back
afterwards, so concurrent publishers never share a channel and idle ones
reuse connections. :class:`Publisher` adds Nameko's message defaults on top:
persistent delivery, priority 0, confirms, mandatory detection, retries.

Resource alarms: while a RabbitMQ node is low on memory or disk it stops
reading from every connection that publishes (``connection.blocked``). A
pooled connection waits at most ``PUBLISH_BLOCKED_TIMEOUT`` seconds for
the alarm to clear (pika's ``blocked_connection_timeout``: the connection
is torn down, because a blocked connection cannot even be closed
gracefully), then the publish raises
:class:`~threadko.exceptions.PublishBlocked`; the next publish opens a
new connection. Warnings are logged when blocking starts and ends.
"""

import bz2
import logging
import threading
import time
import warnings
import zlib
from collections import namedtuple

import pika
import pika.exceptions

from threadko.amqp.headers import field_table
from threadko.amqp.connection import (
    CONNECTION_ERRORS, Connector, RetryPolicy,
)
from threadko.constants import (
    DEFAULT_PUBLISH_BLOCKED_TIMEOUT, DEFAULT_RETRY_POLICY,
    DEFAULT_SERIALIZER, PERSISTENT, PUBLISH_BLOCKED_TIMEOUT_CONFIG_KEY,
)
from threadko.exceptions import (
    BrokerRefused, BrokerUnavailable, PublishBlocked, PublishUnconfirmed,
    UndeliverableMessage,
)
from threadko.extensions import SharedExtension
from threadko.utils import fork
from threadko import serialization

_log = logging.getLogger(__name__)

#: compression name -> (mime type sent in the ``compression`` header,
#: compress, decompress); the names and types kombu uses
#: :meta hide-value:
COMPRESSIONS = {
    'zlib': ('application/x-gzip', zlib.compress, zlib.decompress),
    'gzip': ('application/x-gzip', zlib.compress, zlib.decompress),
    'bzip2': ('application/x-bz2', bz2.compress, bz2.decompress),
}
DECOMPRESSORS = {mime: decompress
                 for mime, _, decompress in COMPRESSIONS.values()}

# BasicProperties a caller may set through publish options
_PROPERTY_NAMES = frozenset([
    'content_type', 'content_encoding', 'delivery_mode', 'priority',
    'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
    'type', 'user_id', 'app_id', 'cluster_id',
])


def publish_blocked_timeout(config):
    """``PUBLISH_BLOCKED_TIMEOUT`` of ``config``: seconds, or None (wait
    as long as a resource alarm lasts)."""
    return config.get(PUBLISH_BLOCKED_TIMEOUT_CONFIG_KEY,
                      DEFAULT_PUBLISH_BLOCKED_TIMEOUT)


def log_blocked(where, safe_uri, reason, timeout, outcome):
    """The warning logged when the broker blocks a connection."""
    _log.warning(
        'The broker at %s is blocking publishing on %s: resource alarm '
        '(%s). Publishes wait for it to clear; %s.', safe_uri, where,
        reason, outcome.format(timeout))


def log_unblocked(where, safe_uri, seconds):
    _log.warning(
        'The broker at %s unblocked publishing on %s after %.1f s: the '
        'resource alarm cleared; publishing resumes.', safe_uri, where,
        seconds)


class _Producer:
    """One connection and channel, used by one thread at a time."""

    def __init__(self, connection, use_confirms, pool=None):
        self.connection = connection
        self.channel = connection.channel()
        if use_confirms:
            self.channel.confirm_delivery()
        self._confirming = use_confirms and pool is not None
        self.declared = set()
        #: the broker's reason while it blocks this connection
        self.blocked = None
        self._blocked_since = None
        self._pool = pool
        impl = getattr(connection, '_impl', None)  # None: memory://
        if impl is not None and pool is not None:
            # called inside pika's poll, as the frames arrive, also while
            # a publish waits for its confirm
            impl.add_on_connection_blocked_callback(self._on_blocked)
            impl.add_on_connection_unblocked_callback(self._on_unblocked)

    def _on_blocked(self, connection, method_frame):
        self.blocked = method_frame.method.reason or 'no reason given'
        self._blocked_since = time.monotonic()
        timeout = self._pool.blocked_timeout
        log_blocked('a publisher connection', self._pool.connector.safe_uri,
                    self.blocked, timeout,
                    'a publish raises PublishBlocked after {} s'
                    if timeout is not None else
                    'PUBLISH_BLOCKED_TIMEOUT is null: they wait as long as '
                    'it lasts')

    def _on_unblocked(self, connection, method_frame):
        if self.blocked is None:
            return
        self.blocked = None
        log_unblocked('a publisher connection',
                      self._pool.connector.safe_uri,
                      time.monotonic() - self._blocked_since)

    def declare(self, entities):
        """Declare each entity once per connection (or every time, for a
        queue with ``declare_every_time``)."""
        for entity in entities:
            if entity not in self.declared:
                entity.declare(self.channel)
                if not getattr(entity, 'declare_every_time', False):
                    self.declared.add(entity)

    def publish(self, exchange, routing_key, body, properties, mandatory,
                declare):
        self.declare(declare)
        observe = self._pool.observe_confirm if self._confirming else None
        began = time.monotonic() if observe is not None else None
        self.channel.basic_publish(
            exchange=exchange, routing_key=routing_key, body=body,
            properties=properties, mandatory=mandatory)
        if began is not None:
            observe(time.monotonic() - began)

    def close(self):
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:
            _log.debug('error closing publisher connection', exc_info=True)


class ProducerPool:
    """Lends connections to publishing threads.

    Connections are created on demand (so the pool grows to the number of
    threads publishing at the same moment) and kept for reuse. They have no
    heartbeat while idle, like Nameko's publisher connections; a connection
    the broker dropped is noticed on its next use and replaced.

    In a process forked from the one that made it, the pool starts empty
    and opens connections of its own.

    A connection the broker blocks (a resource alarm) for more than
    ``blocked_timeout`` seconds is torn down and its publish raises
    :class:`~threadko.exceptions.PublishBlocked` (see the module
    docstring); None waits as long as the alarm lasts.

    For metrics, the pool counts the messages the broker returned as
    unroutable (:attr:`returns`) and refused (:attr:`nacks`), and calls
    :attr:`observe_confirm` with each confirm latency when it is set.

    :param connector: a :class:`~threadko.amqp.connection.Connector`; its
        connection parameters get ``blocked_timeout`` as pika's
        ``blocked_connection_timeout``
    """

    #: ``fn(seconds)`` called, on the publishing thread, with how long
    #: each confirmed publish took until its confirm, or None
    observe_confirm = None

    def __init__(self, connector,
                 blocked_timeout=DEFAULT_PUBLISH_BLOCKED_TIMEOUT):
        self.connector = connector
        self.blocked_timeout = blocked_timeout
        for parameters in connector.parameters:
            parameters.blocked_connection_timeout = blocked_timeout
        self._idle = {True: [], False: []}
        self._lock = threading.Lock()
        # notified by close(): ends the waits between retries
        self._closed = threading.Condition(self._lock)
        self._generation = 0
        #: publishes the broker returned (mandatory, unroutable) and nacked
        self.returns = 0
        self.nacks = 0
        fork.register(self)

    def _after_fork_in_child(self):
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        # the parent's connections: not closed here (that would speak on
        # the parent's sockets), their sockets are closed already
        self._idle = {True: [], False: []}
        self._generation += 1

    def _checkout(self, use_confirms):
        """Return ``(producer, reused, generation)``."""
        with self._lock:
            idle = self._idle[use_confirms]
            if idle:
                return idle.pop(), True, self._generation
            generation = self._generation
        producer = _Producer(self.connector.connect(), use_confirms, self)
        return producer, False, generation

    def _checkin(self, producer, use_confirms, generation):
        with self._lock:
            if generation == self._generation:
                self._idle[use_confirms].append(producer)
                return
        producer.close()  # the pool was closed meanwhile

    def publish(self, body, exchange, routing_key, properties=None,
                mandatory=False, declare=(), use_confirms=True, retry=True,
                retry_policy=None):
        """Publish one message; with confirms, return once the broker has
        taken it.

        :raises UndeliverableMessage: ``mandatory`` and no queue is bound
            (needs ``use_confirms``)
        :raises BrokerRefused: e.g. the exchange does not exist (404)
        :raises PublishBlocked: a resource alarm blocked the publish for
            longer than the pool's ``blocked_timeout``
        :raises BrokerUnavailable: the retry policy is spent (nothing sent)
        :raises PublishUnconfirmed: the retry policy is spent, and some
            attempt was lost before its confirm (it may have been routed)

        Connection errors, a connection lost while waiting for the confirm
        included, are retried per ``retry_policy`` (at least once: a
        message whose confirm was lost is published again, so it may
        arrive twice).
        """
        def publish(producer):
            try:
                producer.publish(exchange, routing_key, body, properties,
                                 mandatory, declare)
            except pika.exceptions.UnroutableError:
                with self._lock:  # publishing threads count at once
                    self.returns += 1
                raise UndeliverableMessage(
                    'No queue is bound to exchange {!r} for routing key '
                    '{!r}'.format(exchange, routing_key))

        def action():
            return 'publish to exchange {!r} with routing key {!r}'.format(
                exchange, routing_key)

        self._run(publish, action, use_confirms, retry, retry_policy,
                  confirmed=use_confirms)

    def declare(self, entities, retry=True, retry_policy=None):
        """Declare ``entities`` (exchanges and queues) now.

        :raises BrokerRefused: e.g. an entity exists with other flags (406)
        """
        entities = list(entities)
        if entities:
            self._run(lambda producer: producer.declare(entities),
                      lambda: 'declare {}'.format(entities), True, retry,
                      retry_policy)

    def _run(self, operation, action, use_confirms, retry, retry_policy,
             confirmed=False):
        """Run ``operation(producer)`` on a lent producer, retrying
        connection errors per the policy. ``action()`` words what was
        attempted, for a refusal (built only then: publishing is a hot
        path)."""
        policy = RetryPolicy.from_options(
            retry_policy if retry_policy is not None
            else DEFAULT_RETRY_POLICY)
        intervals = policy.intervals() if retry else iter(())
        attempts = 0
        unconfirmed = False  # an attempt may have reached the broker
        with self._lock:
            began = self._generation
        while True:
            producer = None
            reused = False
            try:
                producer, reused, generation = self._checkout(use_confirms)
                operation(producer)
            except UndeliverableMessage:
                self._checkin(producer, use_confirms, generation)
                raise
            except pika.exceptions.ChannelClosedByBroker as exc:
                producer.close()
                raise BrokerRefused(
                    action(), exc.reply_code, exc.reply_text)
            except pika.exceptions.ConnectionBlockedTimeout:
                # pika tore the blocked connection down (it could not be
                # closed: the broker reads nothing from it)
                producer.close()
                raise PublishBlocked(
                    action(), producer.blocked or 'no reason given',
                    self.blocked_timeout) from None
            except (pika.exceptions.NackError,) + CONNECTION_ERRORS as exc:
                nacked = isinstance(exc, pika.exceptions.NackError)
                if nacked:
                    with self._lock:
                        self.nacks += 1
                if producer is not None:
                    producer.close()
                    if not isinstance(exc, _NOT_SENT_ERRORS):
                        # lost while waiting for the confirm (or on a
                        # stale idle connection: we cannot tell)
                        unconfirmed = True
                if reused and not nacked:
                    # an idle connection the broker dropped meanwhile: try
                    # the next one (or a new one) straight away (a nack is
                    # the broker's answer: retried per the policy only)
                    _log.debug('idle publisher connection was lost (%r)', exc)
                    continue
                if not nacked:
                    # a certificate, the login or the vhost: retrying does
                    # not help
                    error = self.connector.configuration_error(exc)
                    if error is not None:
                        raise error
                attempts += 1
                wait = next(intervals, None)
                if wait is not None:
                    _log.warning(
                        'Error publishing to broker at %s (%r); retrying in '
                        '%s seconds', self.connector.safe_uri, exc, wait)
                    if not self._wait_unless_closed(began, wait):
                        wait = None  # closed meanwhile: give up now
                if wait is None:
                    if nacked:
                        raise
                    error = (PublishUnconfirmed if unconfirmed and confirmed
                             else BrokerUnavailable)
                    raise error(
                        action(), self.connector.safe_uri, attempts,
                        exc) from exc
            except BaseException:
                # e.g. an invalid property: this connection's state is
                # unknown, so it does not go back to the pool
                if producer is not None:
                    producer.close()
                raise
            else:
                self._checkin(producer, use_confirms, generation)
                return

    def _wait_unless_closed(self, generation, seconds):
        """Back off between attempts: wait ``seconds``, unless the pool is
        (or gets) closed after ``generation``; whether the wait ran out."""
        with self._closed:
            return not self._closed.wait_for(
                lambda: self._generation != generation, seconds)

    def close(self):
        """Close the idle connections; connections lent out now are closed
        when they come back, and publishes waiting to retry give up
        (raising :class:`~threadko.exceptions.BrokerUnavailable`). The
        pool stays usable (it reconnects)."""
        with self._lock:
            self._generation += 1
            idle = self._idle[True] + self._idle[False]
            self._idle = {True: [], False: []}
            self._closed.notify_all()
        for producer in idle:
            producer.close()


# a publish that failed with these never left this process
_NOT_SENT_ERRORS = (
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelClosedByClient,
)


class Outgoing(namedtuple('Outgoing', [
        'body', 'exchange', 'routing_key', 'properties', 'mandatory',
        'declare', 'use_confirms', 'retry', 'retry_policy'])):
    """A message encoded by :meth:`Publisher.prepare`, ready to publish."""

    __slots__ = ()

    @property
    def can_publish_on_loop(self):
        """Whether a :class:`~threadko.amqp.loop_publish.LoopPublisher` can
        publish it: confirmed, and nothing to declare first."""
        return self.use_confirms and not self.declare


class Publisher:
    """Publishes payloads with Nameko's defaults, overridable per instance
    and per call.

    Options (instance or call): ``exchange`` (name or
    :class:`~threadko.amqp.entities.Exchange`), ``routing_key``,
    ``serializer``, ``compression``, ``delivery_mode`` (default persistent),
    ``priority`` (0), ``expiration`` (seconds), ``mandatory`` (False),
    ``use_confirms`` (True), ``retry`` (True), ``retry_policy``
    (``{"max_retries": 3}``), ``declare`` (entities declared first, once per
    connection), ``headers``, and any AMQP property (``correlation_id``,
    ``reply_to``, ``message_id``, ``type``, ...).

    :param pool: the :class:`ProducerPool` to publish through
    """

    defaults = {
        'delivery_mode': PERSISTENT,
        'priority': 0,
        'mandatory': False,
        'use_confirms': True,
        'retry': True,
        'serializer': DEFAULT_SERIALIZER,
    }

    #: the :class:`~threadko.observability.tracing.Tracing` when tracing
    #: is on: :meth:`publish` makes a producer span and sends its context
    #: in the headers
    tracer = None

    def __init__(self, pool, **options):
        self.pool = pool
        self.options = dict(self.defaults)
        self.options.update(options)

    def publish(self, payload, extra_headers=None, **kwargs):
        """Encode and publish ``payload``.

        Headers merge as in Nameko: instance ``headers`` < call
        ``headers`` < ``extra_headers`` (the worker's context).

        :raises serialization.EncodeError: the payload cannot be encoded;
            nothing was published
        """
        outgoing = self.prepare(payload, extra_headers, **kwargs)
        if self.tracer is None:
            self.send(outgoing)
            return
        with self.tracer.publishing(outgoing):
            self.send(outgoing)

    def prepare(self, payload, extra_headers=None, **kwargs):
        """Encode ``payload`` with the options, as :meth:`publish` would;
        return the :class:`Outgoing` message without publishing it.

        :raises serialization.EncodeError: the payload cannot be encoded
        """
        options = dict(self.options)
        headers = dict(options.pop('headers', None) or {})
        headers.update(kwargs.pop('headers', None) or {})
        headers.update(extra_headers or {})
        declare = list(options.pop('declare', None) or [])
        declare.extend(kwargs.pop('declare', None) or [])
        options.update(kwargs)

        exchange = options.pop('exchange', None)
        if exchange is None:
            exchange = ''
        elif not isinstance(exchange, str):
            declare.append(exchange)
            exchange = exchange.name

        body, content_type, content_encoding = serialization.encode(
            payload, options.pop('serializer'))
        compression = options.pop('compression', None)
        if compression:
            mime, compress, _ = COMPRESSIONS[compression]
            body = compress(body)
            headers['compression'] = mime

        properties = {'content_type': content_type,
                      'content_encoding': content_encoding}
        expiration = options.pop('expiration', None)
        if expiration is not None:
            # seconds in the API, a millisecond string on the wire
            properties['expiration'] = str(int(float(expiration) * 1000))
        for name in list(options):
            if name in _PROPERTY_NAMES:
                properties[name] = options.pop(name)

        mandatory = options.pop('mandatory')
        use_confirms = options.pop('use_confirms')
        if mandatory and not use_confirms:
            warnings.warn(
                'Mandatory delivery was requested, but unroutable messages '
                'cannot be detected without publish confirms: enable '
                '`use_confirms`.', UserWarning, stacklevel=3)

        return Outgoing(
            body=body,
            exchange=exchange,
            routing_key=options.pop('routing_key', ''),
            properties=pika.BasicProperties(
                headers=field_table(headers), **properties),
            mandatory=mandatory,
            declare=declare,
            use_confirms=use_confirms,
            retry=options.pop('retry'),
            retry_policy=options.pop('retry_policy', None),
        )

    def send(self, outgoing):
        """Publish a prepared message through the pool (blocking until the
        broker confirmed it, with confirms)."""
        self.pool.publish(**outgoing._asdict())


class SharedProducerPool(SharedExtension):
    """The container's :class:`ProducerPool`, shared by every extension that
    publishes (RPC replies and requests, events, publishers). Its
    connections close when the container stops or is killed."""

    def __init__(self):
        super().__init__()
        self._pool = None
        self._lock = threading.Lock()

    @property
    def pool(self):
        # created on first use: the extensions using it set up concurrently
        with self._lock:
            if self._pool is None:
                config = self.container.config
                self._pool = ProducerPool(
                    Connector(config, heartbeat=0, transport_options=False),
                    blocked_timeout=publish_blocked_timeout(config))
            return self._pool

    def interrupt_start(self):
        """Declarations retrying while the container starts give up."""
        self.pool.close()

    def stop(self):
        self.pool.close()

    def kill(self):
        self.pool.close()
