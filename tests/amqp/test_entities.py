"""Exchange / Queue / Binding declarations, checked against the embedded
broker's routing."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from threadko.amqp import memory
from threadko.amqp.entities import Binding, Exchange, Queue, binding

from support import drain_queue


@pytest.fixture
def broker(memory_config):
    return memory.get_broker(memory_config['vhost'])


@pytest.fixture
def connection(memory_config):
    connection = memory.connect(memory_config['vhost'])
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def channel(connection):
    return connection.channel()


def test_queue_with_exchange_and_extra_bindings_routes(channel, broker):
    orders = Exchange('orders', type='topic')
    audit = Exchange('audit', type='fanout')
    queue = Queue('billing', exchange=orders, routing_key='order.*',
                  bindings=[Binding(orders, 'refund.#'), Binding(audit)])
    queue.declare(channel)

    for exchange, key in [('orders', 'order.created'),
                          ('orders', 'refund.partial.eu'),
                          ('orders', 'shipping.created'),
                          ('orders', 'order.created.late'),
                          ('audit', 'anything')]:
        channel.basic_publish(exchange, key, key.encode())

    assert drain_queue(channel, 'billing') == [
        b'order.created', b'refund.partial.eu', b'anything']
    assert sorted(broker.bindings('billing')) == [
        ('audit', '', {}), ('orders', 'order.*', {}),
        ('orders', 'refund.#', {})]


def test_declaring_a_queue_declares_its_exchanges(channel, broker):
    queue = Queue('q', exchange=Exchange('main', type='direct'),
                  routing_key='k',
                  bindings=[Binding(Exchange('extra', type='fanout'))])
    queue.declare(channel)
    assert {'main', 'extra'} <= set(broker.exchange_names())


def test_headers_binding_arguments(channel):
    events = Exchange('events', type='headers')
    Queue('eu-orders', exchange=events,
          binding_arguments={'x-match': 'all', 'region': 'eu',
                             'kind': 'order'}).declare(channel)
    any_eu = binding(events, arguments={
        'x-match': 'any', 'region': 'eu', 'kind': 'nothing'})
    Queue('any-eu', bindings=[any_eu]).declare(channel)

    for region, kind in [('eu', 'order'), ('eu', 'refund'), ('us', 'order')]:
        channel.basic_publish(
            'events', '', '{}-{}'.format(region, kind).encode(),
            pika.BasicProperties(headers={'region': region, 'kind': kind}))

    assert drain_queue(channel, 'eu-orders') == [b'eu-order']
    assert drain_queue(channel, 'any-eu') == [b'eu-order', b'eu-refund']


def test_queue_without_exchange_is_reachable_through_the_default_exchange(
        channel, broker):
    Queue('plain').declare(channel)
    channel.basic_publish('', 'plain', b'hi')
    assert drain_queue(channel, 'plain') == [b'hi']
    assert broker.bindings('plain') == []


def test_default_exchange_is_never_declared_or_bound(channel, broker):
    # RabbitMQ refuses declaring or binding to the default exchange (403);
    # the channel stays open, so neither was attempted
    Exchange('').declare(channel)
    Queue('via-default', exchange=Exchange(''),
          routing_key='ignored').declare(channel)
    assert channel.is_open
    assert broker.bindings('via-default') == []
    channel.basic_publish('', 'via-default', b'hi')
    assert drain_queue(channel, 'via-default') == [b'hi']


def test_declaring_twice_is_harmless(channel, broker):
    queue = Queue('twice', exchange=Exchange('ex', type='topic'),
                  routing_key='a.#', bindings=[Binding(Exchange('ex2'), 'k')])
    queue.declare(channel)
    queue.declare(channel)
    assert channel.is_open
    assert len(broker.bindings('twice')) == 2


def test_queue_options_reach_the_broker(channel):
    Queue('transient', durable=False,
          queue_arguments={'x-expires': 60000}).declare(channel)
    # an equivalent redeclaration is accepted ...
    channel.queue_declare('transient', durable=False,
                          arguments={'x-expires': 60000})
    # ... a different durability is not
    with pytest.raises(ChannelClosedByBroker) as error:
        channel.queue_declare('transient', durable=True,
                              arguments={'x-expires': 60000})
    assert error.value.reply_code == 406


def test_exchange_options_reach_the_broker(channel):
    Exchange('fan', type='fanout', durable=False).declare(channel)
    channel.exchange_declare('fan', exchange_type='fanout', durable=False)
    with pytest.raises(ChannelClosedByBroker) as error:
        channel.exchange_declare('fan', exchange_type='direct', durable=False)
    assert error.value.reply_code == 406


def test_defaults_match_nameko():
    exchange = Exchange('e')
    assert (exchange.type, exchange.durable, exchange.auto_delete,
            exchange.internal) == ('direct', True, False, False)
    queue = Queue('q')
    assert (queue.durable, queue.exclusive, queue.auto_delete) == (
        True, False, False)


def test_exclusive_implies_auto_delete(connection, memory_config, broker):
    queue = Queue('mine', exclusive=True)
    assert queue.auto_delete
    channel = connection.channel()
    queue.declare(channel)
    # the broker holds it as auto-delete: the matching redeclaration passes
    channel.queue_declare('mine', durable=True, exclusive=True,
                          auto_delete=True)
    assert channel.is_open

    other = memory.connect(memory_config['vhost'])
    try:
        with pytest.raises(ChannelClosedByBroker) as error:
            other.channel().queue_declare('mine', passive=True)
        assert error.value.reply_code == 405  # RESOURCE_LOCKED
    finally:
        other.close()

    connection.close()
    assert 'mine' not in broker.queue_names()


def test_exchange_equality_and_hash():
    assert Exchange('a') == Exchange('a')
    assert hash(Exchange('a')) == hash(Exchange('a'))
    assert Exchange('a') != Exchange('b')
    assert Exchange('a') != Exchange('a', type='topic')
    assert Exchange('a') != Exchange('a', durable=False)
    assert Exchange('a') != Exchange('a', auto_delete=True)
    assert Exchange('a') != Exchange('a', internal=True)
    assert Exchange('a') != 'a'


def test_exchange_arguments_compare_by_value():
    first = Exchange('a', arguments={'alternate-exchange': 'x',
                                     'list': [1, {'k': 'v'}]})
    second = Exchange('a', arguments={'list': [1, {'k': 'v'}],
                                      'alternate-exchange': 'x'})
    assert first == second
    assert hash(first) == hash(second)
    assert first != Exchange('a', arguments={'alternate-exchange': 'y'})
    assert len({first, second, Exchange('a')}) == 2


def test_no_declare_exchange_is_not_declared(channel, broker):
    Exchange('existing-only', type='topic', no_declare=True).declare(channel)
    assert 'existing-only' not in broker.exchange_names()


def test_no_declare_queue_is_not_declared(channel, broker):
    Queue('not-declared', exchange=Exchange('x'), no_declare=True).declare(
        channel)
    assert 'not-declared' not in broker.queue_names()
    assert 'x' not in broker.exchange_names()


def test_queue_takes_an_exchange_name_as_kombu_does(channel, broker):
    queue = Queue('by-name', exchange='named', routing_key='k')
    assert queue.exchange == Exchange('named', type='direct')
    queue.declare(channel)
    channel.basic_publish('named', 'k', b'routed')
    assert drain_queue(channel, 'by-name') == [b'routed']


def test_exclusive_queue_is_auto_delete_as_in_kombu():
    assert Queue('q', exclusive=True).auto_delete is True
