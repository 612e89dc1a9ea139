"""Events: one service dispatches, any number of services handle.

A service dispatches with an injected ``EventDispatcher``::

    class Orders:
        name = "orders"
        dispatch = EventDispatcher()

        @rpc
        def place(self, order):
            self.dispatch("order_placed", order)

and others handle with ``@event_handler``::

    class Emails:
        name = "emails"

        @event_handler("orders", "order_placed")
        def confirm(self, order):
            ...

Events go to the topic exchange ``<source>.events`` with the event type as
routing key. Each handler consumes a queue named and flagged exactly as
Nameko's (see :class:`EventHandler`), so threadko and Nameko services share
events on one broker. Dispatching returns once the broker has confirmed the
event; it does not wait for (or guarantee) any handler.
"""

import logging
import uuid

from threadko.amqp.entities import Exchange, Queue, shared_queue_arguments
from threadko.constants import PERSISTENT
from threadko.exceptions import EventHandlerConfigurationError
from threadko.messaging import Consumer, Publisher

__all__ = [
    'SERVICE_POOL', 'SINGLETON', 'BROADCAST', 'EventDispatcher',
    'EventHandler', 'event_handler', 'EventHandlerConfigurationError',
    'get_event_exchange',
]

_log = logging.getLogger(__name__)

#: one handler instance per (service, method) gets each event (default)
SERVICE_POOL = 'service_pool'
#: one handler in the whole cluster gets each event, whatever its service
SINGLETON = 'singleton'
#: every instance of every handler gets each event
BROADCAST = 'broadcast'

AUTO_DELETE_EVENT_EXCHANGES_CONFIG_KEY = 'AUTO_DELETE_EVENT_EXCHANGES'
DECLARE_EVENT_EXCHANGES_CONFIG_KEY = 'DECLARE_EVENT_EXCHANGES'


def get_event_exchange(service_name, config):
    """The exchange ``<service_name>.events`` that ``service_name``'s events
    are dispatched to: topic, durable; auto-delete if config
    ``AUTO_DELETE_EVENT_EXCHANGES`` is set; never declared if config
    ``DECLARE_EVENT_EXCHANGES`` is ``False``."""
    return Exchange(
        '{}.events'.format(service_name), type='topic', durable=True,
        auto_delete=bool(config.get(AUTO_DELETE_EVENT_EXCHANGES_CONFIG_KEY)),
        no_declare=config.get(DECLARE_EVENT_EXCHANGES_CONFIG_KEY) is False,
        delivery_mode=PERSISTENT)


class EventDispatcher(Publisher):
    """Injects ``dispatch(event_type, event_data)``, which publishes an
    event from this service to the ``<service>.events`` exchange (declared
    at setup) and returns once the broker has confirmed it.

    The worker's context data travels with the event. Keyword arguments
    are publish options (``mandatory=True`` makes an event that reaches no
    queue raise :class:`~threadko.exceptions.UndeliverableMessage`;
    ``headers``, ``priority``, ``expiration``, ``retry_policy``, ...).
    """

    def setup(self):
        self.exchange = get_event_exchange(
            self.container.service_name, self.container.config)
        self.declare.append(self.exchange)
        super().setup()

    def get_dependency(self, worker_ctx):
        extra_headers = self.get_message_headers(worker_ctx)

        def dispatch(event_type, event_data):
            self.publisher.publish(
                event_data, exchange=self.exchange, routing_key=event_type,
                extra_headers=extra_headers)

        return dispatch


