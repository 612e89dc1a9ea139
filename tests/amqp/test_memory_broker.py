"""The embedded broker behind ``memory://``: pika's blocking API with
RabbitMQ's routing, queue and delivery semantics, in process."""

import threading
import time
import uuid

import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker, ChannelWrongStateError, ConnectionClosedByBroker,
    ConnectionWrongStateError, DuplicateConsumerTag, UnroutableError)
from pika.spec import Basic

from threadko.amqp import memory

from support import drain_queue

WAIT = 5  # seconds: the longest a test waits for something that must happen


@pytest.fixture
def vhost():
    name = 'test-memory-broker-' + uuid.uuid4().hex
    yield name
    memory.delete_vhost(name)


@pytest.fixture
def vhost_broker(vhost):
    return memory.get_broker(vhost)


@pytest.fixture
def connect(vhost):
    return lambda: memory.connect(vhost)


@pytest.fixture
def connection(connect):
    return connect()


@pytest.fixture
def channel(connection):
    return connection.channel()


class Received:
    """A consumer callback that records what it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, channel, method, properties, body):
        self.calls.append((channel, method, properties, body))

    @property
    def bodies(self):
        return [body for _, _, _, body in self.calls]

    @property
    def methods(self):
        return [method for _, method, _, _ in self.calls]


def eventually(predicate, timeout=WAIT):
    """Poll ``predicate`` until it is true; for time-based broker expiry."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition never became true'
        time.sleep(0.002)


def declare_bound_queue(channel, exchange, exchange_type, routing_key='',
                        arguments=None):
    channel.exchange_declare(exchange, exchange_type)
    queue = channel.queue_declare('').method.queue
    channel.queue_bind(queue, exchange, routing_key, arguments)
    return queue


# -- routing ------------------------------------------------------------------

def test_default_exchange_routes_to_the_queue_named_by_the_routing_key(
        channel):
    channel.queue_declare('orders')
    channel.basic_publish('', 'orders', b'one')
    channel.basic_publish('', 'nobody', b'lost')

    method, properties, body = channel.basic_get('orders')

    assert isinstance(method, Basic.GetOk)
    assert (method.exchange, method.routing_key, body) == (
        '', 'orders', b'one')
    assert isinstance(properties, pika.BasicProperties)
    assert channel.basic_get('orders') == (None, None, None)


def test_standard_exchanges_exist(vhost_broker):
    assert {'', 'amq.direct', 'amq.topic', 'amq.fanout', 'amq.headers'} <= set(
        vhost_broker.exchange_names())


def test_direct_exchange_matches_the_exact_routing_key(channel):
    queue = declare_bound_queue(channel, 'ex', 'direct', 'a.b')

    for key in ('a.b', 'a', 'a.b.c', 'A.B'):
        channel.basic_publish('ex', key, key.encode())

    assert drain_queue(channel, queue) == [b'a.b']


@pytest.mark.parametrize('binding_key, routing_key, matches', [
    ('#', 'a.b.c', True),
    ('#', 'a', True),
    ('#', '', True),
    ('a.#', 'a', True),
    ('a.#', 'a.b.c', True),
    ('a.#', 'b.a', False),
    ('*.b', 'x.b', True),
    ('*.b', 'b', False),
    ('*.b', 'x.y.b', False),
    ('a.*', 'a', False),
    ('a.*.c', 'a.b.c', True),
    ('#.c', 'c', True),
    ('a.#.c', 'a.c', True),
    ('a.#.c', 'a.x.y.c', True),
    ('a.#.c', 'a.x.y', False),
    ('a', 'a.b', False),
    ('*', '', False),
])
def test_topic_exchange_routing(channel, binding_key, routing_key, matches):
    queue = declare_bound_queue(channel, 'topics', 'topic', binding_key)

    channel.basic_publish('topics', routing_key, b'm')

    assert drain_queue(channel, queue) == ([b'm'] if matches else [])


