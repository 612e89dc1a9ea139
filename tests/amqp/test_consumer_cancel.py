"""A consumer the broker cancels (its queue deleted by an operator, or its
node gone) is consumed again, on the embedded broker and on RabbitMQ."""

import logging
import threading
import time

from threadko.amqp.connection import Connector
from threadko.events import event_handler
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 10


class Listener:
    name = 'listener'

    received = []
    arrived = threading.Event()

    @rpc
    def ping(self):
        return 'pong'

    @event_handler('source', 'happened')
    def on_happened(self, payload):
        Listener.received.append(payload)
        Listener.arrived.set()


def _delete_queue(config, name):
    connection = Connector(config).connect()
    try:
        connection.channel().queue_delete(queue=name)
    finally:
        connection.close()


def test_rpc_queue_deleted_under_a_running_service_is_consumed_again(
        broker, containers, caplog):
    containers(Listener, broker.config).start()
    with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
        assert proxy.listener.ping() == 'pong'
        with caplog.at_level(logging.WARNING, 'threadko.amqp.consumer'):
            _delete_queue(broker.config, 'rpc-listener')
            # a call made before the queue is back is unroutable
            assert _eventually(proxy.listener.ping) == 'pong'
    assert any('cancelled the consumer of queue rpc-listener' in
               record.getMessage() for record in caplog.records)


def test_event_queue_deleted_under_a_running_service_is_bound_again(
        broker, containers):
    Listener.arrived.clear()
    del Listener.received[:]
    containers(Listener, broker.config).start()
    queue_name = 'evt-source-happened--listener.on_happened'
    _delete_queue(broker.config, queue_name)
    dispatch = event_dispatcher(broker.config)
    # an event dispatched before the queue is back has nowhere to go
    for attempt in range(50):
        dispatch('source', 'happened', attempt)
        if Listener.arrived.wait(0.2):
            break
    assert Listener.received, 'no event handled after the queue was deleted'


def _eventually(call):
    """``call()`` once it stops failing for want of a queue (polled for up
    to WAIT seconds: a refused call comes back at once)."""
    from threadko.exceptions import RpcTimeout, UnknownService
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return call()
        except (RpcTimeout, UnknownService):
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.05)
