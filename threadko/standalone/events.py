"""Dispatching events from code that is not a service.

``dispatch = event_dispatcher(config)`` (Nameko 2) or
``dispatch = event_dispatcher()`` (Nameko 3, global config), then
``dispatch("orders", "order_placed", {"id": 1})`` publishes the event as if
the ``orders`` service had dispatched it. It returns once the broker has
confirmed the event.

As in Nameko, the exchange ``<service>.events`` is not declared here: it
exists once a service that dispatches or handles those events has started.
Until then, dispatching raises :class:`~threadko.exceptions.BrokerRefused`
(404).

``dispatch`` is thread-safe. Its connections stay open for reuse;
``dispatch.close()`` closes them. In a process forked after it was used
(``gunicorn --preload``), it opens connections of its own.
"""

from threadko.amqp.connection import Connector
from threadko.amqp.publish import (
    ProducerPool, Publisher, publish_blocked_timeout,
)
from threadko.events import get_event_exchange
from threadko.standalone import client_config
from threadko.observability import tracer_for
from threadko import serialization

__all__ = ['event_dispatcher', 'get_event_exchange']


def event_dispatcher(nameko_config=None, **kwargs):
    """Return ``dispatch(service_name, event_type, event_data)``.

    :param nameko_config: config dict (``AMQP_URI``, ``serializer``, ...);
        default: the global :data:`threadko.config`
    :param kwargs: publish options (``mandatory``, ``headers``,
        ``priority``, ``expiration``, ``retry_policy``, ``serializer``,
        ...), and Nameko 3's ``uri``, ``ssl`` and ``login_method``
    """
    config = client_config(nameko_config, kwargs)
    serializer, _ = serialization.setup(config)
    kwargs.setdefault('serializer', serializer)
    pool = ProducerPool(
        Connector(config, heartbeat=0, transport_options=False),
        blocked_timeout=publish_blocked_timeout(config))
    publisher = Publisher(pool, **kwargs)
    publisher.tracer = tracer_for(config)

    def dispatch(service_name, event_type, event_data):
        """Dispatch ``event_data`` as a ``event_type`` event from
        ``service_name``."""
        exchange = get_event_exchange(service_name, config)
        publisher.publish(
            event_data, exchange=exchange.name, routing_key=event_type)

    dispatch.close = pool.close
    return dispatch