def test_fanout_exchange_ignores_the_routing_key(channel):
    channel.exchange_declare('all', 'fanout')
    queues = [channel.queue_declare('').method.queue for _ in range(3)]
    for index, queue in enumerate(queues):
        channel.queue_bind(queue, 'all', 'key-{}'.format(index))

    channel.basic_publish('all', 'whatever', b'm')

    assert [drain_queue(channel, queue) for queue in queues] == [[b'm']] * 3


@pytest.mark.parametrize('x_match, headers, matches', [
    ('all', {'kind': 'a', 'size': 1}, True),
    ('all', {'kind': 'a', 'size': 1, 'extra': 'x'}, True),
    ('all', {'kind': 'a'}, False),
    ('all', {'kind': 'b', 'size': 1}, False),
    ('any', {'kind': 'a'}, True),
    ('any', {'size': 1}, True),
    ('any', {'kind': 'b', 'size': 2}, False),
    ('any', None, False),
])
def test_headers_exchange_routing(channel, x_match, headers, matches):
    queue = declare_bound_queue(
        channel, 'hdr', 'headers', 'ignored',
        {'x-match': x_match, 'kind': 'a', 'size': 1, 'x-note': 'ignored'})

    channel.basic_publish('hdr', 'any-key', b'm',
                          pika.BasicProperties(headers=headers))

    assert drain_queue(channel, queue) == ([b'm'] if matches else [])


def test_headers_binding_defaults_to_all(channel):
    queue = declare_bound_queue(channel, 'hdr', 'headers', '',
                                {'kind': 'a', 'size': 1})

    channel.basic_publish('hdr', '', b'partial',
                          pika.BasicProperties(headers={'kind': 'a'}))
    channel.basic_publish(
        'hdr', '', b'full',
        pika.BasicProperties(headers={'kind': 'a', 'size': 1}))

    assert drain_queue(channel, queue) == [b'full']


def test_a_queue_matched_by_several_bindings_gets_one_copy(channel):
    queue = declare_bound_queue(channel, 'topics', 'topic', 'a.*')
    channel.queue_bind(queue, 'topics', '#')
    channel.queue_bind(queue, 'topics', 'a.b')
    other = channel.queue_declare('').method.queue
    channel.queue_bind(other, 'topics', 'a.b')

    channel.basic_publish('topics', 'a.b', b'm')

    assert drain_queue(channel, queue) == [b'm']
    assert drain_queue(channel, other) == [b'm']


def test_unbind_stops_routing(channel, vhost_broker):
    queue = declare_bound_queue(channel, 'ex', 'direct', 'k')
    assert vhost_broker.bindings(queue) == [('ex', 'k', {})]

    channel.queue_unbind(queue, 'ex', 'k')
    channel.basic_publish('ex', 'k', b'm')

    assert vhost_broker.bindings(queue) == []
    assert drain_queue(channel, queue) == []


def test_str_bodies_are_encoded_as_utf8(channel):
    channel.queue_declare('q')

    channel.basic_publish('', 'q', 'héllo')

    assert drain_queue(channel, 'q') == ['héllo'.encode('utf-8')]


def test_every_delivery_gets_its_own_copy_of_the_properties(channel):
    channel.exchange_declare('all', 'fanout')
    for name in ('q1', 'q2'):
        channel.queue_declare(name)
        channel.queue_bind(name, 'all')
    headers = {'tags': ['a']}
    properties = pika.BasicProperties(headers=headers, correlation_id='c1')

    channel.basic_publish('all', '', b'm', properties)
    headers['tags'].append('changed by publisher')
    _, first, _ = channel.basic_get('q1', auto_ack=True)
    first.headers['tags'].append('changed by consumer')
    _, second, _ = channel.basic_get('q2', auto_ack=True)

    assert second.headers == {'tags': ['a']}
    assert second.correlation_id == 'c1'


# -- publishing errors --------------------------------------------------------

