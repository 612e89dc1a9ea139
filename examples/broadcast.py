"""A ``BROADCAST`` event handler: every running instance handles every
event.

With the default ``SERVICE_POOL`` handler type the instances of a service
share one queue, so each event is handled once per service. A
``BROADCAST`` handler gets a queue per instance instead. Without a stable
``broadcast_identifier`` such a queue cannot outlive its instance, hence
``reliable_delivery=False``.

Start two instances, and dispatch ``ping`` as the ``monitor`` service::

    threadko run examples.broadcast --broker amqp://guest:guest@localhost
    threadko run examples.broadcast --broker amqp://guest:guest@localhost
    threadko shell --broker amqp://guest:guest@localhost
    >>> n.dispatch_event("monitor", "ping", None)

Both instances print "pong".
"""

from threadko.events import BROADCAST, event_handler


class ListenerService:
    name = "listener"

    @event_handler(
        "monitor", "ping", handler_type=BROADCAST, reliable_delivery=False
    )
    def ping(self, payload):
        # every running instance answers
        print("pong from {}".format(self.name), flush=True)
