"""Publisher and ProducerPool on the embedded broker: Nameko's publishing
defaults (wire protocol §4), errors, compression, concurrency and
reconnection. Messages are read back with ``basic_get``."""

import bz2
import json
import pickle
import threading
import zlib

import pytest
from pika.exceptions import ChannelClosedByBroker

from threadko import serialization
from threadko.amqp import memory
from threadko.amqp.connection import Connector
from threadko.amqp.entities import Exchange, Queue
from threadko.amqp.publish import ProducerPool, Publisher
from threadko.exceptions import BrokerRefused, UndeliverableMessage

WAIT = 5  # seconds
INBOX = 'inbox'


@pytest.fixture
def broker(memory_config):
    return memory.get_broker(memory_config['vhost'])


@pytest.fixture
def pool(memory_config):
    pool = ProducerPool(Connector(memory_config, heartbeat=0,
                                  transport_options=False))
    yield pool
    pool.close()


class Reader:
    """A separate connection to the vhost for declaring queues and reading
    published messages back."""

    def __init__(self, vhost):
        self.vhost = vhost
        self.connection = None
        self.channel = None
        self.reconnect()

    def reconnect(self):
        self.connection = memory.connect(self.vhost)
        self.channel = self.connection.channel()

    def get(self, queue=INBOX):
        """``(properties, body)`` of the next message; fails if none."""
        method, properties, body = self.channel.basic_get(
            queue, auto_ack=True)
        assert method is not None, 'no message in {!r}'.format(queue)
        return properties, body

    def drain(self, queue=INBOX):
        bodies = []
        while True:
            method, _, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)

    def close(self):
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def reader(memory_config):
    reader = Reader(memory_config['vhost'])
    reader.channel.queue_declare(INBOX)
    yield reader
    reader.close()


@pytest.fixture
def publisher(pool):
    return Publisher(pool, routing_key=INBOX)


def test_defaults(publisher, reader):
    publisher.publish({'hello': 'world'})
    properties, body = reader.get()
    assert json.loads(body) == {'hello': 'world'}
    assert properties.delivery_mode == 2
    assert properties.priority == 0
    assert properties.content_type == 'application/json'
    assert properties.content_encoding == 'utf-8'
    # properties Nameko does not set are absent
    for name in ('message_id', 'timestamp', 'app_id', 'type', 'expiration',
                 'correlation_id', 'reply_to', 'user_id'):
        assert getattr(properties, name) is None, name


@pytest.mark.parametrize('serializer, content_type, content_encoding, load', [
    ('pickle', 'application/x-python-serialize', 'binary', pickle.loads),
    ('yaml', 'application/x-yaml', 'utf-8', None),
])
def test_serializer_sets_content_type_and_encoding(
        pool, reader, serializer, content_type, content_encoding, load):
    Publisher(pool, routing_key=INBOX, serializer=serializer).publish(
        {'n': [1, 2]})
    properties, body = reader.get()
    assert properties.content_type == content_type
    assert properties.content_encoding == content_encoding
    accept = serialization.accepted_content_types([serializer])
    assert serialization.decode(
        body, content_type, content_encoding, accept) == {'n': [1, 2]}


def test_serializer_per_call_overrides_instance(publisher, reader):
    publisher.publish('x', serializer='pickle')
    properties, body = reader.get()
    assert properties.content_type == 'application/x-python-serialize'
    assert pickle.loads(body) == 'x'


@pytest.mark.parametrize('seconds, expected', [
    (30, '30000'), (2.5, '2500'), (0.25, '250')])
def test_expiration_is_seconds_sent_as_milliseconds(
        pool, reader, seconds, expected):
    Publisher(pool, routing_key=INBOX, expiration=600).publish(
        'x', expiration=seconds)
    properties, _ = reader.get()
    assert properties.expiration == expected