def test_unroutable_mandatory_message_raises_under_confirms(channel):
    channel.confirm_delivery()
    channel.exchange_declare('ex', 'direct')

    with pytest.raises(UnroutableError) as raised:
        channel.basic_publish('ex', 'nowhere', b'm',
                              pika.BasicProperties(message_id='id1'),
                              mandatory=True)

    [returned] = raised.value.messages
    assert isinstance(returned.method, Basic.Return)
    assert (returned.method.reply_code, returned.method.reply_text) == (
        312, 'NO_ROUTE')
    assert (returned.method.exchange, returned.method.routing_key) == (
        'ex', 'nowhere')
    assert (returned.properties.message_id, returned.body) == ('id1', b'm')
    assert channel.is_open


def test_unroutable_messages_are_dropped_silently_otherwise(channel):
    channel.confirm_delivery()
    channel.basic_publish('', 'nowhere', b'not mandatory')
    other = channel.connection.channel()
    other.basic_publish('', 'nowhere', b'no confirms', mandatory=True)


def test_publishing_to_a_missing_exchange_closes_the_channel(
        connection, channel, vhost):
    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.basic_publish('missing', 'k', b'm')

    assert raised.value.reply_code == 404
    assert raised.value.reply_text == (
        "NOT_FOUND - no exchange 'missing' in vhost '{}'".format(vhost))
    assert channel.is_closed
    with pytest.raises(ChannelWrongStateError):
        channel.queue_declare('q')
    assert connection.is_open
    connection.channel().queue_declare('q')


# -- declaring ----------------------------------------------------------------

def test_queue_declare_reports_name_and_counts(channel):
    channel.queue_declare('q')
    channel.basic_publish('', 'q', b'1')
    channel.basic_publish('', 'q', b'2')
    channel.basic_consume('q', Received())

    declared = channel.queue_declare('q').method

    assert (declared.queue, declared.message_count,
            declared.consumer_count) == ('q', 0, 1)


def test_server_named_queues_are_unique(channel, vhost_broker):
    first = channel.queue_declare('').method.queue
    second = channel.queue_declare('', exclusive=True).method.queue

    assert first.startswith('amq.gen-') and second.startswith('amq.gen-')
    assert first != second
    assert {first, second} <= set(vhost_broker.queue_names())


@pytest.mark.parametrize('redeclare', [
    dict(durable=False),
    dict(durable=True, auto_delete=True),
    dict(durable=True, arguments={'x-message-ttl': 1000}),
])
def test_redeclaring_a_queue_differently_fails(channel, redeclare):
    channel.queue_declare('q', durable=True)

    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.queue_declare('q', **redeclare)

    assert raised.value.reply_code == 406
    assert raised.value.reply_text.startswith(
        "PRECONDITION_FAILED - inequivalent arg ")
    assert channel.is_closed


def test_redeclaring_an_exchange_with_another_type_fails(channel, vhost):
    channel.exchange_declare('ex', 'direct')
    channel.exchange_declare('ex', 'direct')

    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.exchange_declare('ex', 'topic')

    assert raised.value.reply_code == 406
    assert raised.value.reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex' in "
        "vhost '{}': received 'topic' but current is 'direct'".format(vhost))


def test_passive_declare_of_missing_entities_fails_with_404(connection, vhost):
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.queue_declare('missing', passive=True)
    assert (raised.value.reply_code, raised.value.reply_text) == (
        404, "NOT_FOUND - no queue 'missing' in vhost '{}'".format(vhost))

    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.exchange_declare('missing', passive=True)
    assert raised.value.reply_code == 404


def test_passive_declare_of_an_existing_queue_ignores_flags(channel):
    channel.queue_declare('q', durable=True)

    assert channel.queue_declare('q', passive=True).method.queue == 'q'


def test_queue_delete_and_purge_report_and_check_counts(connection, channel):
    channel.queue_declare('q')
    channel.basic_publish('', 'q', b'1')
    channel.basic_publish('', 'q', b'2')

    with pytest.raises(ChannelClosedByBroker) as raised:
        connection.channel().queue_delete('q', if_empty=True)
    assert raised.value.reply_code == 406
    assert channel.queue_purge('q').method.message_count == 2

    channel.basic_consume('q', Received())
    with pytest.raises(ChannelClosedByBroker) as raised:
        connection.channel().queue_delete('q', if_unused=True)
    assert raised.value.reply_code == 406

    assert channel.queue_delete('q').method.message_count == 0
    assert channel.queue_delete('q').method.message_count == 0


