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
import sys
import threading
import uuid
from functools import partial

from threadko.amqp.consumer import QueueConsumer
from threadko.amqp.entities import Exchange, Queue
from threadko.amqp.headers import decode_from_headers, encode_to_headers
from threadko.amqp.publish import Publisher, SharedProducerPool
from threadko.constants import (
    DEFAULT_SERIALIZER, RPC_EXCHANGE_CONFIG_KEY,
)
from threadko.exceptions import (
    ContainerBeingKilled, IncorrectSignature, MalformedRequest,
    MethodNotFound, RpcTimeout, UndeliverableMessage, UnknownService,
    UnserializableValueError, deserialize, serialize,
)
from threadko.extensions import (
    DependencyProvider, Entrypoint, ProviderCollector, SharedExtension,
)
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
    """The reply queue ``rpc.reply-<owner>-<key>`` bound with ``<key>``."""
    return Queue(
        'rpc.reply-{}-{}'.format(owner_name, reply_key),
        exchange=exchange, routing_key=reply_key,
        queue_arguments={'x-expires': RPC_REPLY_QUEUE_TTL})


# -- serving ---------------------------------------------------------------


class Responder:
    """Publishes the reply to one request message."""

    def __init__(self, publisher, exchange_name, message, serializer=None):
        self.publisher = publisher
        self.exchange_name = exchange_name
        self.message = message
        self.serializer = serializer

    def send_response(self, result, exc_info):
        """Publish ``result`` or the error in ``exc_info``; return the
        ``(result, exc_info)`` that was sent (an unserialisable result is
        replaced by an :class:`UnserializableValueError`)."""
        properties = self.message.properties
        reply_to = properties.reply_to
        if not reply_to:
            _log.error('Cannot reply to %s: the request has no reply_to',
                       self.message)
            return result, exc_info

        serializer = self.serializer
        if serializer is None:
            # reply in the request's own encoding (Nameko does the same)
            codec = serialization.serializer_for(properties.content_type)
            serializer = codec.name if codec else DEFAULT_SERIALIZER

        error = serialize(exc_info[1]) if exc_info is not None else None
        publish = partial(
            self.publisher.publish, exchange=self.exchange_name,
            routing_key=reply_to, serializer=serializer,
            correlation_id=properties.correlation_id)
        try:
            publish({'result': result, 'error': error})
        except serialization.EncodeError:
            exc = UnserializableValueError(result)
            _log.error('Cannot reply to %s: %s', self.message, exc)
            result = None
            exc_info = (type(exc), exc, None)
            publish({'result': None, 'error': serialize(exc)})
        return result, exc_info


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
        self.queue = Queue(
            'rpc-{}'.format(service_name), exchange=self.exchange,
            routing_key='{}.*'.format(service_name), durable=True)
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
            self.reply_and_ack(message, sys.exc_info())

    def handle_undecodable(self, message, exc):
        _log.warning('Malformed RPC request %s: %s', message, exc)
        # the caller's encoding is the problem: answer in our own
        self.reply_and_ack(message, _exc_info(MalformedRequest(str(exc))),
                           serializer=self.container.serializer)

    def reply_and_ack(self, message, exc_info, serializer=None):
        """Reply with an error no worker was started for, then ack."""
        responder = Responder(
            self.publisher, self.exchange.name, message, serializer)
        try:
            responder.send_response(None, exc_info)
        except Exception:
            _log.exception('Could not send the error reply to %s', message)
            message.requeue()
            return
        message.ack()


class Rpc(Entrypoint):
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

        context_data = decode_from_headers(message.headers)
        handle_result = partial(self.handle_result, message)
        try:
            self.container.spawn_worker(
                self, args, kwargs, context_data=context_data,
                handle_result=handle_result)
        except ContainerBeingKilled:
            message.requeue()

    def handle_result(self, message, worker_ctx, result, exc_info):
        """Reply, then ack (Nameko's order): if the process dies between
        the two, the request is redelivered rather than lost."""
        responder = Responder(
            self.rpc_consumer.publisher, self.rpc_consumer.exchange.name,
            message)
        try:
            result, exc_info = responder.send_response(result, exc_info)
        except Exception:
            _log.exception(
                'Could not publish the reply to %s; requeueing it', message)
            message.requeue()
            return result, exc_info
        message.ack()
        return result, exc_info


rpc = Rpc.decorator


def _exc_info(exc):
    return (type(exc), exc, exc.__traceback__)


# -- calling ---------------------------------------------------------------


