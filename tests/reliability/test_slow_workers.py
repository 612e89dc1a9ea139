"""A worker that blocks far longer than the AMQP heartbeat does not cost
its container the connection: the consumer thread, not the worker, answers
the broker's heartbeats."""

import logging
import time

import pika
import pika.exceptions
import pytest

from support import Received

from threadko.events import EventDispatcher, event_handler
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

HEARTBEAT = 2  # seconds; RabbitMQ drops a connection silent for 2 of them
BLOCK = 10  # seconds the slow worker blocks: 5 heartbeats


@pytest.mark.timeout(60)
def test_a_worker_blocking_for_five_heartbeats_keeps_the_connection(
        runner_factory, rabbit_config, caplog):
    runs = Received()
    events = Received()

    class Slow:
        name = 'slow'
        dispatch = EventDispatcher()

        @rpc
        def block(self, label):
            runs.add(label)
            time.sleep(BLOCK)  # the slow work itself (a C call, say)
            self.dispatch('blocked', label)  # publishing still works after
            return label

        @rpc
        def ping(self):
            return 'pong'

    class Listener:
        name = 'listener'

        @event_handler('slow', 'blocked')
        def on_blocked(self, label):
            events.add(label)

    config = dict(rabbit_config, HEARTBEAT=HEARTBEAT)
    runner = runner_factory(config, Slow, Listener)
    runner.start()

    # a plain pika connection with the same heartbeat, never serviced while
    # the worker blocks
    idle = pika.BlockingConnection(pika.URLParameters(
        config['AMQP_URI'] + '?heartbeat={}'.format(HEARTBEAT)))

    with caplog.at_level(logging.WARNING, logger='threadko'):
        # the client's own connections use the short heartbeat too
        with ClusterRpcProxy(config, timeout=BLOCK + 20) as proxy:
            started = time.monotonic()
            reply = proxy.slow.block.call_async('once')
            runs.wait_for('once')
            # meanwhile the same container keeps serving
            assert proxy.slow.ping() == 'pong'
            assert reply.result() == 'once'
            assert time.monotonic() - started >= BLOCK
            events.wait_for('once')
            assert proxy.slow.ping() == 'pong'

    idle_error = None
    try:
        idle.process_data_events()
        idle.channel()
    except pika.exceptions.AMQPError as exc:
        idle_error = exc
    finally:
        if idle.is_open:
            idle.close()

    # run once (a lost connection would have redelivered the request),
    # and no connection of the service or the client was lost
    assert runs.items == ['once']
    lost = [record.getMessage() for record in caplog.records
            if 'connection' in record.getMessage().lower()]
    assert lost == []

    # the control: a connection whose owner blocks as long is dropped
    assert isinstance(idle_error, pika.exceptions.AMQPConnectionError)
