"""The events wire format, checked on RabbitMQ with its management API and a
raw pika client: exactly what a Nameko 2.14 peer declares and sends."""

import json
import re

import pika
import pytest

from threadko.events import (
    BROADCAST, SERVICE_POOL, SINGLETON, EventDispatcher, EventHandler,
    event_handler,
)
from threadko.standalone.events import event_dispatcher
from threadko.testing.services import entrypoint_waiter

from support import entrypoint_for, fire

WAIT = 10


class Source:
    name = 'src'
    dispatch = EventDispatcher()

    @fire
    def send(self, event_type, data):
        self.dispatch(event_type, data)


class StableBroadcastHandler(EventHandler):
    @property
    def broadcast_identifier(self):
        return 'host-1'


def exchange_flags(rabbit_manager, vhost, name):
    [exchange] = [e for e in rabbit_manager.get_exchanges(vhost)
                  if e['name'] == name]
    return {key: exchange[key] for key in (
        'type', 'durable', 'auto_delete', 'internal', 'arguments')}


NAMEKO_EVENT_EXCHANGE = {
    'type': 'topic', 'durable': True, 'auto_delete': False,
    'internal': False, 'arguments': {},
}


def test_dispatcher_declares_the_event_exchange(
        rabbit_config, rabbit_manager, containers):
    containers(Source, rabbit_config).start()
    assert exchange_flags(
        rabbit_manager, rabbit_config['vhost'], 'src.events'
    ) == NAMEKO_EVENT_EXCHANGE


def test_auto_delete_event_exchanges(
        rabbit_config, rabbit_manager, containers):
    containers(Source, dict(rabbit_config, AUTO_DELETE_EVENT_EXCHANGES=True)
               ).start()
    assert exchange_flags(
        rabbit_manager, rabbit_config['vhost'], 'src.events'
    ) == dict(NAMEKO_EVENT_EXCHANGE, auto_delete=True)


def test_declare_event_exchanges_false(
        rabbit_config, rabbit_manager, containers):
    containers(Source, dict(rabbit_config, DECLARE_EVENT_EXCHANGES=False)
               ).start()
    names = {e['name'] for e in rabbit_manager.get_exchanges(
        rabbit_config['vhost'])}
    assert 'src.events' not in names


POOL_NAME = 'evt-src-happened--listener.handle'


@pytest.mark.parametrize('handler, kwargs, name, exclusive, auto_delete', [
    (event_handler, {'handler_type': SERVICE_POOL}, POOL_NAME, False, False),
    (event_handler, {'handler_type': SERVICE_POOL,
                     'reliable_delivery': False}, POOL_NAME, False, True),
    (event_handler, {'handler_type': SINGLETON}, 'evt-src-happened',
     False, False),
    (event_handler, {'handler_type': SINGLETON, 'reliable_delivery': False},
     'evt-src-happened', False, True),
    (StableBroadcastHandler.decorator, {'handler_type': BROADCAST},
     POOL_NAME + '-host-1', False, False),
    (event_handler, {'handler_type': BROADCAST, 'reliable_delivery': False},
     re.compile(re.escape(POOL_NAME) + '-[0-9a-f]{32}$'), True, True),
], ids=['pool', 'pool-unreliable', 'singleton', 'singleton-unreliable',
        'broadcast', 'broadcast-unreliable'])
def test_handler_queue_names_and_flags(
        rabbit_config, rabbit_manager, containers,
        handler, kwargs, name, exclusive, auto_delete):
    class Listener:
        name = 'listener'

        @handler('src', 'happened', **kwargs)
        def handle(self, data):
            pass

    containers(Listener, rabbit_config).start()
    vhost = rabbit_config['vhost']
    [queue] = rabbit_manager.get_queues(vhost)
    if isinstance(name, str):
        assert queue['name'] == name
    else:
        assert name.match(queue['name']), queue['name']
    # declared durable like every event queue; RabbitMQ (3.10 at least)
    # stores an exclusive queue as transient whatever the flag says
    assert queue['durable'] is not exclusive
    assert queue['exclusive'] is exclusive
    assert queue['auto_delete'] is auto_delete
    assert queue['arguments'] == {}

    bindings = rabbit_manager.get_queue_bindings(vhost, queue['name'])
    assert {(b['source'], b['routing_key']) for b in bindings
            if b['source']} == {('src.events', 'happened')}
    # the handler declares the source's exchange just as its dispatcher does
    assert exchange_flags(
        rabbit_manager, vhost, 'src.events') == NAMEKO_EVENT_EXCHANGE


