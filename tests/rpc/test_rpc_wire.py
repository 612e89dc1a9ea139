"""The RPC wire format, checked with a raw pika client on RabbitMQ: what a
Nameko 2.14 peer puts on and expects from the broker."""

import json
import uuid

import pika
import pytest

from support import RawRpcCaller

from threadko.rpc import RpcProxy, rpc
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 10


class Echo:
    name = 'echo'

    @rpc
    def echo(self, *args, **kwargs):
        return {'args': list(args), 'kwargs': kwargs}

    @rpc
    def fail(self):
        raise ValueError('bad', 3)


class Caller:
    name = 'caller'
    echo = RpcProxy('echo')

    @rpc
    def call(self):
        return self.echo.echo()


@pytest.fixture
def raw(rabbit_config):
    client = RawRpcCaller(rabbit_config['AMQP_URI'])
    yield client
    client.close()


@pytest.fixture
def echo_service(rabbit_config, containers):
    container = containers(Echo, rabbit_config)
    container.start()
    return container


def test_service_declares_nameko_entities(
        rabbit_config, rabbit_manager, echo_service):
    vhost = rabbit_config['vhost']
    exchanges = {e['name']: e for e in rabbit_manager.get_exchanges(vhost)}
    assert exchanges['nameko-rpc']['type'] == 'topic'
    assert exchanges['nameko-rpc']['durable'] is True
    assert exchanges['nameko-rpc']['auto_delete'] is False

    queue = rabbit_manager.get_queue(vhost, 'rpc-echo')
    assert queue['durable'] is True
    assert queue['exclusive'] is False
    assert queue['auto_delete'] is False
    assert queue['arguments'] == {}

    bindings = rabbit_manager.get_queue_bindings(vhost, 'rpc-echo')
    assert {(b['source'], b['routing_key']) for b in bindings} >= {
        ('nameko-rpc', 'echo.*')}


def test_reply_queue_of_a_calling_service(
        rabbit_config, rabbit_manager, containers, echo_service):
    containers(Caller, rabbit_config).start()
    vhost = rabbit_config['vhost']
    reply_queues = [q for q in rabbit_manager.get_queues(vhost)
                    if q['name'].startswith('rpc.reply-caller-')]
    assert len(reply_queues) == 1
    queue = reply_queues[0]
    assert queue['durable'] is True
    assert queue['exclusive'] is False
    assert queue['auto_delete'] is False
    assert queue['arguments'] == {'x-expires': 300000}
    reply_key = queue['name'][len('rpc.reply-caller-'):]
    bindings = rabbit_manager.get_queue_bindings(vhost, queue['name'])
    assert ('nameko-rpc', reply_key) in {
        (b['source'], b['routing_key']) for b in bindings}


def test_raw_request_gets_nameko_shaped_reply(raw, echo_service):
    correlation_id = raw.publish(
        'echo.echo', json.dumps({'args': ['ü', 1], 'kwargs': {'k': None}}))
    method, properties, body = raw.next_reply(WAIT)
    assert method.exchange == 'nameko-rpc'
    assert method.routing_key == raw.reply_key
    assert properties.correlation_id == correlation_id
    assert properties.content_type == 'application/json'
    assert properties.delivery_mode == 2
    assert not properties.headers
    assert json.loads(body) == {
        'result': {'args': ['ü', 1], 'kwargs': {'k': None}}, 'error': None}


def test_error_reply_shape(raw, echo_service):
    raw.publish('echo.fail', json.dumps({'args': [], 'kwargs': {}}))
    _, _, body = raw.next_reply(WAIT)
    assert json.loads(body) == {
        'result': None,
        'error': {
            'exc_type': 'ValueError', 'exc_path': 'builtins.ValueError',
            'exc_args': ['bad', '3'], 'value': "('bad', 3)"},
    }


@pytest.mark.parametrize('body, exc_type, value', [
    ({'args': []}, 'MalformedRequest', 'Message missing `args` or `kwargs`'),
    ('not json at all', 'MalformedRequest', None),
    ({'args': [], 'kwargs': {}}, 'MethodNotFound', 'nope'),
])
def test_bad_requests_get_nameko_error_paths(
        raw, echo_service, body, exc_type, value):
    routing_key = 'echo.nope' if exc_type == 'MethodNotFound' else 'echo.echo'
    raw.publish(routing_key,
                body if isinstance(body, str) else json.dumps(body))
    _, _, reply = raw.next_reply(WAIT)
    error = json.loads(reply)['error']
    assert error['exc_type'] == exc_type
    # Nameko callers re-raise these as their own exception types
    assert error['exc_path'] == 'nameko.exceptions.{}'.format(exc_type)
    if value is not None:
        assert error['value'] == value


def test_unaccepted_content_type_is_answered_not_dropped(raw, echo_service):
    raw.publish('echo.echo', b'\x80\x04K\x01.',
                content_type='application/x-python-serialize')
    _, properties, reply = raw.next_reply(WAIT)
    assert properties.content_type == 'application/json'
    error = json.loads(reply)['error']
    assert error['exc_type'] == 'MalformedRequest'
    assert 'not accepted' in error['value']


def test_request_without_reply_to_does_not_stop_the_service(
        raw, rabbit_config, echo_service):
    raw.publish('echo.echo', json.dumps({'args': [], 'kwargs': {}}),
                reply=False)
    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as proxy:
        assert proxy.echo.echo(1) == {'args': [1], 'kwargs': {}}


def test_request_headers_as_sent_by_standalone_proxy(
        rabbit_config, get_message_from_queue):
    # no service: read the request straight off the queue
    channel_config = dict(rabbit_config)
    connection = pika.BlockingConnection(
        pika.URLParameters(channel_config['AMQP_URI']))
    channel = connection.channel()
    channel.exchange_declare('nameko-rpc', 'topic', durable=True)
    channel.queue_declare('rpc-target', durable=True)
    channel.queue_bind('rpc-target', 'nameko-rpc', 'target.*')
    connection.close()

    with ClusterRpcProxy(rabbit_config, context_data={
            'language': 'en', 'auth_token': None}) as proxy:
        proxy.target.method.call_async('Matt', flag=True)
    message = get_message_from_queue('rpc-target')

    properties = message.properties
    assert message.payload == {'args': ['Matt'], 'kwargs': {'flag': True}}
    assert properties.content_type == 'application/json'
    assert properties.content_encoding == 'utf-8'
    assert properties.delivery_mode == 2
    assert properties.priority == 0
    uuid.UUID(properties.correlation_id)
    uuid.UUID(properties.reply_to)
    headers = message.headers
    assert headers['nameko.language'] == 'en'
    assert 'nameko.auth_token' not in headers  # None values are not sent
    [call_id] = headers['nameko.call_id_stack']
    assert call_id.startswith('standalone_rpc_proxy.call.')
