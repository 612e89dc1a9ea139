"""Generic messaging between threadko and real Nameko 2.14.1 processes on
RabbitMQ: ``Publisher`` on one side, ``@consume`` on the other.

1. a Nameko worker's ``Publisher`` (``nameko_source.publish``) -> a threadko
   ``@consume`` of the queue a Nameko consumer would declare;
2. a threadko worker's ``Publisher`` -> Nameko's ``@consume``
   (``nameko_listener.on_message``), and the message properties as Nameko's
   client (kombu) reads them off a plain queue.

Bodies arrive as the argument; headers -- the publisher's custom ones and
the publishing worker's context data (``nameko.*``) -- as context data.
"""


import pytest

from threadko.messaging import Exchange, Publisher, Queue, consume
from threadko.standalone.rpc import ClusterRpcProxy

from support import BROKER_WAIT, Received, fire
from interop_support import STANDALONE_CALL_ID, Worker, call_id_of

WAIT = 10  # seconds a Nameko-side wait may take (RPC timeouts are longer)

#: the direct exchange nameko_peer's Publisher and @consume use
MESSAGES_EXCHANGE = Exchange('interop_messages', type='direct', durable=True)

BODY = {
    'text': 'Gr\u00fc\u00dfe, \u4e16\u754c \U0001F40D',
    'nested': {'list': [1, 2.5, None, True, {'x': []}], 'empty': {}},
    'big': 2 ** 62,
}
#: the publishing worker's context data (a float is an AMQP double)
CONTEXT_DATA = {
    'language': 'en-gb',
    'user_id': 42,
    'ratio': 0.25,
    'custom': 'caf\u00e9 \u2615',
}
#: custom headers given to the publish call
HEADERS = {
    'x-trace-id': 'abc-123',
    'x-attempt': 2,
    'x-weight': 0.75,
    'x-flags': ['a', 'b'],
    'x-ok': True,
    'nameko.tenant': 'acme',
}
#: what the consuming worker sees of HEADERS: every header is context data,
#: ``nameko.`` prefixes stripped
HEADERS_AS_CONTEXT = {
    'x-trace-id': 'abc-123',
    'x-attempt': 2,
    'x-weight': 0.75,
    'x-flags': ['a', 'b'],
    'x-ok': True,
    'tenant': 'acme',
}

@pytest.fixture
def start_threadko(container_factory, rabbit_config):
    """``start(service_cls)``: a started threadko container on the test's
    vhost."""
    def start(service_cls):
        container = container_factory(service_cls, rabbit_config)
        container.start()
        return container
    return start


# -- 1. Nameko Publisher -> threadko @consume --


def test_nameko_publisher_reaches_threadko_consumer(
        nameko_services, nameko_driver, start_threadko):
    received = Received()

    class ThreadkoConsumer:
        name = 'threadko_consumer'
        worker = Worker()

        # declared as nameko_peer's @consume declares it
        @consume(Queue('nameko_consume', exchange=MESSAGES_EXCHANGE,
                       routing_key='nameko_consume'))
        def on_message(self, body):
            received.add({
                'body': body,
                'context_data': dict(self.worker.data),
                'call_id': self.worker.call_id,
                'call_id_stack': list(self.worker.call_id_stack),
            })

    nameko = nameko_services('nameko_source', wait=False)
    driver = nameko_driver(wait=False)
    start_threadko(ThreadkoConsumer)
    nameko.wait_ready()
    driver.wait_ready()

    nameko_stack = driver.call('nameko_source', 'publish', [BODY],
                               {'headers': HEADERS},
                               context_data=CONTEXT_DATA)

    record, = received.wait_for_count(1)
    assert record['body'] == BODY
    assert record['context_data'] == dict(HEADERS_AS_CONTEXT, **CONTEXT_DATA)
    assert type(record['context_data']['ratio']) is float
    assert type(record['context_data']['x-weight']) is float
    assert STANDALONE_CALL_ID.match(nameko_stack[0])
    assert call_id_of('nameko_source', 'publish').match(nameko_stack[1])
    assert record['call_id_stack'] == nameko_stack + [record['call_id']]
    assert call_id_of('threadko_consumer', 'on_message').match(
        record['call_id'])


# -- 2. threadko Publisher -> Nameko @consume --


class ThreadkoPublisher:
    """Publishes to interop_messages; also declares the plain queue
    ``raw_probe`` (key ``raw_probe``) that the Nameko client reads."""

    name = 'threadko_publisher'
    publish = Publisher(exchange=MESSAGES_EXCHANGE, declare=[
        Queue('raw_probe', exchange=MESSAGES_EXCHANGE,
              routing_key='raw_probe')])

    @fire
    def send(self, body, **options):
        self.publish(body, **options)


def send(container, body, context_data=None, **options):
    """Publish ``body`` from a worker of a started ``ThreadkoPublisher``;
    return that worker's call id stack."""
    entrypoint = next(ep for ep in container.entrypoints
                      if ep.method_name == 'send')
    handle = entrypoint.fire(body, context_data=context_data, **options)
    handle.result(BROKER_WAIT)
    return handle.worker_ctx.call_id_stack


def test_threadko_publisher_reaches_nameko_consumer(
        nameko_services, start_threadko, rabbit_config):
    nameko = nameko_services('nameko_listener', wait=False)
    publisher = start_threadko(ThreadkoPublisher)
    nameko.wait_ready()

    threadko_stack = send(publisher, BODY, context_data=CONTEXT_DATA,
                          routing_key='nameko_consume', headers=HEADERS)

    with ClusterRpcProxy(rabbit_config, timeout=WAIT + 10) as client:
        record, = client.nameko_listener.wait_for(1, WAIT, 'message')
    assert record['handler'] == 'on_message'
    assert record['body'] == BODY
    assert record['context_data'] == dict(HEADERS_AS_CONTEXT, **CONTEXT_DATA)
    assert type(record['context_data']['ratio']) is float
    assert type(record['context_data']['x-weight']) is float
    assert len(threadko_stack) == 1
    assert call_id_of('threadko_publisher', 'send').match(threadko_stack[0])
    nameko_call_id = record['call_id_stack'][-1]
    assert record['call_id_stack'] == threadko_stack + [nameko_call_id]
    assert call_id_of('nameko_listener', 'on_message').match(nameko_call_id)


def test_threadko_publisher_options_as_nameko_client_reads_them(
        nameko_driver, start_threadko):
    driver = nameko_driver(wait=False)
    publisher = start_threadko(ThreadkoPublisher)
    driver.wait_ready()

    threadko_stack = send(
        publisher, BODY, context_data=CONTEXT_DATA, routing_key='raw_probe',
        headers=HEADERS, priority=7, expiration=60, correlation_id='corr-42',
        reply_to='replies-here')
    message = driver.get('raw_probe', timeout=WAIT)

    assert message['body'] == BODY
    assert (message['exchange'], message['routing_key']) == (
        'interop_messages', 'raw_probe')
    assert (message['content_type'], message['content_encoding']) == (
        'application/json', 'utf-8')
    properties = message['properties']
    assert properties['priority'] == 7
    assert properties['expiration'] == '60000'  # seconds -> milliseconds
    assert properties['correlation_id'] == 'corr-42'
    assert properties['reply_to'] == 'replies-here'
    assert properties['delivery_mode'] == 2
    context_headers = {'nameko.' + key: value
                       for key, value in CONTEXT_DATA.items()}
    assert message['headers'] == dict(
        HEADERS, **context_headers, **{'nameko.call_id_stack': threadko_stack})
    assert driver.get('raw_probe') is None