def test_exclusive_consumer_keeps_others_out(connection, channel):
    channel.queue_declare('q')
    channel.basic_consume('q', Received(), exclusive=True)

    with pytest.raises(ChannelClosedByBroker) as raised:
        connection.channel().basic_consume('q', Received())

    assert raised.value.reply_code == 403


def test_unknown_exchange_type_closes_the_connection(connection, channel):
    with pytest.raises(ConnectionClosedByBroker) as raised:
        channel.exchange_declare('ex', 'x-unknown')

    assert raised.value.reply_code == 503
    assert connection.is_closed


# -- exclusive and auto-delete queues -----------------------------------------

def test_exclusive_queue_is_locked_to_its_connection(connect, vhost):
    owner = connect().channel()
    owner.queue_declare('private', exclusive=True)
    owner.queue_declare('private', exclusive=True)
    owner.basic_publish('', 'private', b'm')

    for use in (lambda ch: ch.queue_declare('private', passive=True),
                lambda ch: ch.basic_consume('private', Received()),
                lambda ch: ch.basic_get('private')):
        with pytest.raises(ChannelClosedByBroker) as raised:
            use(connect().channel())
        assert raised.value.reply_code == 405
        assert raised.value.reply_text.startswith(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            "'private' in vhost '{}'".format(vhost))

    # anyone may publish to it
    connect().channel().basic_publish('', 'private', b'm')
    assert len(drain_queue(owner, 'private')) == 2


def test_exclusive_queue_is_deleted_when_its_connection_closes(
        connect, vhost_broker):
    connection = connect()
    channel = connection.channel()
    channel.queue_declare('private', exclusive=True)
    channel.queue_declare('shared')

    connection.close()

    assert vhost_broker.queue_names() == ['shared']


def test_auto_delete_queue_goes_with_its_last_consumer(channel, vhost_broker):
    channel.queue_declare('temp', auto_delete=True)
    first = channel.basic_consume('temp', Received())
    second = channel.basic_consume('temp', Received())

    channel.basic_cancel(first)
    assert 'temp' in vhost_broker.queue_names()

    channel.basic_cancel(second)
    assert 'temp' not in vhost_broker.queue_names()


def test_deleting_a_queue_cancels_its_consumers(connection, channel,
                                                 vhost_broker):
    cancelled = []
    channel.add_on_cancel_callback(cancelled.append)
    channel.queue_declare('q')
    tag = channel.basic_consume('q', Received())

    deleted = connection.channel().queue_delete('q')
    connection.process_data_events()

    assert deleted.method.message_count == 0
    assert 'q' not in vhost_broker.queue_names()
    [frame] = cancelled
    assert isinstance(frame.method, Basic.Cancel)
    assert frame.method.consumer_tag == tag
    assert channel.consumer_tags == []


# -- consuming ----------------------------------------------------------------

def test_consumer_callback_runs_in_process_data_events(connection, channel):
    channel.queue_declare('q')
    received = Received()
    tag = channel.basic_consume('q', received)
    channel.basic_publish('', 'q', b'm', pika.BasicProperties(
        content_type='text/plain'))

    assert received.calls == []
    connection.process_data_events(time_limit=0)

    [(on_channel, method, properties, body)] = received.calls
    assert on_channel is channel
    assert isinstance(method, Basic.Deliver)
    assert (method.consumer_tag, method.delivery_tag, method.redelivered,
            method.exchange, method.routing_key) == (tag, 1, False, '', 'q')
    assert properties.content_type == 'text/plain'
    assert body == b'm'


