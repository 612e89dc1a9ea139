"""A poison event on the cluster: a ``threadko run`` service on quorum
queues whose handler always fails on it (``requeue_on_error=True``) gets
it ``QUEUE_DELIVERY_LIMIT`` + 1 times, then RabbitMQ dead-letters it (a
policy gives the queue a dead-letter exchange) instead of delivering it
forever; the service handles the next event as usual."""

import sys
import textwrap

import pika
import yaml

from support import ChildProcess, child_env, poll

SERVICE = '''
from threadko.dependency_providers import Config
from threadko.events import event_handler


class Poisoned:
    name = 'poisoned'

    config = Config()

    @event_handler('src', 'happened', requeue_on_error=True)
    def handle(self, payload):
        with open(self.config['DELIVERIES_LOG'], 'a') as log:
            log.write(payload + '\\n')
        if payload == 'poison':
            raise ValueError('this event always fails')
'''

LIMIT = 3
WAIT = 60


def test_a_poison_event_is_dead_lettered_after_the_delivery_limit(
        rabbit_cluster, cluster_config, tmp_path):
    vhost = cluster_config['vhost']
    # what an operator does to keep poison messages (docs/deployment.rst)
    rabbit_cluster.api_put('policies', vhost, 'poison', data={
        'pattern': '^evt-', 'apply-to': 'queues',
        'definition': {'dead-letter-exchange': 'poison'}})
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_cluster.uri(1, vhost)))
    channel = connection.channel()
    channel.exchange_declare('poison', 'fanout', durable=True)
    channel.queue_declare('poison-kept', durable=True,
                          arguments={'x-queue-type': 'quorum'})
    channel.queue_bind('poison-kept', 'poison')

    deliveries = tmp_path / 'deliveries.log'
    (tmp_path / 'poisoned.py').write_text(textwrap.dedent(SERVICE))
    config = {'AMQP_URI': cluster_config['AMQP_URI'], 'QUEUE_TYPE': 'quorum',
              'QUEUE_DELIVERY_LIMIT': LIMIT, 'max_workers': 1,
              'DELIVERIES_LOG': str(deliveries)}
    (tmp_path / 'config.yaml').write_text(yaml.safe_dump(config))
    service = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--config', 'config.yaml',
         'poisoned:Poisoned'], str(tmp_path), child_env(), timeout=WAIT)
    try:
        service.wait_for_line('running services')
        properties = pika.BasicProperties(
            content_type='application/json', delivery_mode=2)
        for payload in ('"poison"', '"fine"'):
            channel.basic_publish('src.events', 'happened', payload,
                                  properties)

        properties, body = poll(
            lambda: _get(channel, 'poison-kept'),
            'the poison event to be dead-lettered', WAIT)
        assert body == b'"poison"'
        assert properties.headers['x-death'][0]['reason'] == 'delivery_limit'
        poll(lambda: 'fine' in _lines(deliveries),
             'the next event to be handled', WAIT)
        assert _lines(deliveries).count('poison') == LIMIT + 1
    finally:
        service.close()
        connection.close()


def _get(channel, queue):
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    return (properties, body) if method is not None else None


def _lines(path):
    return path.read_text().split() if path.exists() else []
