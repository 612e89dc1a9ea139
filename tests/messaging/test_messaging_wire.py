"""``@consume`` and ``Publisher`` on the wire, checked on RabbitMQ with its
management API and a raw pika client: what a Nameko 2.14 peer declares,
sends and expects."""

import json
import zlib

import pika
import pytest

from threadko.messaging import Exchange, Publisher, Queue, binding, consume
from threadko.testing.services import entrypoint_waiter

from support import entrypoint_for, fire

WAIT = 10


def flags(entity, *keys):
    return {key: entity[key] for key in keys}


class RawPika:
    """A plain pika connection to the test vhost."""

    def __init__(self, uri):
        self.connection = pika.BlockingConnection(pika.URLParameters(uri))
        self.channel = self.connection.channel()

    def consume_one(self, queue):
        """Receive one message with ``basic_consume``: ``(method,
        properties, body)``."""
        for method, properties, body in self.channel.consume(
                queue, inactivity_timeout=WAIT):
            assert method is not None, 'nothing on {} within {}s'.format(
                queue, WAIT)
            self.channel.basic_ack(method.delivery_tag)
            self.channel.cancel()
            return method, properties, body

    def close(self):
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def raw(rabbit_config):
    client = RawPika(rabbit_config['AMQP_URI'])
    yield client
    client.close()


# -- @consume ------------------------------------------------------------------

def test_consume_declares_the_queue_as_given(
        rabbit_config, rabbit_manager, containers):
    queue = Queue(
        'jobs', exchange=Exchange('jobs-ex', type='topic'),
        routing_key='jobs.*', queue_arguments={'x-max-priority': 10},
        bindings=[binding(Exchange('audit', type='fanout'))])

    class Consumer:
        name = 'consumer'

        @consume(queue)
        def handle(self, body):
            pass

    containers(Consumer, rabbit_config).start()
    vhost = rabbit_config['vhost']
    exchanges = {e['name']: e for e in rabbit_manager.get_exchanges(vhost)}
    keys = ('type', 'durable', 'auto_delete', 'internal', 'arguments')
    assert flags(exchanges['jobs-ex'], *keys) == {
        'type': 'topic', 'durable': True, 'auto_delete': False,
        'internal': False, 'arguments': {}}
    assert flags(exchanges['audit'], *keys) == {
        'type': 'fanout', 'durable': True, 'auto_delete': False,
        'internal': False, 'arguments': {}}

    declared = rabbit_manager.get_queue(vhost, 'jobs')
    assert flags(declared, 'durable', 'exclusive', 'auto_delete',
                 'arguments') == {
        'durable': True, 'exclusive': False, 'auto_delete': False,
        'arguments': {'x-max-priority': 10}}
    bindings = rabbit_manager.get_queue_bindings(vhost, 'jobs')
    assert {(b['source'], b['routing_key']) for b in bindings
            if b['source']} == {('jobs-ex', 'jobs.*'), ('audit', '')}


def test_raw_publish_is_consumed_with_its_headers_as_context(
        rabbit_config, containers, raw):
    queue = Queue('inbox', exchange=Exchange('inbox-ex'), routing_key='in')

    class Consumer:
        name = 'consumer'

        @consume(queue)
        def handle(self, body):
            return body

    container = containers(Consumer, rabbit_config)
    container.start()
    with entrypoint_waiter(container, 'handle', timeout=WAIT) as result:
        raw.channel.basic_publish(
            'inbox-ex', 'in', json.dumps({'é': [1, 2]}).encode('utf-8'),
            pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8',
                delivery_mode=2, headers={
                    'nameko.call_id_stack': ['nameko_svc.method.abc'],
                    'nameko.user_id': 9,
                    'x-custom': 'raw name kept',
                }))
    assert result.get() == {'é': [1, 2]}
    worker_ctx = result.worker_ctx
    assert worker_ctx.data == {'user_id': 9, 'x-custom': 'raw name kept'}
    assert worker_ctx.call_id_stack[0] == 'nameko_svc.method.abc'
    assert worker_ctx.call_id_stack[1].startswith('consumer.handle.')


