"""Declarations of exchanges, queues and bindings (threadko's small stand-in
for kombu's ``Exchange``/``Queue``), with the same defaults Nameko's kombu
entities have, so both declare identical entities on a shared broker.

:func:`shared_queue_arguments` decides the type (classic or quorum) of the
durable queues that the instances of a service share."""

from threadko.constants import (
    CLASSIC_QUEUE_TYPE, DEFAULT_QUEUE_DELIVERY_LIMIT, DEFAULT_QUEUE_TYPE,
    QUEUE_DELIVERY_LIMIT_CONFIG_KEY, QUEUE_TYPE_CONFIG_KEY, QUORUM_QUEUE_TYPE,
)

QUEUE_TYPE_ARGUMENT = 'x-queue-type'
DELIVERY_LIMIT_ARGUMENT = 'x-delivery-limit'


class Exchange:
    """An exchange to declare.

    :param name: exchange name; ``""`` is the default exchange, which is
        never declared
    :param type: ``direct`` (default), ``topic``, ``fanout`` or ``headers``
    :param no_declare: never declare it (it must exist already)
    :param delivery_mode: accepted for kombu compatibility; publishers set
        the delivery mode of each message themselves
    """

    def __init__(self, name='', type='direct', durable=True,
                 auto_delete=False, internal=False, arguments=None,
                 no_declare=False, delivery_mode=None):
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = bool(auto_delete)
        self.internal = internal
        self.arguments = arguments
        self.no_declare = no_declare
        self.delivery_mode = delivery_mode

    def declare(self, channel):
        if not self.name or self.no_declare:
            return
        channel.exchange_declare(
            exchange=self.name, exchange_type=self.type,
            durable=self.durable, auto_delete=self.auto_delete,
            internal=self.internal, arguments=self.arguments)

    def _key(self):
        return (self.name, self.type, self.durable, self.auto_delete,
                self.internal, _frozen(self.arguments), self.no_declare)

    def __eq__(self, other):
        return isinstance(other, Exchange) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return 'Exchange({!r}, type={!r})'.format(self.name, self.type)


class Binding:
    """An extra binding of a queue to ``exchange`` with ``routing_key`` (and
    ``arguments``, for headers exchanges)."""

    def __init__(self, exchange, routing_key='', arguments=None):
        self.exchange = exchange
        self.routing_key = routing_key
        self.arguments = arguments

    def declare(self, channel, queue_name):
        self.exchange.declare(channel)
        channel.queue_bind(
            queue=queue_name, exchange=self.exchange.name,
            routing_key=self.routing_key, arguments=self.arguments)

    def __repr__(self):
        return 'Binding({!r}, {!r})'.format(self.exchange, self.routing_key)


# kombu's name for the same thing
binding = Binding


class Queue:
    """A queue to declare, with its exchange and bindings.

    Declaring it declares the exchange, the queue, and a binding of the
    queue to the exchange with ``routing_key``, then every extra binding.

    :param name: queue name
    :param exchange: an :class:`Exchange` (or the name of a direct one), or
        ``None`` for the default exchange
    :param routing_key: binding key to ``exchange``
    :param durable: survives a broker restart (default ``True``)
    :param exclusive: only the declaring connection may use it; implies
        ``auto_delete``
    :param auto_delete: deleted when its last consumer goes away
    :param queue_arguments: ``x-`` arguments, e.g. ``{"x-expires": 300000}``
    :param binding_arguments: arguments of the main binding
    :param bindings: extra :class:`Binding` objects
    :param no_declare: never declare the queue or its bindings (they must
        exist already)
    """

    #: publishers declare it again with every publish that names it,
    #: instead of once per connection (publishing alone does not count as
    #: using a queue for its ``x-expires``)
    declare_every_time = False

    def __init__(self, name='', exchange=None, routing_key='', durable=True,
                 exclusive=False, auto_delete=False, queue_arguments=None,
                 binding_arguments=None, bindings=(), no_declare=False):
        self.name = name
        if isinstance(exchange, str):
            exchange = Exchange(exchange)  # kombu accepts a bare name too
        self.exchange = exchange
        self.routing_key = routing_key
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete or exclusive
        self.queue_arguments = queue_arguments
        self.binding_arguments = binding_arguments
        self.bindings = list(bindings)
        self.no_declare = no_declare

    def declare(self, channel):
        """Declare the exchange, queue and bindings on ``channel``."""
        if self.no_declare:
            return
        if self.exchange is not None:
            self.exchange.declare(channel)
        channel.queue_declare(
            queue=self.name, durable=self.durable, exclusive=self.exclusive,
            auto_delete=self.auto_delete, arguments=self.queue_arguments)
        if self.exchange is not None and self.exchange.name:
            channel.queue_bind(
                queue=self.name, exchange=self.exchange.name,
                routing_key=self.routing_key,
                arguments=self.binding_arguments)
        for extra in self.bindings:
            extra.declare(channel, self.name)

    def __repr__(self):
        return 'Queue({!r}, exchange={!r}, routing_key={!r})'.format(
            self.name, self.exchange, self.routing_key)


def shared_queue_arguments(config, arguments=None):
    """The arguments to declare a queue that the instances of a service
    share with: an RPC service queue (``rpc-<service>``), or the queue of
    a reliable ``SERVICE_POOL`` or ``SINGLETON`` event handler. Such a
    queue is durable, not exclusive and not auto-delete, which a quorum
    queue must be.

    With config ``QUEUE_TYPE`` unset or ``classic``, ``arguments`` as
    given (``None`` for none, exactly what Nameko 2 declares). With
    ``quorum``, a copy of them plus ``x-queue-type: quorum`` and, unless
    config ``QUEUE_DELIVERY_LIMIT`` is null or 0, ``x-delivery-limit``
    (default 20): RabbitMQ drops (or dead-letters) a message returned to
    the queue more times than that, instead of delivering it again.

    :param config: the container's (or client's) configuration
    :param arguments: other ``x-`` arguments of the queue, or ``None``
    :returns: the queue arguments, or ``None``
    :raises ~threadko.exceptions.ConfigurationError: ``QUEUE_TYPE`` is
        neither ``classic`` nor ``quorum``
    """
    queue_type = config.get(QUEUE_TYPE_CONFIG_KEY) or DEFAULT_QUEUE_TYPE
    if queue_type == CLASSIC_QUEUE_TYPE:
        return arguments
    if queue_type != QUORUM_QUEUE_TYPE:
        from threadko.exceptions import ConfigurationError  # imports pika
        raise ConfigurationError(
            'Unknown {} {!r}: use {!r} (the default) or {!r}'.format(
                QUEUE_TYPE_CONFIG_KEY, queue_type, CLASSIC_QUEUE_TYPE,
                QUORUM_QUEUE_TYPE))
    quorum = dict(arguments or {})
    quorum[QUEUE_TYPE_ARGUMENT] = QUORUM_QUEUE_TYPE
    limit = config.get(
        QUEUE_DELIVERY_LIMIT_CONFIG_KEY, DEFAULT_QUEUE_DELIVERY_LIMIT)
    if limit:
        quorum[DELIVERY_LIMIT_ARGUMENT] = limit
    return quorum


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
