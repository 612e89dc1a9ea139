"""Generic AMQP messaging: consume any queue, publish to any exchange.

``@consume(queue)`` runs a worker for each message on ``queue`` (a
:class:`~threadko.amqp.entities.Queue` you declare), with the decoded body
as its single argument and the message headers as context data. The message
is acked when the worker is done, or requeued if it failed and
``requeue_on_error`` is set; with ``retry=`` it is retried after a delay,
on the broker, and dead-lettered after its last attempt (see
:mod:`threadko.retry`).

``Publisher(exchange=...)`` injects ``publish(msg, **options)``, which
returns once the broker has confirmed the message. The calling worker's
context data travels in the headers, so a consumer downstream sees the same
call id stack and user data.

Both declare their entities exactly as Nameko 2 does, so queues and
exchanges can be shared with Nameko services on the same broker.
"""

import logging
import warnings
from functools import partial

from threadko.amqp.consumer import QueueConsumer
from threadko.amqp.entities import Exchange, Queue, binding
from threadko.amqp.headers import decode_from_headers, encode_to_headers
from threadko.amqp.publish import Publisher as CorePublisher
from threadko.amqp.publish import SharedProducerPool
from threadko.constants import CALL_ID_STACK_CONTEXT_KEY, HEADER_PREFIX
from threadko.exceptions import ContainerBeingKilled
from threadko.extensions import DependencyProvider, Entrypoint
from threadko.observability import tracer_for
from threadko import retry as retries

__all__ = [
    'Publisher', 'Consumer', 'consume', 'QueueConsumer', 'Exchange',
    'Queue', 'binding', 'HeaderEncoder', 'HeaderDecoder',
]

_log = logging.getLogger(__name__)

# options Nameko 2.6 took as class attributes of Publisher subclasses
_COMPAT_ATTRS = ('retry', 'retry_policy', 'use_confirms')


def _check_entity(value, types, argument):
    """Refuse kombu's (or anything else's) entities early, with a hint:
    they would only fail later, on the consumer thread."""
    if not isinstance(value, types):
        raise TypeError(
            '{} must be a threadko {} (from threadko.messaging, which takes '
            'the same arguments as kombu\'s), not {!r}'.format(
                argument, ' or '.join(t.__name__ for t in types), value))


class HeaderEncoder:
    """Nameko 2's mixin: ``get_message_headers(worker_ctx)`` returns the
    headers carrying the worker's context data."""

    header_prefix = HEADER_PREFIX

    def get_message_headers(self, worker_ctx):
        return encode_to_headers(
            worker_ctx.context_data, prefix=self.header_prefix)


class HeaderDecoder:
    """Nameko 2's mixin: ``unpack_message_headers(message)`` returns the
    context data carried by a message's headers."""

    header_prefix = HEADER_PREFIX

    def unpack_message_headers(self, message):
        context_data = decode_from_headers(
            message.headers, prefix=self.header_prefix)
        stack = context_data.get(CALL_ID_STACK_CONTEXT_KEY)
        if stack is not None and not (isinstance(stack, list) and all(
                isinstance(call_id, str) for call_id in stack)):
            # the worker would fail on it (e.g. in a tracer's setup, which
            # kills the container): bad input, so drop it and carry on
            _log.warning('Ignoring the malformed %s.%s header of %s: %.200r '
                         '(expected a list of call ids)', self.header_prefix,
                         CALL_ID_STACK_CONTEXT_KEY, message, stack)
            del context_data[CALL_ID_STACK_CONTEXT_KEY]
        return context_data


class Publisher(DependencyProvider, HeaderEncoder):
    """Injects ``publish(msg, **options)``, publishing to ``exchange``.

    :param exchange: an :class:`~threadko.amqp.entities.Exchange`; ``None``
        publishes to the default exchange (route with
        ``routing_key=<queue name>``)
    :param queue: deprecated (as in Nameko): a queue to declare, whose
        exchange is used when ``exchange`` is not given
    :param declare: more exchanges and queues to declare at setup
    :param options: publish options, overridable per call: ``routing_key``,
        ``headers``, ``delivery_mode``, ``priority``, ``expiration``
        (seconds), ``correlation_id``, ``reply_to``, ``mandatory``,
        ``serializer``, ``compression``, ``retry``, ``retry_policy``,
        ``use_confirms``, ``declare``, ...

    Headers merge as in Nameko: ``headers`` given here, then ``headers``
    given to the call, then the worker's context data (``nameko.*``).
    """

    producers = SharedProducerPool()

    def __init__(self, exchange=None, queue=None, declare=None, **options):
        if exchange is not None:
            _check_entity(exchange, (Exchange,), 'exchange')
        for entity in declare or ():
            _check_entity(entity, (Exchange, Queue), 'each of declare')
        self.exchange = exchange
        self.options = options
        self.declare = list(declare) if declare is not None else []
        if self.exchange:
            self.declare.append(self.exchange)
        if queue is not None:
            warnings.warn(
                'The `queue` argument of `Publisher` is deprecated: pass the '
                'queue in `declare=[...]` and the exchange as `exchange`.',
                DeprecationWarning, stacklevel=2)
            _check_entity(queue, (Queue,), 'queue')
            if exchange is None:
                self.exchange = queue.exchange
            self.declare.append(queue)
        for name in _COMPAT_ATTRS:
            if hasattr(self, name):
                warnings.warn(
                    '`{}` should be given to `Publisher(...)`, not set as a '
                    'class attribute.'.format(name), DeprecationWarning,
                    stacklevel=2)
                self.options[name] = getattr(self, name)

    @property
    def serializer(self):
        """The default serializer: the container's (config ``serializer``)."""
        return self.container.serializer

    def setup(self):
        options = dict(self.options)
        serializer = options.pop('serializer', self.serializer)
        pool = self.producers.pool
        pool.declare(self.declare)
        self.publisher = CorePublisher(
            pool, serializer=serializer, exchange=self.exchange,
            declare=self.declare, **options)
        self.publisher.tracer = tracer_for(self.container.config)

    def get_dependency(self, worker_ctx):
        extra_headers = self.get_message_headers(worker_ctx)

        def publish(msg, **kwargs):
            self.publisher.publish(msg, extra_headers=extra_headers, **kwargs)

        return publish