def test_pattern_event_type_is_the_binding_key(
        rabbit_config, rabbit_manager, containers):
    class Listener:
        name = 'listener'

        @event_handler('src', 'order.*')
        def handle(self, data):
            pass

    containers(Listener, rabbit_config).start()
    queue = 'evt-src-order.*--listener.handle'
    bindings = rabbit_manager.get_queue_bindings(
        rabbit_config['vhost'], queue)
    assert ('src.events', 'order.*') in {
        (b['source'], b['routing_key']) for b in bindings}


@pytest.fixture
def probe(rabbit_config):
    """Declare ``src.events`` and bind a queue ``probe`` to it for every
    event type, with raw pika."""
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    channel = connection.channel()
    channel.exchange_declare('src.events', 'topic', durable=True)
    channel.queue_declare('probe')
    channel.queue_bind('probe', 'src.events', '#')
    connection.close()
    return 'probe'


def _assert_nameko_event_properties(message, event_type):
    assert message.method.exchange == 'src.events'
    assert message.method.routing_key == event_type
    properties = message.properties
    assert properties.content_type == 'application/json'
    assert properties.content_encoding == 'utf-8'
    assert properties.delivery_mode == 2
    assert properties.priority == 0
    for absent in ('reply_to', 'correlation_id', 'expiration', 'message_id',
                   'timestamp', 'type', 'app_id', 'user_id'):
        assert getattr(properties, absent) is None, absent


def test_event_message_from_a_service(
        rabbit_config, containers, probe, get_message_from_queue):
    source = containers(Source, rabbit_config)
    source.start()
    data = {'id': 1, 'name': 'Zoë'}
    handle = entrypoint_for(source, 'send').fire(
        'happened', data, context_data={
            'language': 'en', 'user_id': 5, 'auth_token': None})
    handle.result()

    message = get_message_from_queue(probe)
    _assert_nameko_event_properties(message, 'happened')
    assert message.payload == data  # the data itself, no envelope
    [call_id] = handle.worker_ctx.call_id_stack
    assert call_id.startswith('src.send.')
    assert message.headers == {
        'nameko.language': 'en',
        'nameko.user_id': 5,  # None values are not sent
        'nameko.call_id_stack': [call_id],
    }


def test_event_message_from_the_standalone_dispatcher(
        rabbit_config, probe, get_message_from_queue):
    dispatch = event_dispatcher(rabbit_config)
    try:
        dispatch('src', 'happened', ['ü', None])
    finally:
        dispatch.close()
    message = get_message_from_queue(probe)
    _assert_nameko_event_properties(message, 'happened')
    assert message.payload == ['ü', None]
    assert message.headers == {}


def test_nameko_event_is_handled_with_its_context(
        rabbit_config, containers):
    class Listener:
        name = 'listener'

        @event_handler('src', 'happened')
        def handle(self, data):
            return data

    listener = containers(Listener, rabbit_config)
    listener.start()
    # as a Nameko service dispatches it
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        with entrypoint_waiter(listener, 'handle', timeout=WAIT) as result:
            connection.channel().basic_publish(
                'src.events', 'happened',
                json.dumps({'from': 'nameko'}).encode('utf-8'),
                pika.BasicProperties(
                    content_type='application/json',
                    content_encoding='utf-8', delivery_mode=2, priority=0,
                    headers={
                        'nameko.call_id_stack': ['src.method.abc'],
                        'nameko.language': 'nl',
                    }))
    finally:
        connection.close()
    assert result.get() == {'from': 'nameko'}
    assert result.worker_ctx.data == {'language': 'nl'}
    stack = result.worker_ctx.call_id_stack
    assert stack[0] == 'src.method.abc'
    assert stack[1].startswith('listener.handle.')