class PendingReply:
    """Where one call's reply body arrives (from the reply consumer's
    thread) and its caller waits for it."""

    __slots__ = ('_event', 'body', 'error')

    def __init__(self):
        self._event = threading.Event()
        self.body = None
        self.error = None

    def set(self, body):
        self.body = body
        self._event.set()

    def fail(self, error):
        self.error = error
        self._event.set()

    def wait(self, timeout=None):
        return self._event.wait(timeout)


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

    def __init__(self, pending, registry, correlation_id, timeout=None):
        self._pending = pending
        self._registry = registry
        self._correlation_id = correlation_id
        self._timeout = timeout

    @property
    def correlation_id(self):
        return self._correlation_id

    def result(self):
        try:
            arrived = self._pending.wait(self._timeout)
        except BaseException:  # e.g. KeyboardInterrupt: stop waiting
            self._registry.discard(self._correlation_id)
            raise
        if not arrived:
            self._registry.discard(self._correlation_id)
            raise RpcTimeout(self._timeout)
        if self._pending.error is not None:
            raise self._pending.error
        body = self._pending.body
        if body.get('error'):
            raise deserialize(body['error'])
        return body.get('result')


class RpcClient:
    """What every proxy needs to make calls: a publisher, the RPC exchange,
    the reply registry and this caller's reply routing key."""

    #: raised by calls once the owner has stopped
    closed_error = None

    def __init__(self, publisher, exchange_name, registry, reply_to,
                 timeout=None):
        self.publisher = publisher
        self.exchange_name = exchange_name
        self.registry = registry
        self.reply_to = reply_to
        self.timeout = timeout

    def call_async(self, service_name, method_name, args, kwargs,
                   context_data):
        """Publish a request and return its :class:`RpcReply`.

        :raises UnknownService: no queue is bound for ``service_name``
        :raises serialization.EncodeError: the arguments cannot be encoded
        """
        if self.closed_error is not None:
            raise self.closed_error
        correlation_id = str(uuid.uuid4())
        pending = self.registry.register(correlation_id)
        try:
            self.publisher.publish(
                {'args': args, 'kwargs': kwargs},
                extra_headers=encode_to_headers(context_data),
                exchange=self.exchange_name,
                routing_key='{}.{}'.format(service_name, method_name),
                mandatory=True, reply_to=self.reply_to,
                correlation_id=correlation_id)
        except UndeliverableMessage:
            self.registry.discard(correlation_id)
            raise UnknownService(service_name)
        except BaseException:
            self.registry.discard(correlation_id)
            raise
        return RpcReply(pending, self.registry, correlation_id, self.timeout)


class MethodProxy:
    """``proxy.service.method``: call it to get the result, or use
    :meth:`call_async` to get an :class:`RpcReply` at once."""

    def __init__(self, client, service_name, method_name, get_context_data):
        self.client = client
        self.service_name = service_name
        self.method_name = method_name
        self._get_context_data = get_context_data

    def __call__(self, *args, **kwargs):
        return self.call_async(*args, **kwargs).result()

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

    def setup(self):
        self.queue = reply_queue(
            get_rpc_exchange(self.container.config),
            self.container.service_name, self.reply_key)
        self.queue_consumer.register_provider(self)

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


class _RpcDependency(DependencyProvider):
    """Shared parts of :class:`RpcProxy` and :class:`ClusterRpc`."""

    rpc_reply_listener = ReplyListener()
    producers = SharedProducerPool()

    def __init__(self, **options):
        self.options = {key: value for key, value in options.items()
                        if key not in RESTRICTED_PUBLISHER_OPTIONS}

    def setup(self):
        config = self.container.config
        listener = self.rpc_reply_listener
        self.client = RpcClient(
            Publisher(self.producers.pool,
                      serializer=self.container.serializer, **self.options),
            get_rpc_exchange(config).name, listener.registry,
            listener.reply_key)


class RpcProxy(_RpcDependency):
    """Injects a proxy to ``target_service``: ``self.other.method(...)``.

    Calls block until the reply arrives (there is no timeout, as in
    Nameko); ``self.other.method.call_async(...)`` returns an
    :class:`RpcReply`. The worker's context data and call stack travel with
    each request. Extra keyword arguments are publish options
    (``delivery_mode``, ``priority``, ``expiration``, ``headers``, ...).
    """

    def __init__(self, target_service, **options):
        self.target_service = target_service
        super().__init__(**options)

    def get_dependency(self, worker_ctx):
        return ServiceProxy(
            self.client, self.target_service,
            lambda: worker_ctx.context_data)


#: Nameko 3's name
ServiceRpc = RpcProxy


class ClusterRpc(_RpcDependency):
    """Injects a proxy to every service: ``self.rpc.other.method(...)``
    (Nameko 3's ``ClusterRpc``)."""

    def get_dependency(self, worker_ctx):
        return ClusterProxy(self.client, lambda: worker_ctx.context_data)
