"""The event snippets of docs/events.rst: dispatcher options, a handler,
broadcast queues that survive restarts, event type patterns, and
dispatching from a script.

``orders`` dispatches ``order_placed``, ``order.placed``, ``order.cancelled``
and other events; ``emails``, ``cache`` and ``billing`` handle them.
"""

import socket

from threadko.events import (
    BROADCAST, EventDispatcher, EventHandler, event_handler,
)
from threadko.standalone.events import event_dispatcher


class Orders:
    name = "orders"

    # raise if no queue is bound; events unconsumed for a minute expire
    dispatch = EventDispatcher(mandatory=True, expiration=60)

    # a second dispatcher, with headers on every event it sends
    audit = EventDispatcher(headers={"x-origin": "orders"})


class Emails:
    name = "emails"

    @event_handler("orders", "order_placed")
    def send_confirmation(self, order):
        ...


class InstanceBroadcastHandler(EventHandler):
    @property
    def broadcast_identifier(self):
        if self.container is None:  # the declaration, not yet bound
            return None
        return self.container.config["INSTANCE_ID"]


class Billing:
    name = "billing"

    @event_handler("orders", "order.*")
    def on_order_event(self, data):
        ...  # order.placed, order.cancelled; not order.item.added

    @event_handler("orders", "#")
    def audit(self, data):
        ...  # every event the orders service dispatches


def dispatch_order_placed(config=None):
    """Dispatch ``order_placed`` as ``orders``, with ``config`` or, without
    it, with the global ``threadko.config``."""
    if config is not None:
        # Nameko 2: an explicit config
        dispatch = event_dispatcher(config)
    else:
        # Nameko 3: the global threadko.config
        dispatch = event_dispatcher()

    dispatch("orders", "order_placed", {"id": 1})
    dispatch.close()


class HostBroadcastHandler(EventHandler):
    """A handler whose broadcast queue is named after the host."""

    @property
    def broadcast_identifier(self):
        return socket.gethostname()


host_event_handler = HostBroadcastHandler.decorator


class Cache:
    name = "cache"

    @host_event_handler("catalog", "price_changed",
                        handler_type=BROADCAST)
    def invalidate(self, product_id):
        ...
