"""The container's broker consumer: one connection, owned by one thread.

:class:`QueueConsumer` is a shared extension, so every AMQP entrypoint of a
container (and its RPC reply listener) consumes through the same
connection, as in Nameko 2. Its *consumer thread* owns the pika connection:
it declares the queues, consumes with ``prefetch_count = max_workers`` per
queue, and sends every ack and requeue (worker threads hand those over with
``add_callback_threadsafe``). It never blocks on the worker pool, so
heartbeats keep flowing while all workers are busy: a delivery goes straight
to a worker when one is free, else to a *dispatcher thread*, which decodes
it and waits for a worker slot. The backlog it can hold is bounded by the
prefetch counts.

When the connection is lost, the consumer thread reconnects with back-off,
redeclares and resumes. Acks for deliveries of the lost connection are
dropped, because the broker has already requeued those messages.

For metrics, the consumer thread keeps plain counters (it is their only
writer; a scrape reads them): deliveries, redeliveries and unacked
deliveries per queue (:class:`QueueStats`), and the loop's successful
connections (:attr:`ConsumerLoop.connections`).
"""

import logging
import queue
import threading
import time
from functools import partial

import pika.exceptions

from threadko.amqp.connection import CONNECTION_ERRORS, Connector, abort
from threadko.amqp.errors import explain_declaration_error
from threadko.amqp.loop_publish import LoopPublisher
from threadko.amqp.publish import DECOMPRESSORS
from threadko.constants import DEFAULT_HEARTBEAT, HEARTBEAT_CONFIG_KEY
from threadko.exceptions import ConfigurationError, describe_error
from threadko.extensions import ProviderCollector, SharedExtension
from threadko.utils import fork
from threadko import serialization

_log = logging.getLogger(__name__)

# how long the consumer thread blocks in pika before checking its flags
POLL_INTERVAL = 1.0

_STOP = object()

# channel errors during declaration are mistakes in the declarations (406
# inequivalent flags, 403 access refused, 405 locked), not outages
DECLARATION_ERRORS = (pika.exceptions.ChannelClosedByBroker,)


def decode_body(body, properties, accept):
    """Decompress (per the ``compression`` header) and decode a message
    body with its content type.

    :param accept: set of accepted content types
    :raises serialization.ContentDisallowed: unaccepted content type
    :raises serialization.DecodeError: invalid body
    """
    compression = (properties.headers or {}).get('compression')
    if compression:
        decompress = DECOMPRESSORS.get(compression)
        if decompress is None:
            raise serialization.DecodeError(
                'unknown compression {!r}'.format(compression))
        try:
            body = decompress(body)
        except Exception as exc:
            raise serialization.DecodeError(
                'cannot decompress body: {}'.format(exc))
    return serialization.decode(
        body, properties.content_type, properties.content_encoding, accept)


def basic_consume(channel, queue, on_message, auto_ack=False):
    """Start consuming ``queue``; return the consumer tag.

    On a pika channel, deliveries are then handed to ``on_message`` by the
    channel's asynchronous core, inside the connection's poll, without a
    round through the blocking adapter's event queue (and without
    ``process_data_events`` returning for every delivery). ``on_message``
    must not call blocking pika methods; acks through :class:`Message` and
    publishing through :mod:`~threadko.amqp.loop_publish` don't. The
    consume itself, and cancelling it, stay with the blocking API, so a
    refused consume raises here as before.
    """
    tag = channel.basic_consume(
        queue=queue, on_message_callback=on_message, auto_ack=auto_ack)
    impl = getattr(channel, '_impl', None)
    if impl is not None:
        # pika keeps one delivery callback per consumer tag: take the
        # blocking adapter's (which queues deliveries for dispatch) out
        impl._consumers[tag] = on_message
    return tag