def test_delivery_tags_count_up_per_channel(connection):
    first, second = connection.channel(), connection.channel()
    first.queue_declare('q')
    first.basic_publish('', 'q', b'1')
    first.basic_publish('', 'q', b'2')
    first.basic_publish('', 'q', b'3')

    assert first.basic_get('q')[0].delivery_tag == 1
    assert first.basic_get('q')[0].delivery_tag == 2
    assert second.basic_get('q')[0].delivery_tag == 1


def test_duplicate_consumer_tag_is_refused(channel):
    channel.queue_declare('q')
    channel.basic_consume('q', Received(), consumer_tag='tag')

    with pytest.raises(DuplicateConsumerTag):
        channel.basic_consume('q', Received(), consumer_tag='tag')


def test_messages_go_round_robin_to_consumers(connection, channel):
    channel.queue_declare('q')
    first, second = Received(), Received()
    channel.basic_consume('q', first, auto_ack=True)
    connection.channel().basic_consume('q', second, auto_ack=True)

    for index in range(4):
        channel.basic_publish('', 'q', str(index))
    connection.process_data_events()

    assert first.bodies == [b'0', b'2']
    assert second.bodies == [b'1', b'3']


def test_prefetch_holds_back_messages_until_an_ack(connection, channel,
                                                   vhost_broker):
    channel.queue_declare('q')
    channel.basic_qos(prefetch_count=2)
    received = Received()
    channel.basic_consume('q', received)
    for index in range(3):
        channel.basic_publish('', 'q', str(index))

    connection.process_data_events()
    assert received.bodies == [b'0', b'1']
    assert vhost_broker.message_count('q') == 1
    assert vhost_broker.unacked_count('q') == 2

    channel.basic_ack(received.methods[0].delivery_tag)
    connection.process_data_events()
    assert received.bodies == [b'0', b'1', b'2']


def test_global_prefetch_is_shared_by_the_channels_consumers(
        connection, channel):
    channel.queue_declare('a')
    channel.queue_declare('b')
    channel.basic_qos(prefetch_count=1, global_qos=True)
    received = Received()
    channel.basic_consume('a', received)
    channel.basic_consume('b', received)

    channel.basic_publish('', 'a', b'a')
    channel.basic_publish('', 'b', b'b')
    connection.process_data_events()
    assert received.bodies == [b'a']

    channel.basic_ack(received.methods[0].delivery_tag)
    connection.process_data_events()
    assert received.bodies == [b'a', b'b']


def test_auto_ack_consumers_ignore_prefetch(connection, channel, vhost_broker):
    channel.queue_declare('q')
    channel.basic_qos(prefetch_count=1)
    received = Received()
    channel.basic_consume('q', received, auto_ack=True)
    for index in range(3):
        channel.basic_publish('', 'q', str(index))

    connection.process_data_events()

    assert received.bodies == [b'0', b'1', b'2']
    assert vhost_broker.unacked_count('q') == 0


def test_nack_with_requeue_redelivers_first(connection, channel):
    channel.queue_declare('q')
    for body in (b'first', b'second'):
        channel.basic_publish('', 'q', body)
    method, _, _ = channel.basic_get('q')

    channel.basic_nack(method.delivery_tag, requeue=True)

    method, _, body = channel.basic_get('q')
    assert (body, method.redelivered) == (b'first', True)
    method, _, body = channel.basic_get('q')
    assert (body, method.redelivered) == (b'second', False)


def test_nack_and_reject_without_requeue_drop_the_message(channel,
                                                          vhost_broker):
    channel.queue_declare('q')
    for body in (b'1', b'2'):
        channel.basic_publish('', 'q', body)
    first, _, _ = channel.basic_get('q')
    second, _, _ = channel.basic_get('q')

    channel.basic_nack(first.delivery_tag, requeue=False)
    channel.basic_reject(second.delivery_tag, requeue=False)

    assert vhost_broker.message_count('q') == 0
    assert vhost_broker.unacked_count('q') == 0