class EventHandler(Consumer):
    """The ``@event_handler`` entrypoint: the method runs with the event
    data as its single argument.

    :param source_service: name of the service that dispatches the event
    :param event_type: the event type (a topic pattern: ``*`` matches one
        dot-separated word, ``#`` any number)
    :param handler_type: :data:`SERVICE_POOL` (default), :data:`SINGLETON`
        or :data:`BROADCAST`
    :param reliable_delivery: keep the queue, and the events in it, while no
        handler is connected (default ``True``)
    :param requeue_on_error: requeue an event whose handler raised, instead
        of acking it
    :param prefetch_count: see :class:`~threadko.messaging.Consumer`

    Queues (all durable, bound to ``<source>.events`` with the event type):

    ====================  ==================================================
    ``SERVICE_POOL``      ``evt-<source>-<type>--<service>.<method>``
    ``SINGLETON``         ``evt-<source>-<type>`` (shared cluster-wide)
    ``BROADCAST``         ``evt-<source>-<type>--<service>.<method>-<id>``
                          (exclusive unless ``reliable_delivery``)
    ====================  ==================================================

    A queue is auto-delete when ``reliable_delivery`` is false.

    With config ``QUEUE_TYPE: quorum``, the queues of reliable
    ``SERVICE_POOL`` and ``SINGLETON`` handlers are quorum queues (see
    :func:`~threadko.amqp.entities.shared_queue_arguments`); ``BROADCAST``
    queues (one per instance) and auto-delete queues stay classic.
    """

    def __init__(self, source_service, event_type, handler_type=SERVICE_POOL,
                 reliable_delivery=True, requeue_on_error=False, **kwargs):
        if handler_type not in (SERVICE_POOL, SINGLETON, BROADCAST):
            raise EventHandlerConfigurationError(
                'Unknown handler_type {!r}: use SERVICE_POOL, SINGLETON or '
                'BROADCAST from threadko.events'.format(handler_type))
        self.source_service = source_service
        self.event_type = event_type
        self.handler_type = handler_type
        self.reliable_delivery = reliable_delivery
        super().__init__(
            queue=None, requeue_on_error=requeue_on_error, **kwargs)

    @property
    def broadcast_identifier(self):
        """Tells the instances of a ``BROADCAST`` handler apart: it is part
        of each instance's queue name.

        The default is a new random id per instance, so events sent while
        an instance is down are lost to it; that is why the default cannot
        be combined with ``reliable_delivery`` (the container refuses to
        build). For a stable id, override this property in a subclass, e.g.
        to return ``socket.gethostname()`` or a config value.
        """
        if self.handler_type != BROADCAST:
            return None
        if self.reliable_delivery:
            raise EventHandlerConfigurationError(
                'The default broadcast identifier is not compatible with '
                'reliable delivery: override `broadcast_identifier` in a '
                'subclass of EventHandler (e.g. to return the hostname), or '
                'pass reliable_delivery=False.')
        return uuid.uuid4().hex

    def setup(self):
        config = self.container.config
        self.queue = Queue(
            self.queue_name(), routing_key=self.event_type,
            exchange=get_event_exchange(self.source_service, config),
            durable=True,
            auto_delete=not self.reliable_delivery,
            # an exclusive queue dies with its connection, which would lose
            # events a reliable handler must keep
            exclusive=(self.handler_type == BROADCAST
                       and not self.reliable_delivery),
            queue_arguments=(shared_queue_arguments(config)
                             if self.is_shared_queue() else None))
        super().setup()

    def is_shared_queue(self):
        """Whether this handler's queue is durable and shared by the
        instances of a service (may be a quorum queue): a reliable
        ``SERVICE_POOL`` or ``SINGLETON`` handler's. A ``BROADCAST`` queue
        belongs to one instance, and a quorum queue cannot be auto-delete.
        """
        return self.handler_type != BROADCAST and self.reliable_delivery

    def queue_name(self):
        """The name of this handler's queue (see the class docstring)."""
        prefix = 'evt-{}-{}'.format(self.source_service, self.event_type)
        if self.handler_type == SINGLETON:
            return prefix
        pooled = '{}--{}.{}'.format(
            prefix, self.container.service_name, self.method_name)
        if self.handler_type == BROADCAST:
            return '{}-{}'.format(pooled, self.broadcast_identifier)
        return pooled


event_handler = EventHandler.decorator