class QueueStats:
    """What the consumer thread counted for one provider's queue, read by
    metrics at scrape time. Only the consumer thread writes these."""

    __slots__ = ('queue', 'deliveries', 'redeliveries', 'unacked',
                 'connection')

    def __init__(self, queue, connection):
        #: the queue's name
        self.queue = queue
        #: messages delivered, over every connection
        self.deliveries = 0
        #: of which the broker flagged as redelivered
        self.redeliveries = 0
        #: delivered on the current connection and not yet settled
        self.unacked = 0
        # the connection ``unacked`` counts for
        self.connection = connection


class Message:
    """One delivery, as handed to a provider's ``handle_message``.

    ``ack()``, ``requeue()`` and ``discard()`` may be called from any
    thread, once. Settling a delivery of a connection that has since been
    lost does nothing (the broker has requeued it already).
    """

    __slots__ = ('_consumer_thread', 'connection', 'channel', 'method',
                 'properties', 'body', '_settled', '_run_in_poll', '_stats')

    def __init__(self, consumer_thread, connection, channel, method,
                 properties, body, run_in_poll=None, stats=None):
        self._consumer_thread = consumer_thread
        self.connection = connection
        self.channel = channel
        self.method = method
        self.properties = properties
        self.body = body
        self._settled = False
        # hands a settle to the consumer thread more cheaply than
        # add_callback_threadsafe (LoopPublisher.run_in_poll)
        self._run_in_poll = run_in_poll
        # the QueueStats whose ``unacked`` settling decrements
        self._stats = stats

    @property
    def headers(self):
        return self.properties.headers or {}

    @property
    def routing_key(self):
        return self.method.routing_key

    @property
    def delivery_tag(self):
        return self.method.delivery_tag

    @property
    def redelivered(self):
        return self.method.redelivered

    def decode(self, accept):
        """Decompress and decode the body.

        :param accept: set of accepted content types
        :raises serialization.ContentDisallowed: unaccepted content type
        :raises serialization.DecodeError: invalid body
        """
        return decode_body(self.body, self.properties, accept)

    def ack(self):
        self._settle('ack')

    def requeue(self):
        """Give the message back to the broker for redelivery."""
        self._settle('requeue')

    def discard(self):
        """Reject the message without requeueing it."""
        self._settle('discard')

    def _settle(self, action):
        if self._settled:
            return
        self._settled = True
        if threading.current_thread() is self._consumer_thread:
            self._settle_now(action)
            return
        run_in_poll = self._run_in_poll
        if run_in_poll is not None and run_in_poll(
                partial(self._settle_now, action)):
            return
        try:
            self.connection.add_callback_threadsafe(
                partial(self._settle_now, action))
        except CONNECTION_ERRORS:
            _log.debug('not settling %s: its connection is gone', self)

    def _settle_now(self, action):
        if not self.channel.is_open:
            _log.debug('not settling %s: its channel is closed', self)
            return
        # pika's asynchronous core only buffers the frame, which the
        # consumer loop's next poll sends: no flush per ack, and safe inside
        # pika callbacks (confirms settle requests from there)
        channel = getattr(self.channel, '_impl', self.channel)
        try:
            if action == 'ack':
                channel.basic_ack(self.delivery_tag)
            else:
                channel.basic_nack(
                    self.delivery_tag, requeue=(action == 'requeue'))
        except (pika.exceptions.AMQPError,) + CONNECTION_ERRORS:
            _log.debug('could not %s %s', action, self, exc_info=True)
            return
        stats = self._stats
        if stats is not None and stats.connection is self.connection:
            stats.unacked -= 1

    def __repr__(self):
        return '<Message {} #{}>'.format(
            self.method.routing_key, self.method.delivery_tag)