def test_ack_multiple_settles_everything_up_to_the_tag(channel, vhost_broker):
    channel.queue_declare('q')
    for index in range(3):
        channel.basic_publish('', 'q', str(index))
    tags = [channel.basic_get('q')[0].delivery_tag for _ in range(3)]

    channel.basic_ack(tags[1], multiple=True)
    assert vhost_broker.unacked_count('q') == 1

    channel.basic_nack(0, multiple=True, requeue=True)
    assert vhost_broker.message_count('q') == 1


def test_acking_an_unknown_delivery_tag_closes_the_channel(channel):
    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.basic_ack(7)

    assert (raised.value.reply_code, raised.value.reply_text) == (
        406, 'PRECONDITION_FAILED - unknown delivery tag 7')
    assert channel.is_closed


def test_cancel_requeues_deliveries_not_yet_dispatched(connection, channel):
    channel.queue_declare('q')
    received = Received()
    tag = channel.basic_consume('q', received)
    channel.basic_publish('', 'q', b'm')

    assert channel.basic_cancel(tag) == []
    connection.process_data_events()

    assert received.calls == []
    method, _, body = channel.basic_get('q')
    assert (body, method.redelivered) == (b'm', True)


def test_cancel_returns_undispatched_auto_ack_deliveries(connection, channel):
    channel.queue_declare('q')
    tag = channel.basic_consume('q', Received(), auto_ack=True)
    channel.basic_publish('', 'q', b'm')

    [(method, properties, body)] = channel.basic_cancel(tag)

    assert isinstance(method, Basic.Deliver)
    assert body == b'm'


def test_closing_a_connection_requeues_its_unacked_messages(connect):
    first = connect()
    first_channel = first.channel()
    first_channel.queue_declare('q')
    first_received = Received()
    first_channel.basic_consume('q', first_received)
    first_channel.basic_publish('', 'q', b'm')
    first.process_data_events()
    assert first_received.bodies == [b'm']

    second = connect()
    second_received = Received()
    second.channel().basic_consume('q', second_received)
    first.close()
    second.process_data_events()

    [(_, method, _, body)] = second_received.calls
    assert (body, method.redelivered) == (b'm', True)


# -- closing ------------------------------------------------------------------

def test_a_client_closed_connection_refuses_further_use(connection, channel):
    connection.close()

    assert connection.is_closed and channel.is_closed
    with pytest.raises(ConnectionWrongStateError):
        connection.process_data_events()
    with pytest.raises(ChannelWrongStateError):
        channel.basic_publish('', 'q', b'm')
    with pytest.raises(ConnectionWrongStateError):
        connection.add_callback_threadsafe(lambda: None)
    with pytest.raises(ConnectionWrongStateError):
        connection.close()


def test_close_all_connections_wakes_a_blocked_consumer_and_requeues(
        connect, vhost_broker):
    consumer = connect()
    channel = consumer.channel()
    channel.queue_declare('q')
    channel.queue_declare('private', exclusive=True)
    received = Received()
    channel.basic_consume('q', received)
    channel.basic_publish('', 'q', b'm')
    consumer.process_data_events()
    assert received.bodies == [b'm']

    raised = []

    def wait_for_events():
        try:
            consumer.process_data_events(time_limit=None)
        except Exception as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait_for_events,
                              name='threadko-test-blocked-consumer')
    waiter.start()
    vhost_broker.close_all_connections()
    waiter.join(WAIT)

    assert not waiter.is_alive()
    [error] = raised
    assert isinstance(error, ConnectionClosedByBroker)
    assert (error.reply_code, error.reply_text) == (
        320, 'CONNECTION_FORCED - closed by test')
    assert consumer.is_closed and channel.is_closed
    with pytest.raises(ConnectionClosedByBroker):
        consumer.process_data_events()
    with pytest.raises(ConnectionClosedByBroker):
        channel.basic_ack(received.methods[0].delivery_tag)
    with pytest.raises(ConnectionWrongStateError):
        consumer.add_callback_threadsafe(lambda: None)
    assert vhost_broker.queue_names() == ['q']
    assert vhost_broker.connection_count() == 0

    method, _, body = connect().channel().basic_get('q')
    assert (body, method.redelivered) == (b'm', True)