def test_call_options_override_instance_options(pool, reader):
    publisher = Publisher(pool, routing_key='elsewhere', priority=3,
                          delivery_mode=1, correlation_id='instance')
    publisher.publish('x', routing_key=INBOX, priority=5,
                      correlation_id='call', reply_to='replies',
                      message_id='m-1', type='kind', app_id='app')
    properties, _ = reader.get()
    assert properties.priority == 5
    assert properties.delivery_mode == 1
    assert properties.correlation_id == 'call'
    assert properties.reply_to == 'replies'
    assert properties.message_id == 'm-1'
    assert properties.type == 'kind'
    assert properties.app_id == 'app'

    # the call did not change the instance's options
    reader.channel.queue_declare('elsewhere')
    publisher.publish('y')
    properties, _ = reader.get('elsewhere')
    assert properties.priority == 3
    assert properties.correlation_id == 'instance'
    assert properties.reply_to is None


def test_header_precedence(pool, reader):
    publisher = Publisher(pool, routing_key=INBOX, headers={
        'a': 'instance', 'b': 'instance', 'c': 'instance'})
    publisher.publish('x', headers={'b': 'call', 'c': 'call'},
                      extra_headers={'c': 'extra'})
    properties, _ = reader.get()
    assert properties.headers == {'a': 'instance', 'b': 'call', 'c': 'extra'}

    publisher.publish('y')
    properties, _ = reader.get()
    assert properties.headers == {
        'a': 'instance', 'b': 'instance', 'c': 'instance'}


def test_tuple_header_values_are_sent_as_arrays(publisher, reader):
    publisher.publish('x', headers={'ids': (1, 2)})
    properties, _ = reader.get()
    assert properties.headers == {'ids': [1, 2]}


def test_declare_entities_before_publishing(pool, reader):
    exchange = Exchange('orders', type='topic')
    queue = Queue('order-log', exchange=exchange, routing_key='order.#')
    publisher = Publisher(pool, exchange='orders', declare=[queue])
    publisher.publish('first', routing_key='order.created')
    publisher.publish('second', routing_key='order.paid')
    assert [json.loads(b) for b in reader.drain('order-log')] == [
        'first', 'second']


def test_declare_per_call_adds_to_instance_declare(pool, reader):
    exchange = Exchange('fan', type='fanout')
    publisher = Publisher(pool, exchange='fan',
                          declare=[Queue('fan-1', exchange=exchange)])
    publisher.publish('x', declare=[Queue('fan-2', exchange=exchange)])
    assert reader.drain('fan-1') == [b'"x"']
    assert reader.drain('fan-2') == [b'"x"']


def test_exchange_object_is_declared(pool, broker):
    Publisher(pool, exchange=Exchange('fresh', type='fanout')).publish('x')
    assert 'fresh' in broker.exchange_names()


def test_exchange_object_per_call(pool, reader, broker):
    exchange = Exchange('per-call', type='direct')
    Publisher(pool).publish('x', exchange=exchange, routing_key='k')
    assert 'per-call' in broker.exchange_names()
    reader.channel.queue_bind(INBOX, 'per-call', 'k')
    Publisher(pool).publish('y', exchange=exchange, routing_key='k')
    assert reader.drain() == [b'"y"']


def test_mandatory_unroutable_raises_undeliverable(pool, reader):
    publisher = Publisher(pool, mandatory=True)
    with pytest.raises(UndeliverableMessage):
        publisher.publish('lost', routing_key='nobody-listens')
    # the pool is still usable, and routable mandatory messages go through
    publisher.publish('found', routing_key=INBOX)
    assert reader.drain() == [b'"found"']


def test_mandatory_per_call(publisher):
    with pytest.raises(UndeliverableMessage):
        publisher.publish('lost', routing_key='nobody-listens',
                          mandatory=True)


def test_unroutable_without_mandatory_is_dropped_silently(publisher):
    publisher.publish('lost', routing_key='nobody-listens')


def test_unroutable_mandatory_without_confirms_is_not_detected(pool):
    with pytest.warns(UserWarning, match='without publish confirms'):
        Publisher(pool, use_confirms=False, mandatory=True).publish(
            'lost', routing_key='nobody-listens')


