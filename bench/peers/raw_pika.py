"""The raw-pika floor: the same RPC and event work as threadko and Nameko,
in plain pika. ``raw_pika_peer.py`` runs it as a benchmark peer.

"The simplest correct pika implementation" of what a Nameko 2.14 service and
its callers put on the wire (docs: nameko-wire-protocol.md §4-§6): one
``BlockingConnection`` per party, JSON bodies, persistent messages, publisher
confirms, requests published ``mandatory``, replies to the ``nameko-rpc``
exchange keyed by the request's ``reply_to`` with its ``correlation_id``,
and acks after the handler (after the reply, for RPC).
"""

import json
import threading
import time
import uuid

import pika
import pika.exceptions

RPC_EXCHANGE = 'nameko-rpc'
REPLY_QUEUE_TTL = 300000  # ms, as Nameko's reply queues
JSON = 'application/json'
DEFAULT_URI = 'amqp://guest:guest@localhost'
EVENT_EXCHANGE = 'raw_source.events'
EVENT_TYPE = 'raw_event'
START_TIMEOUT = 30  # seconds for a connection to be up and consuming


def connection_parameters(uri):
    """pika parameters for an ``amqp://`` (or Nameko's ``pyamqp://``) URI."""
    if uri.startswith('pyamqp'):
        uri = uri[2:]
    if not uri.startswith('amqp'):
        raise ValueError('raw pika needs an amqp:// URI, not {!r}'.format(uri))
    return pika.URLParameters(uri)


def _properties(**kwargs):
    return pika.BasicProperties(
        content_type=JSON, content_encoding='utf-8', delivery_mode=2,
        priority=0, **kwargs)


def _error(exc_type, exc_path, value):
    return {'exc_type': exc_type, 'exc_path': exc_path,
            'exc_args': [value], 'value': value}


class RawRemoteError(Exception):
    """An RPC reply carried an error object (the dict is ``args[0]``)."""