def test_deleting_a_vhost_closes_its_connections_and_forgets_it(vhost):
    connection = memory.connect(vhost)
    connection.channel().queue_declare('q')

    memory.delete_vhost(vhost)

    with pytest.raises(ConnectionClosedByBroker):
        connection.channel()
    assert memory.get_broker(vhost).queue_names() == []


# -- expiry -------------------------------------------------------------------

def test_unused_queue_expires_but_a_consumed_one_does_not(channel,
                                                          vhost_broker):
    channel.queue_declare('idle', arguments={'x-expires': 20})
    channel.queue_declare('busy', arguments={'x-expires': 20})
    channel.basic_consume('busy', Received())

    eventually(lambda: 'idle' not in vhost_broker.queue_names())

    assert 'busy' in vhost_broker.queue_names()


def test_queue_message_ttl_drops_old_messages(channel, vhost_broker):
    channel.queue_declare('q', arguments={'x-message-ttl': 10})
    channel.basic_publish('', 'q', b'm')

    eventually(lambda: vhost_broker.message_count('q') == 0)

    assert channel.basic_get('q') == (None, None, None)


def test_per_message_expiration_drops_that_message(channel, vhost_broker):
    channel.queue_declare('q')
    channel.basic_publish('', 'q', b'short',
                          pika.BasicProperties(expiration='10'))
    channel.basic_publish('', 'q', b'long')

    eventually(lambda: vhost_broker.message_count('q') == 1)

    assert drain_queue(channel, 'q') == [b'long']


def test_a_ready_consumer_gets_a_message_with_zero_ttl(connection, channel):
    channel.queue_declare('q', arguments={'x-message-ttl': 0})
    received = Received()
    channel.basic_consume('q', received)

    channel.basic_publish('', 'q', b'm')
    connection.process_data_events()

    assert received.bodies == [b'm']


# -- threads and vhosts -------------------------------------------------------

def test_add_callback_threadsafe_wakes_a_blocked_process_data_events(
        connection):
    ran_in = []

    def callback():
        ran_in.append(threading.get_ident())

    caller = threading.Thread(
        target=connection.add_callback_threadsafe, args=(callback,),
        name='threadko-test-threadsafe-caller')
    caller.start()
    connection.process_data_events(time_limit=None)
    caller.join(WAIT)

    assert ran_in == [threading.get_ident()]


def test_vhosts_are_independent(connect):
    here = connect().channel()
    other_vhost = 'test-memory-broker-' + uuid.uuid4().hex
    try:
        here.queue_declare('q')
        there = memory.connect(other_vhost).channel()
        there.confirm_delivery()

        with pytest.raises(UnroutableError):
            there.basic_publish('', 'q', b'm', mandatory=True)
        with pytest.raises(ChannelClosedByBroker):
            there.queue_declare('q', passive=True)
    finally:
        memory.delete_vhost(other_vhost)


def test_many_threads_publish_concurrently(connect, connection, channel):
    threads, per_thread = 8, 500
    channel.queue_declare('q')
    received = Received()
    channel.basic_consume('q', received, auto_ack=True)

    def publish(thread_index):
        publisher = connect()
        publishing = publisher.channel()
        publishing.confirm_delivery()
        for index in range(per_thread):
            publishing.basic_publish(
                '', 'q', '{}-{}'.format(thread_index, index))
        publisher.close()

    publishers = [
        threading.Thread(target=publish, args=(index,),
                         name='threadko-test-publisher-{}'.format(index))
        for index in range(threads)]
    for publisher in publishers:
        publisher.start()
    deadline = time.monotonic() + WAIT
    while (len(received.calls) < threads * per_thread
           and time.monotonic() < deadline):
        connection.process_data_events(time_limit=0.05)
    for publisher in publishers:
        publisher.join(WAIT)

    expected = {'{}-{}'.format(thread_index, index).encode()
                for thread_index in range(threads)
                for index in range(per_thread)}
    assert len(received.bodies) == len(expected)
    assert set(received.bodies) == expected