class ConsumerLoop:
    """A connection that consumes, run by one thread until stopped.

    :meth:`run` connects (retrying forever with the connector's back-off,
    logging each failure), calls ``on_connect(connection, channel)`` to
    declare and start consuming, then processes broker events until
    :meth:`stop`. A lost connection is replaced the same way.

    Before the first successful connection, an error that retrying does
    not fix ends the loop and :meth:`wait_ready` raises
    :class:`ConfigurationError`: ``on_connect`` raising one of
    :data:`DECLARATION_ERRORS`, or a connection refused for its
    certificate, login or vhost (``Connector.explain_connection_error``).
    Later, both are logged as errors and retried with the connector's
    back-off until :meth:`stop`: the loop does not end while not stopped.

    In a process forked from the loop's, the loop has no connection (its
    thread and connection stayed in the parent): :meth:`call_soon` returns
    False there.
    """

    def __init__(self, connector, on_connect, description,
                 give_up_first_connect=False, on_poll=None):
        self.connector = connector
        self.on_connect = on_connect
        # called on the loop's thread between rounds of broker events
        self.on_poll = on_poll
        self.description = description
        # clients would rather fail than wait forever for a broker
        self.give_up_first_connect = give_up_first_connect
        self.connection = None  # for other threads' call_soon
        #: how many connections consumed so far (the first, and every
        #: reconnection); only the loop's thread writes it
        self.connections = 0
        #: publishes on this loop's connection (see loop_publish)
        self.publisher = LoopPublisher(self)
        self._stopping = threading.Event()
        self._drain_deadline = None  # see stop()
        self._ready = _Ready()
        self._waiters = set()
        self._waiters_lock = threading.Lock()
        fork.register(self)

    def _after_fork_in_child(self):
        self.connection = None  # the parent's
        self._waiters = set()
        self._waiters_lock = threading.Lock()

    def run(self):
        try:
            self._run()
        finally:
            # nobody waits for a callback that will never run now
            with self._waiters_lock:
                waiters, self._waiters = self._waiters, set()
            for done in waiters:
                done.set()

    def _run(self):
        retry_intervals = None
        refusal_intervals = None  # back-off after refused declarations
        while not self._stopping.is_set():
            try:
                connection = self.connector.connect()
            except CONNECTION_ERRORS as exc:
                problem = self.connector.explain_connection_error(exc)
                if problem is not None and not self._ready.done():
                    # a certificate, the login or the vhost: retrying does
                    # not help, so the first connection fails at once
                    error = ConfigurationError(problem)
                    error.__cause__ = exc
                    self._ready.fail(error)
                    return
                if retry_intervals is None:
                    policy = self.connector.retry_policy
                    retry_intervals = (
                        policy.intervals()
                        if self.give_up_first_connect
                        and not self._ready.done()
                        else _forever(policy))
                wait = next(retry_intervals, None)
                if wait is None:
                    self._ready.fail(exc)
                    return
                if problem is not None:
                    # connected before: someone may be fixing it (a
                    # certificate rotated, permissions changed), so the
                    # loop goes on trying, loudly
                    _log.error(
                        'Cannot reconnect %s to the broker: %s\n'
                        'Retrying in %s seconds.', self.description,
                        problem, wait)
                else:
                    _log.warning(
                        'Error connecting to broker at %s (%s).\n'
                        'Retrying in %s seconds.', self.connector.safe_uri,
                        describe_error(exc), wait)
                self._stopping.wait(wait)
                continue

            retry_intervals = None
            try:
                self._consume(connection)
            except DECLARATION_ERRORS as exc:
                message = explain_declaration_error(exc, self.description)
                if not self._ready.done():
                    self._ready.fail(ConfigurationError(message))
                    return
                if self._stopping.is_set():
                    break
                # consumed before, so the declarations were fine then: a
                # queue's node is down, permissions were revoked, ... Keep
                # trying, with the connector's back-off, until stopped
                if refusal_intervals is None:
                    refusal_intervals = _forever(self.connector.retry_policy)
                wait = next(refusal_intervals)
                _log.error('%s\nRetrying in %s seconds.', message, wait)
                self._stopping.wait(wait)
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as exc:
                if self._stopping.is_set():
                    break
                if self.connection is not None:
                    refusal_intervals = None  # it consumed again meanwhile
                _log.warning(
                    'Lost connection to broker at %s (%s); reconnecting',
                    self.connector.safe_uri, describe_error(exc))
            finally:
                self.connection = None
                if self.publisher.blocked is not None:
                    abort(connection)  # closing would wait for the alarm
                _close_quietly(connection)
                self.publisher.detach()

    def _consume(self, connection):
        channel = connection.channel()
        self.on_connect(connection, channel)
        # from now on other threads may send callbacks to this connection
        self.connection = connection
        self.connections += 1
        self.publisher.attach(connection)
        self._ready.succeed()
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=POLL_INTERVAL)
            if self.on_poll is not None:
                self.on_poll()
        self._drain(connection)

    def _drain(self, connection):
        # a graceful stop: replies published by the last workers are
        # confirmed, and their requests acked, before the connection closes
        # (else the broker would redeliver requests that were answered)
        deadline = self._drain_deadline
        while deadline is not None and not self.publisher.settled():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _log.warning(
                    'Closing the connection of %s with publishes or acks '
                    'still unconfirmed; the broker will redeliver their '
                    'messages', self.description)
                return
            connection.process_data_events(
                time_limit=min(remaining, POLL_INTERVAL))

    @property
    def reconnects(self):
        """How many times a lost connection was replaced."""
        return max(0, self.connections - 1)

    @property
    def has_connected(self):
        """Whether a first connection has consumed (or failed for good)."""
        return self._ready.done()

    def wait_ready(self):
        """Block until the first connection consumes (or the loop was
        stopped first); raise ConfigurationError if declaring failed, or
        the connection error if ``give_up_first_connect`` gave up."""
        self._ready.wait()

    def abort_wait_ready(self):
        """Make :meth:`wait_ready` return now, from any thread; the loop
        goes on connecting until :meth:`stop`."""
        self._ready.abort()

    def call_soon(self, callback):
        """Run ``callback`` on the loop's thread; returns False if there is
        no live connection (the callback is then dropped)."""
        connection = self.connection
        if connection is None:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except CONNECTION_ERRORS:
            return False
        return True

    def call_and_wait(self, callback, timeout):
        """Run ``callback`` on the loop's thread and wait until it ran, the
        loop ended, or ``timeout`` passed; whether it ran."""
        done = threading.Event()
        with self._waiters_lock:
            self._waiters.add(done)

        def run_callback():
            try:
                callback()
            finally:
                done.set()

        if self.call_soon(run_callback):
            done.wait(timeout)
        with self._waiters_lock:
            self._waiters.discard(done)
        return done.is_set()

    def cut_if_blocked(self):
        """From any thread: while the broker blocks the connection (a
        resource alarm) it reads nothing from it, so the loop's thread can
        wait in a round trip (a consumer's cancel) for as long as the alarm
        lasts. Cut the connection's socket then, so that the thread stops
        waiting; the broker requeues what was not acked."""
        connection = self.connection
        if connection is not None and self.publisher.blocked is not None:
            abort(connection)

    def stop(self, drain_timeout=None):
        """Ask the loop to close its connection and return (from any
        thread); the owner joins the thread.

        :param drain_timeout: first wait up to this many seconds for what
            the :attr:`publisher` has in flight (publishes, their confirms
            and the acks that follow) to settle
        """
        if drain_timeout is not None:
            self._drain_deadline = time.monotonic() + drain_timeout
        self._stopping.set()
        self._ready.abort()
        self.call_soon(lambda: None)  # wake it now


