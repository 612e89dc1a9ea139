"""RPC over AMQP, wire-compatible with Nameko.

Serving: ``@rpc`` methods of a service share the queue ``rpc-<service>``,
bound to the topic exchange ``nameko-rpc`` (config ``rpc_exchange``) with
``<service>.*``. A request's routing key names the method, its body is
``{"args": [...], "kwargs": {...}}``; the reply goes to the same exchange
with the request's ``reply_to`` as routing key and its ``correlation_id``,
body ``{"result": ..., "error": ...}``. The request is acked after the
reply is published.

Calling from a service: ``RpcProxy("other")`` (alias ``ServiceRpc``) injects
a proxy whose calls block for the reply; ``ClusterRpc()`` injects one for
any service. Replies arrive on the container's reply queue, consumed by its
consumer thread, and are matched to callers by correlation id, so any
number of workers may wait at once.
"""

import logging
import os
import sys
import threading
import time
import uuid
from functools import partial

import pika.exceptions

from threadko.amqp.consumer import QueueConsumer
from threadko.amqp.entities import Exchange, Queue, shared_queue_arguments
from threadko.amqp.headers import encode_to_headers
from threadko.amqp.loop_publish import PublishNacked, PublishNotConfirmed
from threadko.amqp.publish import (
    Publisher, SharedProducerPool, publish_blocked_timeout,
)
from threadko.constants import (
    DEFAULT_PUBLISH_BLOCKED_TIMEOUT, DEFAULT_RPC_TIMEOUT, DEFAULT_SERIALIZER,
    RPC_EXCHANGE_CONFIG_KEY, RPC_TIMEOUT_CONFIG_KEY,
)
from threadko.exceptions import (
    BrokerRefused, ContainerBeingKilled, ForkedClientError,
    IncorrectSignature, MalformedRequest, MethodNotFound,
    ReplyQueueExpiredWithPendingReplies, RpcTimeout, UndeliverableMessage,
    UnknownService, UnserializableValueError, deserialize, serialize,
)
from threadko.extensions import (
    DependencyProvider, Entrypoint, ProviderCollector, SharedExtension,
)
from threadko.messaging import HeaderDecoder
from threadko.observability import tracer_for
from threadko.utils import fork
from threadko.utils.ids import random_uuid
from threadko import serialization

_log = logging.getLogger(__name__)

DEFAULT_RPC_EXCHANGE = 'nameko-rpc'
#: reply queues expire 5 minutes after their consumer went away (ms)
RPC_REPLY_QUEUE_TTL = 300000
#: options that a caller cannot override: the RPC protocol sets them
RESTRICTED_PUBLISHER_OPTIONS = (
    'exchange', 'routing_key', 'mandatory', 'reply_to', 'correlation_id')


def get_rpc_exchange(config):
    """The RPC exchange declaration for ``config``."""
    name = config.get(RPC_EXCHANGE_CONFIG_KEY) or DEFAULT_RPC_EXCHANGE
    return Exchange(name, type='topic', durable=True, auto_delete=False)


def reply_queue(exchange, owner_name, reply_key):
    """The reply queue ``rpc.reply-<owner>-<key>`` bound with ``<key>``:
    durable, as Nameko's, so that replies published while its owner
    reconnects to a restarting broker wait for it. In a cluster, a classic
    queue whose node is down (or stopping) can be neither used nor
    declared again until the node is back: its owner then takes a new one
    (see :func:`declare_reply_queue_anew`)."""
    return Queue(
        'rpc.reply-{}-{}'.format(owner_name, reply_key),
        exchange=exchange, routing_key=reply_key,
        queue_arguments={'x-expires': RPC_REPLY_QUEUE_TTL})


