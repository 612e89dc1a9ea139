"""``entrypoint_waiter``: wait for a worker that something else triggers.

Dispatching an event returns once the broker has it, before any handler
ran. The waiter's block exits only when a ``handle_event`` worker has
finished (its dependencies' teardown included), so the test can check
the handler's effects straight after it.
"""

from threadko.events import event_handler
from threadko.standalone.events import event_dispatcher
from threadko.testing.services import entrypoint_waiter


class ServiceB:
    """An event handling service."""

    name = "service_b"

    received = []

    @event_handler("service_a", "event_type")
    def handle_event(self, payload):
        self.received.append(payload)
        return "handled {}".format(payload)


def test_event_interface(container_factory, memory_config):
    container = container_factory(ServiceB, memory_config)
    container.start()

    dispatch = event_dispatcher(memory_config)

    with entrypoint_waiter(container, "handle_event") as result:
        dispatch("service_a", "event_type", "payload")
    dispatch.close()

    # the handler has run by now
    assert ServiceB.received == ["payload"]
    assert result.get() == "handled payload"
