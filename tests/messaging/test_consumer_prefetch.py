"""The per-entrypoint ``prefetch_count`` option (Nameko 3's) bounds how many
unacked messages the broker hands one consumer."""

import threading

import pika

from threadko.amqp import memory
from threadko.containers import ServiceContainer
from threadko.messaging import Exchange, Queue, consume

from support import Recorder

WAIT = 5

work = Queue('work', exchange=Exchange('work-x'), routing_key='work')


def test_prefetch_count_bounds_unacked_deliveries(memory_config):
    started = Recorder()
    release = threading.Event()

    class Service:
        name = 'prefetching'

        @consume(work, prefetch_count=2)
        def handle(self, body):
            started(body)
            release.wait(WAIT)

    config = dict(memory_config, max_workers=10)
    container = ServiceContainer(Service, config)
    container.start()
    try:
        broker = memory.get_broker(memory_config['vhost'])
        connection = memory.connect(memory_config['vhost'])
        channel = connection.channel()
        for number in range(5):
            channel.basic_publish('work-x', 'work', str(number).encode(),
                                  pika_properties())
        started.wait_for(0)
        started.wait_for(1)
        # two in the workers, the other three still on the broker
        assert broker.unacked_count('work') == 2
        assert broker.message_count('work') == 3
        assert len(started.events) == 2
        release.set()
        for number in range(5):
            started.wait_for(number)
        connection.close()
    finally:
        release.set()
        container.stop()


def pika_properties():
    return pika.BasicProperties(content_type='application/json')