def reply_queue_lost(connection, queue_name):
    """Whether the reply queue ``queue_name`` no longer exists (checked
    passively, on a channel of its own: the broker closes the channel of a
    failed check)."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue_name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return True
    channel.close()
    return False


def declare_reply_queue_anew(channel, queue, renew, registry):
    """Declare ``queue`` again after a reconnect (on a channel of its own,
    beside ``channel``) and return the queue to consume.

    First, when calls are waiting for replies, check that the queue
    survived: if it was deleted or expired meanwhile, their replies are
    lost, and the calls fail at once with
    :class:`~threadko.exceptions.ReplyQueueExpiredWithPendingReplies`
    instead of waiting forever (or until their timeout). Then, if the
    broker answers 404 to the declaration or to a consumer, the queue lives
    on a node that is down or stopping ("home node ... is down", "process
    is stopped by supervisor") and cannot be used until that node is back:
    declare ``renew()`` (a queue with a new name) instead, fail the calls
    waiting for replies on the old one, and return the new queue."""
    if len(registry) and reply_queue_lost(channel.connection, queue.name):
        _log.warning('Reply queue %s was lost with %s call(s) waiting; '
                     'failing them', queue.name, len(registry))
        registry.fail_all(lost_replies_error(queue.name))
    refusal = _unusable(channel.connection, queue)
    if refusal is None:
        return queue
    fresh = renew()
    _log.warning('Reply queue %s cannot be declared again (%s); replies '
                 'now go to %s', queue.name, refusal, fresh.name)
    registry.fail_all(lost_replies_error(queue.name))
    spare = channel.connection.channel()
    fresh.declare(spare)
    spare.close()
    return fresh


def _unusable(connection, queue):
    """Declare ``queue`` and check that it can be consumed, on a channel of
    its own; the broker's 404 if it cannot (a durable queue on a node that
    is stopping can be declared and then refuses consumers), else None."""
    probe = connection.channel()
    try:
        queue.declare(probe)
        probe.basic_cancel(probe.basic_consume(
            queue.name, lambda *delivery: None))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return exc
    finally:
        if probe.is_open:
            probe.close()  # anything delivered meanwhile is requeued
    return None


def lost_replies_error(queue_name):
    """What the calls waiting for replies on a lost reply queue raise."""
    return ReplyQueueExpiredWithPendingReplies(
        'The reply queue {} disappeared (it expired or was deleted while '
        'its connection was down) while calls were waiting for their '
        'replies; those replies are lost. The calls may or may not have '
        'run: call again if that is safe.'.format(queue_name))


# -- serving ---------------------------------------------------------------


class Responder:
    """Publishes the reply to one request message.

    :param publisher: the :class:`~threadko.amqp.publish.Publisher` that
        encodes the reply
    :param loop_publisher: when given, the reply is published on the
        consumer connection without waiting for its confirm (see
        :mod:`threadko.amqp.loop_publish`); else through ``publisher``
    """

    def __init__(self, publisher, exchange_name, message, serializer=None,
                 loop_publisher=None):
        self.publisher = publisher
        self.exchange_name = exchange_name
        self.message = message
        self.serializer = serializer
        self.loop_publisher = loop_publisher

    def send_response(self, result, exc_info, on_done=None):
        """Publish ``result`` or the error in ``exc_info``; return the
        ``(result, exc_info)`` that was sent (an unserialisable result is
        replaced by an :class:`UnserializableValueError`).

        ``on_done(error)`` is called once the reply is confirmed (``error``
        None) or could not be published: at once with the pool publisher
        (whose errors raise instead, but for a refusal), later with the
        loop publisher. No reply is sent, and ``on_done(None)`` is called at
        once, for a request without ``reply_to``; for a reply the broker
        refuses, see :meth:`_publish`.
        """
        properties = self.message.properties
        reply_to = properties.reply_to
        if not reply_to:
            _log.error('Cannot reply to %s: the request has no reply_to',
                       self.message)
            if on_done is not None:
                on_done(None)
            return result, exc_info

        serializer = self.serializer
        if serializer is None:
            # reply in the request's own encoding (Nameko does the same)
            codec = serialization.serializer_for(properties.content_type)
            serializer = codec.name if codec else DEFAULT_SERIALIZER

        error = None
        if exc_info is not None:
            error = self._serialize_error(exc_info[1])
        prepare = partial(
            self.publisher.prepare, exchange=self.exchange_name,
            routing_key=reply_to, serializer=serializer,
            correlation_id=properties.correlation_id)
        try:
            outgoing = prepare({'result': result, 'error': error})
        except serialization.EncodeError:
            exc = UnserializableValueError(result)
            _log.error('Cannot reply to %s: %s', self.message, exc)
            result = None
            exc_info = (type(exc), exc, None)
            outgoing = prepare({'result': None, 'error': serialize(exc)})

        self._publish(outgoing, on_done, prepare)
        return result, exc_info

    def _publish(self, outgoing, on_done, prepare, attempt=1):
        """Publish ``outgoing``, then ``on_done(error)``.

        A reply the broker refuses (:class:`BrokerRefused`: over its
        maximum message size, say) would be refused again whenever the
        request is redelivered, so it is not requeued. The refusal closes
        the channel, failing every reply in flight on it, so the reply is
        first published once more; refused again, the caller gets an error
        reply naming the refusal instead, and if even that is refused the
        request is dropped (acked) with an error logged.

        A reply the broker nacks (the caller's reply queue is on a node
        going down, say) is published once more; nacked again, it is
        dropped and the request acked, with an error logged: running the
        method again would not bring the reply queue back, and would
        repeat its effects in a tight loop.
        """
        def settled(error):
            if isinstance(error, PublishNacked):
                if attempt == 1:
                    self._publish(outgoing, on_done, prepare, attempt=2)
                    return
                _log.error('The broker refused (nacked) the reply to %s '
                           'twice; dropping it (the caller\'s reply queue '
                           'is unavailable, so the caller will see its '
                           'call fail or time out)', self.message)
                error = None
            if not isinstance(error, BrokerRefused):
                if on_done is not None:
                    on_done(error)
            elif attempt == 1:
                self._publish(outgoing, on_done, prepare, attempt=2)
            elif attempt == 2:
                _log.error('The broker refused the reply to %s (%s); '
                           'replying with that error instead',
                           self.message, error)
                self._publish(prepare({'result': None,
                                       'error': serialize(error)}),
                              on_done, prepare, attempt=3)
            else:
                _log.error('The broker refused the error reply to %s too '
                           '(%s); dropping the request', self.message, error)
                if on_done is not None:
                    on_done(None)

        loop_publisher = self.loop_publisher
        if loop_publisher is not None and outgoing.can_publish_on_loop:
            loop_publisher.publish(
                outgoing.exchange, outgoing.routing_key, outgoing.body,
                outgoing.properties, outgoing.mandatory, settled)
            return
        try:
            self.publisher.send(outgoing)
        except BrokerRefused as exc:
            settled(exc)
        else:
            settled(None)

    def _serialize_error(self, exc):
        """The wire form of ``exc``; for one that cannot be serialised
        (``safe_for_serialization`` fails on its arguments), that of an
        :class:`UnserializableValueError` naming it, as for a result."""
        try:
            return serialize(exc)
        except Exception as error:
            substitute = UnserializableValueError(exc)
            _log.error('Cannot serialise the exception that %s raised (%s: '
                       '%s); replying with %s', self.message,
                       type(error).__name__, error, substitute)
            return serialize(substitute)


class RpcConsumer(ProviderCollector, SharedExtension):
    """Consumes the service's request queue for all its ``@rpc``
    entrypoints and routes each request to the one its routing key
    names."""

    queue_consumer = QueueConsumer()
    producers = SharedProducerPool()

    def setup(self):
        config = self.container.config
        service_name = self.container.service_name
        self.exchange = get_rpc_exchange(config)
        # shared by the service's instances: a quorum queue if QUEUE_TYPE
        # says so (classic and without arguments by default, as Nameko's)
        self.queue = Queue(
            'rpc-{}'.format(service_name), exchange=self.exchange,
            routing_key='{}.*'.format(service_name), durable=True,
            queue_arguments=shared_queue_arguments(config))
        self.publisher = Publisher(self.producers.pool)
        self.queue_consumer.register_provider(self)

    def stop(self):
        """Wait for every ``@rpc`` entrypoint to unregister (which stops
        consuming requests) before stopping."""
        self.wait_for_providers()

    def unregister_provider(self, provider):
        with self._providers_lock:
            last = self._providers == {provider}
        if last:
            # stop taking requests as soon as the last entrypoint stops
            self.queue_consumer.unregister_provider(self)
        super().unregister_provider(provider)

    def get_provider_for_method(self, routing_key):
        method_name = routing_key.split('.')[-1]
        with self._providers_lock:
            for provider in self._providers:
                if provider.method_name == method_name:
                    return provider
        raise MethodNotFound(method_name)

    def handle_message(self, body, message):
        try:
            provider = self.get_provider_for_method(message.routing_key)
            provider.handle_message(body, message)
        except (MethodNotFound, MalformedRequest, IncorrectSignature):
            self.reply_then_ack(message, None, sys.exc_info())

    def handle_undecodable(self, message, exc):
        _log.warning('Malformed RPC request %s: %s', message, exc)
        # the caller's encoding is the problem: answer in our own
        self.reply_then_ack(message, None,
                            _exc_info(MalformedRequest(str(exc))),
                            serializer=self.container.serializer)

    def reply_then_ack(self, message, result, exc_info, serializer=None):
        """Reply to ``message``, then ack it once the broker confirmed the
        reply (Nameko's order): if the process dies between the two, the
        request is redelivered rather than lost. A reply that cannot be
        published gets the request requeued.

        The reply goes out on the connection the request came in on, from
        its consumer thread, and the caller does not wait for the confirm:
        if that connection is lost first, the broker requeues the request.

        :returns: the ``(result, exc_info)`` that was sent
        """
        responder = Responder(
            self.publisher, self.exchange.name, message, serializer,
            loop_publisher=self.queue_consumer.publisher)

        def on_done(error):
            if error is None:
                message.ack()
            else:
                _log.error('Could not publish the reply to %s (%s); '
                           'requeueing it', message, error)
                message.requeue()
        try:
            return responder.send_response(result, exc_info, on_done)
        except Exception:
            _log.exception(
                'Could not publish the reply to %s; requeueing it', message)
            message.requeue()
            return result, exc_info


class Rpc(Entrypoint, HeaderDecoder):
    """The ``@rpc`` entrypoint: exposes a method to RPC callers.

    :param expected_exceptions: exception types the caller may cause;
        logged at WARNING instead of ERROR
    :param sensitive_arguments: argument paths to redact in logs
    """

    rpc_consumer = RpcConsumer()

    def setup(self):
        self.rpc_consumer.register_provider(self)

    def stop(self):
        self.rpc_consumer.unregister_provider(self)

    def kill(self):
        self.rpc_consumer.unregister_provider(self)

    def handle_message(self, body, message):
        try:
            args = body['args']
            kwargs = body['kwargs']
        except (KeyError, TypeError):
            raise MalformedRequest('Message missing `args` or `kwargs`')
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise MalformedRequest(
                '`args` must be an array and `kwargs` an object')

        self.check_signature(args, kwargs)

        context_data = self.unpack_message_headers(message)
        handle_result = partial(self.handle_result, message)
        try:
            self.container.spawn_worker(
                self, args, kwargs, context_data=context_data,
                handle_result=handle_result, origin=message)
        except ContainerBeingKilled:
            message.requeue()

    def handle_result(self, message, worker_ctx, result, exc_info):
        """Reply, then ack (see :meth:`RpcConsumer.reply_then_ack`)."""
        return self.rpc_consumer.reply_then_ack(message, result, exc_info)


rpc = Rpc.decorator


def _exc_info(exc):
    return (type(exc), exc, exc.__traceback__)


# -- calling ---------------------------------------------------------------


class _Gate:
    """A one-way signal from one thread to waiters: a bare lock, held
    while closed. Cheaper than :class:`threading.Event`, whose ``set``
    goes through a Python-level condition on every reply."""

    __slots__ = ('_lock',)

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()

    def open(self):
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already open

    def close(self):
        self._lock.acquire(blocking=False)

    def wait(self, timeout=None):
        """Wait until open (or ``timeout`` seconds); whether it is."""
        if self._lock.acquire(timeout=-1 if timeout is None else timeout):
            try:
                self._lock.release()  # stay open for later waits
            except RuntimeError:
                pass  # a second open() came in between
            return True
        return False


class PendingReply:
    """Where one call's reply body arrives (from the reply consumer's
    thread) and its caller waits for it. The request's publish outcome
    arrives here too when it is published without waiting (see
    :mod:`threadko.amqp.loop_publish`): a failure wakes the caller."""

    __slots__ = ('_arrived', 'body', 'error', 'publish_error', '_confirmed',
                 'trace')

    def __init__(self):
        self._arrived = _Gate()
        self.body = None
        self.error = None
        self.publish_error = None
        self._confirmed = None  # a _Gate, for callers that wait for it
        #: the call's client span when tracing (``finish(error)`` ends it)
        self.trace = None

    def set(self, body):
        self.body = body
        if self.trace is not None:
            error = body.get('error') if isinstance(body, dict) else None
            self.trace.finish(error)
        self._arrived.open()

    def fail(self, error):
        self.error = error
        if self.trace is not None:
            self.trace.finish(error)
        self._arrived.open()

    def published(self, error):
        """The request's publish outcome (``error`` None: confirmed)."""
        if error is not None:
            self.publish_error = error
            self._arrived.open()
        confirmed = self._confirmed
        if confirmed is not None:
            confirmed.open()

    def expect_confirm(self):
        """Before publishing: make :meth:`wait_published` possible."""
        self._confirmed = _Gate()

    def wait_published(self):
        self._confirmed.wait()

    def wait(self, timeout=None):
        return self._arrived.wait(timeout)

    def rearm(self):
        """Forget a publish failure that the caller has dealt with."""
        self.publish_error = None
        self._arrived.close()
        if self.body is not None or self.error is not None:
            self._arrived.open()  # the reply came meanwhile