def test_missing_exchange_is_a_404(publisher, reader):
    with pytest.raises(BrokerRefused) as error:
        publisher.publish('x', exchange='does-not-exist')
    assert error.value.reply_code == 404
    # pika's own type, for code that catches that
    assert isinstance(error.value, ChannelClosedByBroker)
    message = str(error.value)
    assert "publish to exchange 'does-not-exist'" in message
    assert 'declare it first' in message
    publisher.publish('after')
    assert reader.drain() == [b'"after"']


def test_pool_declares_entities(pool, broker):
    exchange = Exchange('declared-x', type='fanout')
    pool.declare([exchange, Queue('declared-q', exchange=exchange)])
    assert 'declared-x' in broker.exchange_names()
    assert ('declared-x', '', {}) in broker.bindings('declared-q')


def test_pool_declaration_refused_with_other_flags(pool):
    pool.declare([Exchange('flags', type='topic')])
    with pytest.raises(BrokerRefused) as error:
        pool.declare([Exchange('flags', type='direct')])
    assert error.value.reply_code == 406
    assert 'different flags' in str(error.value)
    # the pool keeps working after the refusal
    pool.declare([Exchange('flags', type='topic')])


@pytest.mark.parametrize('compression, mime, decompress', [
    ('zlib', 'application/x-gzip', zlib.decompress),
    ('bzip2', 'application/x-bz2', bz2.decompress),
])
def test_compression(publisher, reader, compression, mime, decompress):
    payload = {'text': 'abc' * 100}
    publisher.publish(payload, compression=compression,
                      headers={'keep': 'me'})
    properties, body = reader.get()
    assert properties.headers == {'keep': 'me', 'compression': mime}
    assert properties.content_type == 'application/json'
    assert json.loads(decompress(body)) == payload


def test_unencodable_payload_publishes_nothing(publisher, reader, broker):
    with pytest.raises(serialization.EncodeError):
        publisher.publish({'value': object()})
    assert broker.message_count(INBOX) == 0
    publisher.publish('fine')
    assert reader.drain() == [b'"fine"']


def test_sequential_publishes_reuse_one_connection(publisher, reader, broker):
    for n in range(5):
        publisher.publish(n)
    assert broker.connection_count() == 2  # the reader's and the pool's
    assert reader.drain() == [b'0', b'1', b'2', b'3', b'4']


def test_concurrent_publishers_each_message_arrives_once(
        pool, reader, broker):
    threads_count, per_thread = 8, 25
    publisher = Publisher(pool, routing_key=INBOX)
    start = threading.Barrier(threads_count, timeout=WAIT)
    errors = []

    def publish_many(index):
        try:
            start.wait()
            for n in range(per_thread):
                publisher.publish([index, n])
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=publish_many, args=(index,),
                         name='threadko-test-publisher-{}'.format(index))
        for index in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    received = [tuple(json.loads(body)) for body in reader.drain()]
    assert sorted(received) == [
        (index, n) for index in range(threads_count)
        for n in range(per_thread)]
    # connections are made on demand and kept: never more than publishers
    assert broker.connection_count() <= threads_count + 1


def test_close_then_publish_again(publisher, reader, broker):
    publisher.publish(1)
    publisher.pool.close()
    assert broker.connection_count() == 1  # only the reader's is left
    publisher.publish(2)
    assert reader.drain() == [b'1', b'2']


def test_pool_survives_the_broker_closing_its_connections(
        publisher, reader, broker):
    publisher.publish(1)
    broker.close_all_connections()
    publisher.publish(2)
    reader.reconnect()
    assert reader.drain() == [b'1', b'2']


def test_pool_survives_repeated_broker_closes(publisher, reader, broker):
    for n in range(3):
        publisher.publish(n)
        broker.close_all_connections()
    reader.reconnect()
    assert reader.drain() == [b'0', b'1', b'2']


def test_failed_publish_does_not_leak_its_connection(
        publisher, reader, broker):
    with pytest.raises(Exception):
        publisher.publish('x', priority='high')  # not an octet
    publisher.pool.close()
    assert broker.connection_count() == 1  # only the reader's is left