class QueueConsumer(ProviderCollector, SharedExtension):
    """Consumes the queues of a container's AMQP providers.

    A provider registers in its ``setup()`` and unregisters in its
    ``stop()``/``kill()``. It needs:

    - ``queue``: a :class:`~threadko.amqp.entities.Queue` to declare and
      consume;
    - ``handle_message(body, message)``: called with the decoded body and
      the :class:`Message`; it must ack, requeue or discard the message
      eventually;
    - optionally ``handle_undecodable(message, exc)``: called instead when
      the body cannot be decoded or its content type is not accepted
      (default: log an error and discard the message);
    - optionally ``prefetch_count``: its consumer's prefetch, instead of
      the container's ``max_workers``;
    - optionally ``consume_on_consumer_thread = True``: run
      ``handle_message`` on the consumer thread itself; only for handlers
      that never block (the RPC reply listener).

    Metrics read :attr:`connected`, :attr:`reconnects`,
    :meth:`queue_stats` and :attr:`waiting` at scrape time.
    """

    #: ``fn(seconds)`` called with each confirm latency of the consumer
    #: connection's :attr:`publisher`, or None (set before :meth:`start`)
    observe_confirm = None

    def __init__(self):
        super().__init__()
        self.consumer_thread = None
        self._dispatcher_thread = None
        self._loop = None
        self._start_lock = threading.Lock()
        self._start_interrupted = False
        self._channel = None
        self._declare_channel = None
        self._live_connection = None
        self._consumer_tags = {}
        # providers to consume again, and when: {provider: (due, back-off)}
        self._resume_at = {}
        # provider -> QueueStats; the consumer thread replaces the dict
        # rather than change it, so that a scrape can read it any time
        self._queue_stats = {}
        self._dispatch_queue = None

    def setup(self):
        config = self.container.config
        heartbeat = config.get(HEARTBEAT_CONFIG_KEY, DEFAULT_HEARTBEAT)
        self.connector = Connector(config, heartbeat=heartbeat)
        self.prefetch_count = self.container.max_workers
        self.accept = serialization.accepted_content_types(
            self.container.accept)
        with self._start_lock:
            self._start_interrupted = False  # a new start-up begins

    def start(self):
        """Start the consumer thread and wait until it consumes (it
        retries connecting for as long as it takes), or until
        :meth:`interrupt_start`."""
        with self._start_lock:
            if self.consumer_thread is not None or self._start_interrupted:
                return
            self._loop = ConsumerLoop(
                self.connector, self._on_connect,
                'service {}'.format(self.container.service_name),
                on_poll=self._resume_consumers)
            self._loop.publisher.observe_confirm = self.observe_confirm
            self._queue_stats = {}
            self._dispatch_queue = queue.SimpleQueue()
            self._dispatcher_thread = self.container.spawn_managed_thread(
                self._run_dispatcher, identifier='amqp-dispatcher')
            self.consumer_thread = self.container.spawn_managed_thread(
                self._loop.run, identifier='amqp-consumer')
        self._loop.wait_ready()

    def interrupt_start(self):
        """Stop :meth:`start` waiting for the broker (the consumer thread
        goes on trying to connect until :meth:`stop` or :meth:`kill`)."""
        with self._start_lock:
            self._start_interrupted = True
            loop = self._loop
        if loop is not None:
            loop.abort_wait_ready()

    def stop(self):
        """Wait until every provider has unregistered (their workers are
        done by then), then close the connection and end both threads."""
        self.wait_for_providers()
        timeout = self.container.thread_join_timeout
        self._shutdown(join_timeout=timeout, drain_timeout=timeout / 2)

    def kill(self):
        """Close the connection now: unacked messages go back to the
        broker."""
        self._shutdown(join_timeout=1.0)

    def _shutdown(self, join_timeout, drain_timeout=None):
        if self._loop is not None:
            self._loop.stop(drain_timeout)
        dispatcher = self._dispatcher_thread
        if dispatcher is not None:
            self._dispatch_queue.put(_STOP)
        for thread in (self.consumer_thread, dispatcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(join_timeout)
        self.consumer_thread = self._dispatcher_thread = None

    @property
    def publisher(self):
        """The :class:`~threadko.amqp.loop_publish.LoopPublisher` of the
        consumer connection (None until started)."""
        loop = self._loop
        return loop.publisher if loop is not None else None

    # -- what metrics and health probes read (any thread) --------------------

    @property
    def connected(self):
        """Whether the consumer connection is up and consuming."""
        loop = self._loop
        return loop is not None and loop.connection is not None

    @property
    def reconnects(self):
        """How many times the consumer connection was lost and replaced
        since :meth:`start`."""
        loop = self._loop
        return loop.reconnects if loop is not None else 0

    def queue_stats(self):
        """The :class:`QueueStats` of every queue consumed since
        :meth:`start` (a snapshot of the list; the counts go on
        changing)."""
        return list(self._queue_stats.values())

    @property
    def waiting(self):
        """Deliveries waiting in the dispatcher thread's queue for a free
        worker (the one the dispatcher holds is not counted: it waits
        in the container's worker slots)."""
        dispatch_queue = self._dispatch_queue
        return dispatch_queue.qsize() if dispatch_queue is not None else 0

    # -- providers ---------------------------------------------------------

    def register_provider(self, provider):
        super().register_provider(provider)
        if self._loop is not None:
            # already consuming: the consumer thread, the only one allowed
            # to touch the channel, starts on it (or the next reconnect does)
            self._loop.call_soon(partial(self._consume_for, provider))

    def unregister_provider(self, provider):
        """Stop consuming for ``provider``; deliveries for it that are not
        yet in a worker are requeued."""
        if (self._loop is not None
                and threading.current_thread() is not self.consumer_thread):
            # bounded: a lost connection cancels everything anyway
            if not self._loop.call_and_wait(
                    partial(self._cancel_for, provider), POLL_INTERVAL * 5):
                self._loop.cut_if_blocked()
        super().unregister_provider(provider)

    def _is_registered(self, provider):
        with self._providers_lock:
            return provider in self._providers

    # -- consumer thread ---------------------------------------------------

    def _on_connect(self, connection, channel):
        self._live_connection = connection
        self._channel = channel
        self._declare_channel = None
        self._consumer_tags = {}
        self._resume_at = {}
        for stats in self._queue_stats.values():
            # the broker requeued what the lost connection had unacked
            stats.connection = connection
            stats.unacked = 0
        channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        providers = self.providers
        for provider in providers:
            self._consume_for(provider)
        _log.debug('%s consuming %s', self,
                   [provider.queue.name for provider in providers])

    def _consume_for(self, provider):
        channel = self._channel
        if provider in self._consumer_tags or not channel.is_open:
            return
        try:
            self._declare(provider.queue)
        except DECLARATION_ERRORS as exc:
            if not self._loop.has_connected:
                raise  # start fails with a ConfigurationError
            # the queue alone is unavailable (say, a classic queue whose
            # node is down): the other queues go on being consumed
            self._resume_later(provider, exc)
            return
        channel.basic_qos(prefetch_count=getattr(
            provider, 'prefetch_count', None) or self.prefetch_count)
        stats = self._queue_stats.get(provider)
        if stats is None:
            stats = QueueStats(provider.queue.name, self._live_connection)
            self._queue_stats = {**self._queue_stats, provider: stats}
        self._consumer_tags[provider] = basic_consume(
            channel, provider.queue.name,
            partial(self._on_message, provider, stats))
        self._resume_at.pop(provider, None)

    def _declare(self, queue):
        # on a channel of its own, so that a refused declaration closes
        # that channel and not the one every consumer is on
        channel = self._declare_channel
        if channel is None or not channel.is_open:
            channel = self._declare_channel = self._live_connection.channel()
        queue.declare(channel)

    def _on_cancelled_by_broker(self, method_frame):
        # the queue was deleted, or its node went down or lost leadership:
        # consume it again (redeclaring it) rather than wait forever
        tag = method_frame.method.consumer_tag
        for provider, consumer_tag in list(self._consumer_tags.items()):
            if consumer_tag == tag:
                del self._consumer_tags[provider]
                _log.warning(
                    'The broker cancelled the consumer of queue %s (the '
                    'queue was deleted or its node is gone); consuming it '
                    'again', provider.queue.name)
                self._resume_at[provider] = (time.monotonic(), None)

    def _resume_later(self, provider, exc):
        _, intervals = self._resume_at.get(provider, (None, None))
        if intervals is None:
            intervals = _forever(self.connector.retry_policy)
        wait = next(intervals)
        _log.error('Cannot consume queue %s: %s; retrying in %s seconds',
                   provider.queue.name,
                   explain_declaration_error(exc, self._loop.description),
                   wait)
        self._resume_at[provider] = (time.monotonic() + wait, intervals)

    def _resume_consumers(self):
        """Consume again the queues whose consumer the broker cancelled
        or whose declaration it refused, once their time has come."""
        if not self._resume_at:
            return
        now = time.monotonic()
        for provider, (due, _) in list(self._resume_at.items()):
            if due > now:
                continue
            if not self._is_registered(provider):
                del self._resume_at[provider]
                continue
            self._consume_for(provider)

    def _cancel_for(self, provider):
        self._resume_at.pop(provider, None)
        tag = self._consumer_tags.pop(provider, None)
        if self._loop.publisher.blocked is not None:
            # the broker reads nothing from a blocked connection: its
            # cancel-ok would wait for the alarm to clear (the stop cuts
            # the connection instead)
            return
        if tag is not None and self._channel.is_open:
            self._channel.basic_cancel(tag)

    def _on_message(self, provider, stats, channel, method, properties,
                    body):
        stats.deliveries += 1
        if method.redelivered:
            stats.redeliveries += 1
        stats.unacked += 1
        message = Message(self.consumer_thread, self._live_connection,
                          channel, method, properties, body,
                          self._loop.publisher.run_in_poll, stats)
        if not self._is_registered(provider):
            message.requeue()
        elif getattr(provider, 'consume_on_consumer_thread', False):
            self._deliver(provider, message)
        elif not self._deliver_if_worker_free(provider, message):
            self._dispatch_queue.put((provider, message))

    def _deliver_if_worker_free(self, provider, message):
        """Hand the message to a worker straight from this thread when one
        is free and nothing waits before it (saves a thread switch); the
        dispatcher thread does the waiting otherwise."""
        if not self._dispatch_queue.empty():
            return False
        with self.container.reserved_worker_slot() as reserved:
            if reserved:
                self._deliver(provider, message)
            return reserved

    # -- dispatcher thread -------------------------------------------------

    def _run_dispatcher(self):
        while True:
            item = self._dispatch_queue.get()
            if item is _STOP:
                return
            provider, message = item
            if not self._is_registered(provider):
                message.requeue()
                continue
            self._deliver(provider, message)

    def _deliver(self, provider, message):
        try:
            body = message.decode(self.accept)
        except (serialization.ContentDisallowed,
                serialization.DecodeError) as exc:
            handler = getattr(provider, 'handle_undecodable', None)
            if handler is not None:
                handler(message, exc)
            else:
                _log.error('Discarding %s for %s: %s',
                           message, provider, exc)
                message.discard()
            return
        try:
            provider.handle_message(body, message)
        except Exception:
            # a bug in the provider, not bad input: keep consuming, but do
            # not redeliver a message that breaks the provider
            _log.exception('Discarding %s: %s failed to handle it',
                           message, provider)
            message.discard()


class _Ready:
    """The consumer thread's first-connection outcome, waited on by
    ``start()``."""

    def __init__(self):
        self._event = threading.Event()
        self._done = False
        self._error = None

    def done(self):
        """Whether the first connection succeeded or failed for good."""
        return self._done

    def succeed(self):
        self._done = True
        self._event.set()

    def fail(self, error):
        self._error = error
        self._done = True
        self._event.set()

    def abort(self):
        """Release :meth:`wait` without an outcome (the loop is stopping,
        or its owner stopped waiting)."""
        self._event.set()

    def wait(self):
        self._event.wait()
        if self._error is not None:
            raise self._error


def _forever(policy):
    """The consumer's reconnection back-off: the policy's intervals, then
    its maximum interval forever."""
    yield from policy._replace(max_retries=None).intervals()


def _close_quietly(connection):
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        _log.debug('error closing consumer connection', exc_info=True)