class Consumer(Entrypoint, HeaderDecoder):
    """The ``@consume(queue)`` entrypoint.

    :param queue: the :class:`~threadko.amqp.entities.Queue` to consume;
        it is declared (with its exchange and bindings) on every connect
    :param requeue_on_error: requeue a message whose worker raised, instead
        of acking it (it is redelivered at once, maybe to this instance)
    :param prefetch_count: how many unacked messages the broker may send
        ahead (Nameko 3's option); default: the container's ``max_workers``
    :param retry: a :class:`~threadko.retry.Retry` policy (``True``: the
        defaults; ``False``: none; unset: the ``HANDLER_RETRY`` config
        key's): a failed message is retried after a delay and, after its
        last attempt, goes to the queue's dead-letter queue
        (:mod:`threadko.retry`)

    A message that cannot be decoded (bad body, content type not in
    ``ACCEPT``) is rejected without requeue, so it goes to the queue's
    dead-letter exchange if it has one, and an error is logged; with
    ``retry`` it goes to the dead-letter queue.
    """

    queue_consumer = QueueConsumer()
    producers = SharedProducerPool()

    def __init__(self, queue, requeue_on_error=False, prefetch_count=None,
                 retry=None, **kwargs):
        if queue is not None:  # None: a subclass makes it in setup()
            _check_entity(queue, (Queue,), 'queue')
        self.queue = queue
        self.requeue_on_error = requeue_on_error
        self.prefetch_count = prefetch_count
        self.retry = retry
        self.retry_policy = None
        super().__init__(**kwargs)

    def setup(self):
        self.retry_policy = retries.Retry.from_option(
            self.retry, self.container.config)
        self.queue_consumer.register_provider(self)

    def stop(self):
        self.queue_consumer.unregister_provider(self)

    def kill(self):
        self.queue_consumer.unregister_provider(self)

    def handle_message(self, body, message):
        context_data = self.unpack_message_headers(message)
        if self.retry_policy is not None:
            context_data = retries.without_retry_headers(context_data)
        handle_result = partial(self.handle_result, message)
        attempt = (retries.attempt_of(message) + 1
                   if self.retry_policy is not None else None)
        try:
            self.container.spawn_worker(
                self, (body,), {}, context_data=context_data,
                handle_result=handle_result, attempt=attempt,
                origin=message)
        except ContainerBeingKilled:
            message.requeue()

    def handle_undecodable(self, message, exc):
        """A message that cannot be decoded: to the dead-letter queue with
        retries on, else rejected (to the queue's dead-letter exchange, if
        any)."""
        if self.retry_policy is None:
            # as the queue consumer does for any provider
            _log.error('Discarding %s for %s: %s', message, self, exc)
            message.discard()
            return
        queue = retries.dead_letter_queue(self.queue.name)
        _log.error('Dead-lettering %s for %s to %s: %s', message, self,
                   queue.name, exc)
        self._republish(message, queue, retries.retry_headers(message, 1, exc))

    def handle_result(self, message, worker_ctx, result, exc_info):
        self.handle_message_processed(message, result, exc_info)
        return result, exc_info

    def handle_message_processed(self, message, result=None, exc_info=None):
        """Settle ``message`` once its worker is done: ack, or requeue on
        error when ``requeue_on_error`` is set."""
        if exc_info is not None and self._retried(message, exc_info[1]):
            return
        if exc_info is not None and self.requeue_on_error:
            message.requeue()
        else:
            message.ack()

    def _retried(self, message, exc):
        """Send ``message`` for a retry, or to the dead-letter queue after
        its last attempt, if the policy retries ``exc``; whether it did."""
        policy = self.retry_policy
        if policy is None or not policy.retries(
                exc, self.expected_exceptions):
            return False
        attempt = retries.attempt_of(message) + 1
        headers = retries.retry_headers(message, attempt, exc)
        if attempt < policy.attempts:
            queue = retries.wait_queue(self.queue.name, retries.wait_ms(
                policy.delay_before(attempt, exc)))
        else:
            queue = retries.dead_letter_queue(self.queue.name)
            _log.error('%s failed %s time(s); dead-lettered to %s',
                       message, attempt, queue.name)
        self._republish(message, queue, headers)
        return True

    def _republish(self, message, queue, headers):
        # confirmed before the original is acked: never lost between the
        # two (if the ack is lost, the message is handled once more)
        properties = retries.copy_properties(message.properties, headers)
        try:
            # declared each time (a new Queue object): publishing does not
            # count as using a queue for its x-expires; and mandatory, so
            # a copy that finds no queue is an error, not a loss
            self.producers.pool.publish(
                message.body, '', queue.name, properties=properties,
                declare=[queue], mandatory=True)
        except Exception:
            _log.exception('Could not send %s to %s; requeueing it',
                           message, queue.name)
            message.requeue()
            return
        message.ack()


consume = Consumer.decorator