class _ConsumingThread:
    """A pika ``BlockingConnection`` consuming on a thread of its own.

    Subclasses declare and ``basic_consume`` in :meth:`_setup`; their
    callbacks run on that thread. ``stop()`` hands ``stop_consuming`` to the
    thread (pika objects never cross threads), so a message being handled
    is finished (replied to and acked) before the connection closes.
    """

    def __init__(self, uri, thread_name):
        self._parameters = connection_parameters(uri)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = False
        self._connection = None
        self._channel = None
        self._start_error = None
        self.error = None  # what ended the thread early, if anything
        self._thread = threading.Thread(
            target=self._run, name=thread_name, daemon=True)

    def start(self, timeout=START_TIMEOUT):
        """Connect, declare and start consuming; return once consuming.

        :raises: whatever connecting or declaring raised, or
            ``TimeoutError`` if that took longer than ``timeout`` seconds.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError('not consuming after {}s'.format(timeout))
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self, timeout=START_TIMEOUT):
        """Stop consuming, close the connection and join the thread."""
        with self._lock:
            self._stopping = True
            connection, channel = self._connection, self._channel
        if connection is not None:
            try:
                connection.add_callback_threadsafe(channel.stop_consuming)
            except pika.exceptions.AMQPError:
                pass  # the connection is already closed: the thread ends
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _setup(self, channel):
        raise NotImplementedError

    def _run(self):
        connection = None
        try:
            connection = pika.BlockingConnection(self._parameters)
            channel = connection.channel()
            self._setup(channel)
            with self._lock:
                if self._stopping:
                    return
                self._connection, self._channel = connection, channel
            self._ready.set()
            channel.start_consuming()
        except BaseException as exc:
            if self._ready.is_set():
                self.error = exc
            else:
                self._start_error = exc
        finally:
            self._ready.set()
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError:
                    pass


class RawRpcServer(_ConsumingThread):
    """An echo RPC service in plain pika, on a thread of its own.

    Declares the ``nameko-rpc`` topic exchange and the service queue as
    Nameko does (durable, no arguments, bound with ``<svc>.*`` where
    ``<svc>`` is ``queue`` without its ``rpc-`` prefix) and consumes it with
    ``prefetch`` unacked requests at most. ``<svc>.echo(value)`` replies
    ``{"result": value, "error": null}``; other methods get a
    ``MethodNotFound`` error object. One channel, in confirm mode: each reply
    is published persistent and confirmed, then the request is acked.
    """

    def __init__(self, uri, queue='rpc-raw_echo', prefetch=10):
        super().__init__(uri, 'threadko-raw-rpc-server')
        self.queue = queue
        self.service_name = queue[len('rpc-'):] if queue.startswith(
            'rpc-') else queue
        self.prefetch = prefetch
        self._echo_key = self.service_name + '.echo'

    def _setup(self, channel):
        channel.exchange_declare(RPC_EXCHANGE, 'topic', durable=True)
        channel.queue_declare(self.queue, durable=True)
        channel.queue_bind(self.queue, RPC_EXCHANGE, self.service_name + '.*')
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.basic_consume(self.queue, self._on_request)

    def _on_request(self, channel, method, properties, body):
        if properties.reply_to is None:  # nobody to answer
            channel.basic_ack(method.delivery_tag)
            return
        try:
            if method.routing_key != self._echo_key:
                name = method.routing_key.rpartition('.')[2]
                reply = {'result': None, 'error': _error(
                    'MethodNotFound', 'nameko.exceptions.MethodNotFound',
                    name)}
            else:
                reply = {'result': json.loads(body)['args'][0],
                         'error': None}
        except Exception as exc:  # a malformed request
            reply = {'result': None, 'error': _error(
                type(exc).__name__, 'builtins.' + type(exc).__name__,
                str(exc))}
        channel.basic_publish(
            RPC_EXCHANGE, properties.reply_to, json.dumps(reply),
            _properties(correlation_id=properties.correlation_id, headers={}))
        channel.basic_ack(method.delivery_tag)


class RawEventConsumer(_ConsumingThread):
    """Consumes JSON events of ``event_type`` from the topic ``exchange`` on
    a thread of its own (prefetch ``prefetch``, ack after handling), and
    sets :attr:`done` (and calls ``on_done()``, on its thread) once ``n``
    events have been handled.

    The queue is declared as a Nameko ``SERVICE_POOL`` handler's with
    reliable delivery (durable, not auto-delete), and purged when consuming
    starts so that a backlog from an earlier run is not counted.
    """

    def __init__(self, uri, n, exchange=EVENT_EXCHANGE, queue=None,
                 event_type=EVENT_TYPE, prefetch=10, on_done=None):
        super().__init__(uri, 'threadko-raw-event-consumer')
        self.n = n
        self.exchange = exchange
        self.event_type = event_type
        self.queue = queue or 'evt-{}-{}--raw_consumer.handle'.format(
            exchange.rpartition('.events')[0] or exchange, event_type)
        self.prefetch = prefetch
        self.count = 0
        self.done = threading.Event()
        self._on_done = on_done

    def _setup(self, channel):
        channel.exchange_declare(self.exchange, 'topic', durable=True)
        channel.queue_declare(self.queue, durable=True)
        channel.queue_bind(self.queue, self.exchange, self.event_type)
        channel.queue_purge(self.queue)
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.basic_consume(self.queue, self._on_event)

    def _on_event(self, channel, method, properties, body):
        json.loads(body)  # the handler: decode, count
        self.count += 1
        channel.basic_ack(method.delivery_tag)
        if self.count == self.n:
            self.done.set()
            if self._on_done is not None:
                self._on_done()


def raw_publish_events(uri, n, exchange=EVENT_EXCHANGE, event_type=EVENT_TYPE,
                       payload='payload'):
    """Publish ``n`` JSON events to the topic ``exchange`` (declared first,
    as Nameko's dispatcher does), persistent and each confirmed.

    :returns: ``time.monotonic()`` just before the first publish (after
        connecting and declaring).
    """
    connection = pika.BlockingConnection(connection_parameters(uri))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, 'topic', durable=True)
        channel.confirm_delivery()
        body = json.dumps(payload)
        properties = _properties(headers={})
        start = time.monotonic()
        for _ in range(n):
            channel.basic_publish(exchange, event_type, body, properties)
        return start
    finally:
        connection.close()


class RawRpcClient:
    """An RPC caller in plain pika, used from one thread (the caller's).

    Declares its reply queue ``rpc.reply-raw-<uuid>`` (durable,
    ``x-expires`` 5 min, bound to ``nameko-rpc`` with the uuid) and consumes
    it (manual acks, no QoS, as Nameko's standalone proxy). Requests go to
    ``target`` (``<service>.<method>``) with ``{"args": [value], "kwargs":
    {}}``, persistent, ``mandatory``, confirmed, with ``reply_to`` and a
    fresh ``correlation_id``, and a ``nameko.call_id_stack`` header.
    """

    def __init__(self, uri, target='raw_echo.echo'):
        self.target = target
        self._connection = pika.BlockingConnection(connection_parameters(uri))
        try:
            self._channel = channel = self._connection.channel()
            self.reply_key = str(uuid.uuid4())
            self.reply_queue = 'rpc.reply-raw-' + self.reply_key
            channel.exchange_declare(RPC_EXCHANGE, 'topic', durable=True)
            channel.queue_declare(
                self.reply_queue, durable=True,
                arguments={'x-expires': REPLY_QUEUE_TTL})
            channel.queue_bind(self.reply_queue, RPC_EXCHANGE, self.reply_key)
            channel.confirm_delivery()
            channel.basic_consume(self.reply_queue, self._on_reply)
        except BaseException:
            self._connection.close()
            raise
        self._headers = {'nameko.call_id_stack': [
            'raw_rpc_client.call.{}'.format(uuid.uuid4())]}
        self._waiting = set()  # correlation ids of calls in flight
        self._replies = {}  # correlation id -> reply body

    def close(self):
        """Close the connection (the reply queue expires later)."""
        if self._connection.is_open:
            self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def call(self, value, timeout=30):
        """Call ``target(value)`` and wait for its result.

        :raises RawRemoteError: the reply carried an error.
        :raises pika.exceptions.UnroutableError: no queue for ``target``.
        :raises TimeoutError: no reply within ``timeout`` seconds.
        """
        correlation_id = self._publish(value)
        deadline = time.monotonic() + timeout
        try:
            while correlation_id not in self._replies:
                self._wait_for_replies(deadline)
        except BaseException:
            self._forget([correlation_id])
            raise
        return self._result(correlation_id)

    def call_many(self, values, in_flight=32, timeout=30):
        """Call ``target`` once per value, keeping up to ``in_flight``
        calls in flight; return the results in the order of ``values``.
        ``timeout`` bounds the wait for any one reply."""
        results = [None] * len(values)
        for index, result in self._pipeline(
                iter(enumerate(values)), in_flight, timeout):
            results[index] = result
        return results

    def call_for(self, duration, in_flight=32, value='payload', timeout=30):
        """Call ``target(value)`` with ``in_flight`` calls in flight for
        ``duration`` seconds (then let the calls in flight finish); return
        the number of calls made."""
        deadline = time.monotonic() + duration

        def calls():
            while time.monotonic() < deadline:
                yield None, value
        return sum(1 for _ in self._pipeline(calls(), in_flight, timeout))

    def _pipeline(self, calls, in_flight, timeout):
        # yields (key, result) as replies come in, refilling from `calls`
        pending = {}  # correlation id -> key
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < in_flight:
                    try:
                        key, value = next(calls)
                    except StopIteration:
                        exhausted = True
                    else:
                        pending[self._publish(value)] = key
                if not pending:
                    return
                if not self._replies:
                    self._wait_for_replies(time.monotonic() + timeout)
                for correlation_id in list(self._replies):
                    key = pending.pop(correlation_id)
                    yield key, self._result(correlation_id)
        finally:
            self._forget(pending)

    def _publish(self, value):
        correlation_id = str(uuid.uuid4())
        self._waiting.add(correlation_id)
        try:
            self._channel.basic_publish(
                RPC_EXCHANGE, self.target,
                json.dumps({'args': [value], 'kwargs': {}}),
                _properties(correlation_id=correlation_id,
                            reply_to=self.reply_key, headers=self._headers),
                mandatory=True)
        except BaseException:
            self._waiting.discard(correlation_id)
            raise
        return correlation_id

    def _forget(self, correlation_ids):
        # calls given up on: their replies, now or later, are dropped
        for correlation_id in correlation_ids:
            self._waiting.discard(correlation_id)
            self._replies.pop(correlation_id, None)

    def _wait_for_replies(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError('no reply in time')
        # returns as soon as something was dispatched (or time is up)
        self._connection.process_data_events(time_limit=remaining)

    def _on_reply(self, channel, method, properties, body):
        if properties.correlation_id in self._waiting:
            self._replies[properties.correlation_id] = body
        channel.basic_ack(method.delivery_tag)

    def _result(self, correlation_id):
        self._waiting.discard(correlation_id)
        reply = json.loads(self._replies.pop(correlation_id))
        if reply['error']:
            raise RawRemoteError(reply['error'])
        return reply['result']


