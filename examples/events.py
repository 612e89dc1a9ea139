"""Events: ``service_a`` dispatches, ``service_b`` handles.

Run both with ``threadko run examples.events``; dispatch from a script with
``python -m examples.standalone_events [AMQP_URI]``.
"""

from threadko.events import EventDispatcher, event_handler
from threadko.rpc import rpc


class ServiceA:
    name = "service_a"

    dispatch = EventDispatcher()

    @rpc
    def dispatching_method(self, payload):
        self.dispatch("event_type", payload)


class ServiceB:
    name = "service_b"

    @event_handler("service_a", "event_type")
    def handle_event(self, payload):
        print("service_b received: {!r}".format(payload), flush=True)