class ReplyRegistry:
    """Thread-safe map of correlation id -> :class:`PendingReply`."""

    def __init__(self):
        self._pending = {}
        self._lock = threading.Lock()

    def register(self, correlation_id):
        pending = PendingReply()
        with self._lock:
            self._pending[correlation_id] = pending
        return pending

    def discard(self, correlation_id):
        with self._lock:
            self._pending.pop(correlation_id, None)

    def resolve(self, correlation_id, body):
        """Deliver a reply body; returns False for an unknown id (a late
        reply of a call that timed out, say)."""
        with self._lock:
            pending = self._pending.pop(correlation_id, None)
        if pending is None:
            return False
        pending.set(body)
        return True

    def fail_all(self, error):
        """Wake every waiting caller with ``error``."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for item in pending.values():
            item.fail(error)

    def __len__(self):
        with self._lock:
            return len(self._pending)


class RpcReply:
    """The reply of an asynchronous call (``method.call_async(...)``).

    :meth:`result` blocks until the reply arrives, then returns the result
    or raises the remote exception; later calls return (or raise) the same.
    """

    def __init__(self, pending, client, correlation_id, outgoing,
                 service_name, timeout=None):
        self._pending = pending
        self._client = client
        self._correlation_id = correlation_id
        self._outgoing = outgoing
        self._service_name = service_name
        self._timeout = timeout

    @property
    def correlation_id(self):
        return self._correlation_id

    def result(self):
        pending = self._pending
        deadline = (None if self._timeout is None
                    else time.monotonic() + self._timeout)
        try:
            while True:
                timeout = (None if deadline is None
                           else max(0.0, deadline - time.monotonic()))
                if not pending.wait(timeout):
                    raise RpcTimeout(self._timeout)
                if pending.error is not None or pending.body is not None:
                    break
                # the request was not published: publish it again, or fail
                self._client.handle_publish_error(
                    pending, self._outgoing, self._service_name)
        except BaseException as exc:  # KeyboardInterrupt, say: stop waiting
            self._client.registry.discard(self._correlation_id)
            if pending.trace is not None:
                pending.trace.finish(exc)
            raise
        if pending.error is not None:
            raise pending.error
        body = pending.body
        if body.get('error'):
            raise deserialize(body['error'])
        return body.get('result')


class RpcClient:
    """What every proxy needs to make calls: a publisher, the RPC exchange,
    the reply registry and this caller's reply routing key.

    :param get_loop_publisher: returns the
        :class:`~threadko.amqp.loop_publish.LoopPublisher` of the connection
        that consumes the replies (or None): requests are published there
        without a thread waiting for each confirm. Else, and to publish a
        request again after that connection was lost, ``publisher`` is used
        (with its retry policy).
    """

    #: raised by calls once the owner has stopped
    closed_error = None
    #: set in a process forked from the one that made the client: its
    #: replies go to the parent's reply queue, so the next call runs
    #: :meth:`on_fork` first
    forked = False
    #: the :class:`~threadko.observability.tracing.Tracing` when tracing
    #: is on: each call is a client span, its context in the headers
    tracer = None

    def __init__(self, publisher, exchange_name, registry, reply_to,
                 timeout=None, get_loop_publisher=None,
                 blocked_timeout=DEFAULT_PUBLISH_BLOCKED_TIMEOUT):
        self.publisher = publisher
        self.exchange_name = exchange_name
        self.registry = registry
        self.reply_to = reply_to
        self.timeout = timeout
        #: seconds a request waits while a resource alarm blocks its
        #: connection (``PUBLISH_BLOCKED_TIMEOUT``)
        self.blocked_timeout = blocked_timeout
        self.get_loop_publisher = get_loop_publisher or (lambda: None)
        self._pid = os.getpid()
        fork.register(self)

    def _after_fork_in_child(self):
        self.forked = True

    def on_fork(self):
        """Called by the first call made in a forked child (see
        :attr:`forked`); an owner that can reconnect replaces it. By
        default the client cannot be used there.

        :raises ForkedClientError: always
        """
        raise ForkedClientError(self._pid)

    def call_async(self, service_name, method_name, args, kwargs,
                   context_data):
        """Publish a request, wait for the broker to confirm it, and return
        its :class:`RpcReply`.

        :raises UnknownService: no queue is bound for ``service_name``
        :raises serialization.EncodeError: the arguments cannot be encoded
        """
        return self._call(service_name, method_name, args, kwargs,
                          context_data, wait_for_confirm=True)

    def call(self, service_name, method_name, args, kwargs, context_data):
        """Publish a request and return its result: like
        ``call_async(...).result()``, without a separate wait for the
        confirm (the reply implies it; a failure to publish still raises,
        ``UnknownService`` included)."""
        return self._call(service_name, method_name, args, kwargs,
                          context_data, wait_for_confirm=False).result()

    def _call(self, service_name, method_name, args, kwargs, context_data,
              wait_for_confirm):
        if self.closed_error is not None:
            raise self.closed_error
        if self.forked:
            self.on_fork()
        correlation_id = random_uuid()
        outgoing = self.publisher.prepare(
            {'args': args, 'kwargs': kwargs},
            extra_headers=encode_to_headers(context_data),
            exchange=self.exchange_name,
            routing_key='{}.{}'.format(service_name, method_name),
            mandatory=True, reply_to=self.reply_to,
            correlation_id=correlation_id)
        pending = self.registry.register(correlation_id)
        if self.tracer is not None:
            pending.trace = self.tracer.rpc_call(
                outgoing, service_name, method_name)
        try:
            loop_publisher = self.get_loop_publisher()
            if loop_publisher is None or not outgoing.can_publish_on_loop:
                self._send(outgoing, service_name)
            else:
                if wait_for_confirm:
                    pending.expect_confirm()
                loop_publisher.publish(
                    outgoing.exchange, outgoing.routing_key, outgoing.body,
                    outgoing.properties, mandatory=True,
                    on_done=pending.published,
                    blocked_timeout=self.blocked_timeout)
                if wait_for_confirm:
                    pending.wait_published()
                    if pending.publish_error is not None:
                        self.handle_publish_error(
                            pending, outgoing, service_name)
        except BaseException as exc:
            self.registry.discard(correlation_id)
            if pending.trace is not None:
                pending.trace.finish(exc)
            raise
        return RpcReply(pending, self, correlation_id, outgoing,
                        service_name, self.timeout)

    def handle_publish_error(self, pending, outgoing, service_name):
        """A request published on the loop was not confirmed: raise what
        the caller should see, or publish it again through the pool when
        the connection was lost (the pool retries per its policy)."""
        error = pending.publish_error
        if isinstance(error, UndeliverableMessage):
            raise UnknownService(service_name)
        if not isinstance(error, PublishNotConfirmed):
            raise error
        _log.debug('publishing %s again: %s', outgoing.properties
                   .correlation_id, error)
        pending.rearm()
        self._send(outgoing, service_name)

    def _send(self, outgoing, service_name):
        try:
            self.publisher.send(outgoing)
        except UndeliverableMessage:
            raise UnknownService(service_name)


class MethodProxy:
    """``proxy.service.method``: call it to get the result, or use
    :meth:`call_async` to get an :class:`RpcReply` at once."""

    def __init__(self, client, service_name, method_name, get_context_data):
        self.client = client
        self.service_name = service_name
        self.method_name = method_name
        self._get_context_data = get_context_data

    def __call__(self, *args, **kwargs):
        return self.client.call(
            self.service_name, self.method_name, list(args), kwargs,
            self._get_context_data())

    def call_async(self, *args, **kwargs):
        return self.client.call_async(
            self.service_name, self.method_name, list(args), kwargs,
            self._get_context_data())

    def __repr__(self):
        return '<proxy method {}.{}>'.format(
            self.service_name, self.method_name)


class ServiceProxy:
    """Proxy for one service: ``proxy.method(...)``."""

    def __init__(self, client, service_name, get_context_data):
        self._client = client
        self.service_name = service_name
        self._get_context_data = get_context_data

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return MethodProxy(
            self._client, self.service_name, name, self._get_context_data)

    def __getitem__(self, name):
        return getattr(self, name)

    def __repr__(self):
        return '<proxy service {}>'.format(self.service_name)


class ClusterProxy:
    """Proxy for every service: ``proxy.service.method(...)`` or
    ``proxy["service-name"].method(...)``."""

    def __init__(self, client, get_context_data):
        self._client = client
        self._get_context_data = get_context_data
        self._services = {}

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        proxy = self._services.get(name)
        if proxy is None:
            proxy = ServiceProxy(self._client, name, self._get_context_data)
            self._services[name] = proxy
        return proxy

    def __getitem__(self, name):
        return getattr(self, name)


class _ReplyQueue:
    """The container's reply queue (a :class:`Queue`, which it stands in
    for). Each declaration after the first (the consumer declares its
    queues again after a reconnect) goes through
    :func:`declare_reply_queue_anew`."""

    def __init__(self, queue, registry, renew):
        self._queue = queue
        self._registry = registry
        self._renew = renew  # a queue with a new name, when this one's is stuck
        self._declared = False

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def declare(self, channel):
        if self._declared:
            self._queue = declare_reply_queue_anew(
                channel, self._queue, self._renew, self._registry)
        else:
            self._queue.declare(channel)
        self._declared = True

    def __repr__(self):
        return repr(self._queue)


class ReplyListener(SharedExtension):
    """The container's reply queue, consumed on its consumer thread."""

    queue_consumer = QueueConsumer()
    consume_on_consumer_thread = True

    def __init__(self):
        super().__init__()
        # made here, not in setup(): the providers using them set up at the
        # same time as this extension
        self.reply_key = str(uuid.uuid4())
        self.registry = ReplyRegistry()
        #: the RpcClients whose replies come here (they name the queue)
        self.clients = []

    def setup(self):
        self.queue = _ReplyQueue(
            self._reply_queue(), self.registry, self._renew_reply_queue)
        self.queue_consumer.register_provider(self)

    def _reply_queue(self):
        return reply_queue(get_rpc_exchange(self.container.config),
                           self.container.service_name, self.reply_key)

    def _renew_reply_queue(self):
        self.reply_key = str(uuid.uuid4())
        for client in self.clients:
            client.reply_to = self.reply_key
        return self._reply_queue()

    def stop(self):
        self.queue_consumer.unregister_provider(self)

    def kill(self):
        self.queue_consumer.unregister_provider(self)
        self.registry.fail_all(ContainerBeingKilled())

    def handle_message(self, body, message):
        message.ack()
        correlation_id = message.properties.correlation_id
        if not self.registry.resolve(correlation_id, body):
            _log.debug('Unknown correlation id: %s', correlation_id)

    def handle_undecodable(self, message, exc):
        message.ack()
        _log.error('Discarding undecodable RPC reply %s: %s', message, exc)