# -- Publisher -------------------------------------------------------------------

class Sender:
    name = 'sender'
    publish = Publisher(exchange=Exchange('outbox'), routing_key='k',
                        headers={'instance': 'header'})

    @fire
    def send(self, msg, **kwargs):
        self.publish(msg, **kwargs)


@pytest.fixture
def sender(rabbit_config, containers, raw):
    container = containers(Sender, rabbit_config)
    container.start()
    raw.channel.queue_declare('sink')
    raw.channel.queue_bind('sink', 'outbox', 'k')
    return container


def _send(container, msg, context_data=None, **kwargs):
    handle = entrypoint_for(container, 'send').fire(
        msg, context_data=context_data, **kwargs)
    handle.result()
    return handle.worker_ctx


def test_publisher_exchange_flags(rabbit_config, rabbit_manager, sender):
    [exchange] = [e for e in rabbit_manager.get_exchanges(
        rabbit_config['vhost']) if e['name'] == 'outbox']
    assert flags(exchange, 'type', 'durable', 'auto_delete', 'arguments') == {
        'type': 'direct', 'durable': True, 'auto_delete': False,
        'arguments': {}}


def test_published_message_as_a_raw_consumer_sees_it(sender, raw):
    worker_ctx = _send(
        sender, {'n': 1, 'text': 'Zoë'}, context_data={'language': 'en'},
        expiration=1.5, headers={'x-custom': 'v'})
    method, properties, body = raw.consume_one('sink')
    assert method.exchange == 'outbox'
    assert method.routing_key == 'k'
    assert json.loads(body.decode('utf-8')) == {'n': 1, 'text': 'Zoë'}
    assert properties.content_type == 'application/json'
    assert properties.content_encoding == 'utf-8'
    assert properties.delivery_mode == 2
    assert properties.priority == 0
    assert properties.expiration == '1500'  # seconds in, ms string out
    for absent in ('reply_to', 'correlation_id', 'message_id', 'timestamp',
                   'type', 'app_id', 'user_id'):
        assert getattr(properties, absent) is None, absent
    assert properties.headers == {
        'instance': 'header',
        'x-custom': 'v',
        'nameko.language': 'en',
        'nameko.call_id_stack': worker_ctx.call_id_stack,
    }
    [call_id] = worker_ctx.call_id_stack
    assert call_id.startswith('sender.send.')


def test_published_message_with_overrides_and_compression(sender, raw):
    _send(sender, 'squeezed', compression='zlib', priority=3,
          delivery_mode=1, correlation_id='c-1', reply_to='back')
    _, properties, body = raw.consume_one('sink')
    assert json.loads(zlib.decompress(body)) == 'squeezed'
    assert properties.headers['compression'] == 'application/x-gzip'
    assert properties.priority == 3
    assert properties.delivery_mode == 1
    assert properties.correlation_id == 'c-1'
    assert properties.reply_to == 'back'


def test_publisher_declare_flags(rabbit_config, rabbit_manager, containers):
    exchange = Exchange('transient', type='fanout', durable=False,
                        auto_delete=True)

    class Declaring:
        name = 'declaring'
        publish = Publisher(exchange=exchange, declare=[
            Queue('declared', exchange=exchange, durable=False,
                  queue_arguments={'x-message-ttl': 60000})])

        @fire
        def send(self, msg):
            self.publish(msg)

    containers(Declaring, rabbit_config).start()
    vhost = rabbit_config['vhost']
    [declared_exchange] = [e for e in rabbit_manager.get_exchanges(vhost)
                           if e['name'] == 'transient']
    assert flags(declared_exchange, 'type', 'durable', 'auto_delete') == {
        'type': 'fanout', 'durable': False, 'auto_delete': True}
    queue = rabbit_manager.get_queue(vhost, 'declared')
    assert flags(queue, 'durable', 'exclusive', 'auto_delete',
                 'arguments') == {
        'durable': False, 'exclusive': False, 'auto_delete': False,
        'arguments': {'x-message-ttl': 60000}}