_FROM_CONFIG = object()  # a proxy's timeout: RPC_TIMEOUT's


class _RpcDependency(DependencyProvider):
    """Shared parts of :class:`RpcProxy` and :class:`ClusterRpc`."""

    rpc_reply_listener = ReplyListener()
    producers = SharedProducerPool()

    def __init__(self, timeout=_FROM_CONFIG, **options):
        self.timeout = timeout
        self.options = {key: value for key, value in options.items()
                        if key not in RESTRICTED_PUBLISHER_OPTIONS}

    def setup(self):
        config = self.container.config
        listener = self.rpc_reply_listener
        timeout = self.timeout
        if timeout is _FROM_CONFIG:
            timeout = config.get(RPC_TIMEOUT_CONFIG_KEY, DEFAULT_RPC_TIMEOUT)
        self.client = RpcClient(
            Publisher(self.producers.pool,
                      serializer=self.container.serializer, **self.options),
            get_rpc_exchange(config).name, listener.registry,
            listener.reply_key, timeout=timeout,
            get_loop_publisher=lambda: listener.queue_consumer.publisher,
            blocked_timeout=publish_blocked_timeout(config))
        self.client.tracer = tracer_for(config)
        listener.clients.append(self.client)


class RpcProxy(_RpcDependency):
    """Injects a proxy to ``target_service``: ``self.other.method(...)``.

    Calls block until the reply arrives, or for at most ``timeout`` seconds
    (then :class:`~threadko.exceptions.RpcTimeout`); the default is the
    ``RPC_TIMEOUT`` config key, unset: no timeout, as in Nameko.
    ``self.other.method.call_async(...)`` returns an :class:`RpcReply`. A
    call whose reply queue was lost while the container reconnected raises
    :class:`~threadko.exceptions.ReplyQueueExpiredWithPendingReplies`. The
    worker's context data and call stack travel with each request. Extra
    keyword arguments are publish options (``delivery_mode``,
    ``priority``, ``expiration``, ``headers``, ...).
    """

    def __init__(self, target_service, timeout=_FROM_CONFIG, **options):
        self.target_service = target_service
        super().__init__(timeout=timeout, **options)

    def get_dependency(self, worker_ctx):
        return ServiceProxy(
            self.client, self.target_service,
            lambda: worker_ctx.context_data)


#: Nameko 3's name
ServiceRpc = RpcProxy


class ClusterRpc(_RpcDependency):
    """Injects a proxy to every service: ``self.rpc.other.method(...)``
    (Nameko 3's ``ClusterRpc``). ``timeout`` and the other arguments as
    for :class:`RpcProxy`."""

    def get_dependency(self, worker_ctx):
        return ClusterProxy(self.client, lambda: worker_ctx.context_data)
