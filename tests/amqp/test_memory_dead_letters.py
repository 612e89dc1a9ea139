"""Dead-lettering and timely message expiry, on the embedded broker and on
RabbitMQ (the ``broker`` fixture runs each test on both, so the memory
broker is pinned to what RabbitMQ 3.10 does): what a broker-side retry
needs, wait queues whose messages expire back into a handler's queue, and
dead-letter queues."""

import threading
import time
import uuid

import pika
import pytest
from pika.compat import long
from pika.exceptions import ChannelClosedByBroker

from threadko.amqp import memory
from threadko.amqp.connection import Connector

WAIT = 5  # seconds: the longest a test waits for something that must happen
LATE = 2.0  # seconds a message may arrive after its TTL on a busy machine


@pytest.fixture
def connection(broker):
    connection = Connector(broker.config).connect()
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def channel(connection):
    return connection.channel()


class Inbox:
    """A consumer of ``queue`` that records its deliveries; :meth:`wait`
    blocks in ``process_data_events`` until they arrive. With ``ack``, each
    delivery is acked as it arrives."""

    def __init__(self, channel, queue, ack=True):
        self.connection = channel.connection
        self.ack = ack
        self.deliveries = []  # (method, properties, body, time.monotonic())
        channel.basic_consume(queue, self._on_message)

    def _on_message(self, channel, method, properties, body):
        self.deliveries.append((method, properties, body, time.monotonic()))
        if self.ack:
            channel.basic_ack(method.delivery_tag)

    def wait(self, count=1, timeout=WAIT):
        """The ``count``-th delivery: ``(method, properties, body, when)``."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, 'only {} of {} messages arrived'.format(
                len(self.deliveries), count)
            self.connection.process_data_events(time_limit=remaining)
        return self.deliveries[count - 1]

    def nothing_more(self, count, within):
        """True if no more than ``count`` deliveries arrive ``within``
        seconds."""
        deadline = time.monotonic() + within
        while len(self.deliveries) <= count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self.connection.process_data_events(time_limit=remaining)
        return False


def wait_until_empty(connection, channel, queue, timeout=WAIT):
    """Poll the queue's ready count. On RabbitMQ it may not count a message
    just published yet: publish with confirms first."""
    deadline = time.monotonic() + timeout
    while channel.queue_declare(queue, passive=True).method.message_count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, 'queue {} never became empty'.format(queue)
        connection.process_data_events(time_limit=min(0.01, remaining))


def get(connection, channel, queue, timeout=WAIT):
    """``basic_get`` the next message's body, polling until one is there."""
    deadline = time.monotonic() + timeout
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return body
        assert time.monotonic() < deadline, 'nothing in {}'.format(queue)
        connection.process_data_events(time_limit=0.01)


def wait_queue(channel, name, ttl, target):
    """A wait queue as a broker-side retry uses: every message expires
    after ``ttl`` ms back into ``target`` through the default exchange."""
    channel.queue_declare(name, arguments={
        'x-message-ttl': ttl,
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': target,
    })


def summary(deaths):
    return [(death['queue'], death['reason'], death['count'])
            for death in deaths]


def test_expired_message_goes_back_to_its_queue_after_the_ttl(
        connection, channel):
    channel.queue_declare('handler')
    wait_queue(channel, 'handler.retry.300', 300, 'handler')
    inbox = Inbox(channel, 'handler')
    properties = pika.BasicProperties(
        content_type='application/json', message_id='m-1', timestamp=12345,
        headers={'attempt': 1}, expiration='60000')

    wall_before = time.time()
    published = time.monotonic()
    channel.basic_publish('', 'handler.retry.300', b'{"n": 1}', properties)
    method, received, body, arrived = inbox.wait()
    wall_after = time.time()

    assert 0.3 <= arrived - published < 0.3 + LATE
    assert body == b'{"n": 1}'
    assert (method.exchange, method.routing_key, method.redelivered) == (
        '', 'handler', False)
    assert (received.content_type, received.message_id,
            received.timestamp) == ('application/json', 'm-1', 12345)
    assert received.expiration is None  # moved to original-expiration
    # RabbitMQ sorts the headers table
    assert list(received.headers) == [
        'attempt', 'x-death', 'x-first-death-exchange',
        'x-first-death-queue', 'x-first-death-reason']
    assert received.headers['attempt'] == 1
    assert received.headers['x-first-death-exchange'] == ''
    assert received.headers['x-first-death-queue'] == 'handler.retry.300'
    assert received.headers['x-first-death-reason'] == 'expired'
    [death] = received.headers['x-death']
    # the first death's fields in RabbitMQ's order; count is a long
    assert list(death) == ['count', 'reason', 'queue', 'time', 'exchange',
                           'routing-keys', 'original-expiration']
    assert type(death['count']) is long and death['count'] == 1
    assert death['reason'] == 'expired'
    assert death['queue'] == 'handler.retry.300'
    assert death['exchange'] == ''
    assert death['routing-keys'] == ['handler.retry.300']
    assert death['original-expiration'] == '60000'
    # an AMQP timestamp: whole seconds, UTC
    assert death['time'].tzinfo is not None
    assert int(wall_before) <= death['time'].timestamp() <= wall_after


def test_rejected_message_is_dead_lettered_with_its_routing_key(
        connection, channel):
    channel.exchange_declare('orders', 'direct')
    channel.queue_declare('work', arguments={
        'x-dead-letter-exchange': 'dead-letters'})
    channel.queue_bind('work', 'orders', 'order.placed')
    channel.exchange_declare('dead-letters', 'topic')
    channel.queue_declare('dead')
    channel.queue_bind('dead', 'dead-letters', '#')
    work = Inbox(channel, 'work', ack=False)
    dead = Inbox(channel, 'dead')

    channel.basic_publish(
        'orders', 'order.placed', b'order',
        pika.BasicProperties(headers={'z': 1, 'a': 2}, expiration='60000'))
    method, _, _, _ = work.wait()
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, received, body, _ = dead.wait()

    assert body == b'order'
    # no x-dead-letter-routing-key: the message keeps its own
    assert (method.exchange, method.routing_key) == (
        'dead-letters', 'order.placed')
    assert received.expiration is None
    assert list(received.headers) == [
        'a', 'x-death', 'x-first-death-exchange', 'x-first-death-queue',
        'x-first-death-reason', 'z']
    assert received.headers['x-first-death-reason'] == 'rejected'
    assert received.headers['x-first-death-queue'] == 'work'
    assert received.headers['x-first-death-exchange'] == 'orders'
    [death] = received.headers['x-death']
    assert {key: value for key, value in death.items() if key != 'time'} == {
        'count': 1, 'reason': 'rejected', 'queue': 'work',
        'exchange': 'orders', 'routing-keys': ['order.placed'],
        'original-expiration': '60000'}


def test_nack_multiple_without_requeue_dead_letters_in_order(
        connection, channel):
    channel.queue_declare('dead')
    channel.queue_declare('work', arguments={
        'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'dead'})
    work = Inbox(channel, 'work', ack=False)
    dead = Inbox(channel, 'dead')
    for body in (b'1', b'2', b'3'):
        channel.basic_publish('', 'work', body)
    method, _, _, _ = work.wait(3)

    channel.basic_nack(method.delivery_tag, multiple=True, requeue=False)
    dead.wait(3)

    assert [body for _, _, body, _ in dead.deliveries] == [b'1', b'2', b'3']
    assert dead.nothing_more(3, within=0.05)


def test_x_death_counts_each_queue_and_reason_most_recent_first(
        connection, channel):
    # a retry loop: the handler rejects, the wait queue sends it back
    channel.queue_declare('handler', arguments={
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': 'handler.retry'})
    wait_queue(channel, 'handler.retry', 50, 'handler')
    handler = Inbox(channel, 'handler', ack=False)

    channel.basic_publish('', 'handler.retry', b'job')
    rounds = []
    for attempt in range(1, 4):
        method, properties, _, _ = handler.wait(attempt)
        rounds.append(properties.headers)
        channel.basic_reject(method.delivery_tag, requeue=False)

    assert [summary(headers['x-death']) for headers in rounds] == [
        [('handler.retry', 'expired', 1)],
        [('handler.retry', 'expired', 2), ('handler', 'rejected', 1)],
        [('handler.retry', 'expired', 3), ('handler', 'rejected', 2)],
    ]
    first, _, last = rounds
    # only the count changes; the first death stays the first
    expired = first['x-death'][0]
    assert last['x-death'][0] == dict(expired, count=3)
    assert last['x-death'][1]['routing-keys'] == ['handler']
    assert last['x-death'][1]['exchange'] == ''
    # entries other than the very first have their fields sorted
    assert list(last['x-death'][0]) == [
        'count', 'exchange', 'queue', 'reason', 'routing-keys', 'time']
    for headers in rounds:
        assert (headers['x-first-death-queue'],
                headers['x-first-death-reason']) == (
            'handler.retry', 'expired')


def test_a_short_wait_queue_is_not_held_up_by_a_long_one(
        connection, channel):
    channel.queue_declare('handler')
    wait_queue(channel, 'handler.retry.1500', 1500, 'handler')
    wait_queue(channel, 'handler.retry.100', 100, 'handler')
    inbox = Inbox(channel, 'handler')

    published = time.monotonic()
    channel.basic_publish('', 'handler.retry.1500', b'long')
    channel.basic_publish('', 'handler.retry.100', b'short')
    _, _, body, arrived = inbox.wait()

    assert body == b'short'
    assert 0.1 <= arrived - published < 1.0


def test_per_message_ttl_expires_only_at_the_head(connection, channel):
    channel.queue_declare('handler')
    channel.queue_declare('wait', arguments={
        'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'handler'})
    inbox = Inbox(channel, 'handler')

    published = time.monotonic()
    channel.basic_publish('', 'wait', b'slow',
                          pika.BasicProperties(expiration='400'))
    channel.basic_publish('', 'wait', b'quick',
                          pika.BasicProperties(expiration='20'))
    inbox.wait(2)

    assert [body for _, _, body, _ in inbox.deliveries] == [b'slow', b'quick']
    assert inbox.deliveries[1][3] - published >= 0.4


def test_expired_message_without_dead_letter_exchange_is_dropped(
        connection, channel):
    channel.queue_declare('q', arguments={'x-message-ttl': 50})
    channel.confirm_delivery()  # so the message is in the queue
    channel.basic_publish('', 'q', b'gone')

    wait_until_empty(connection, channel, 'q')

    assert channel.basic_get('q') == (None, None, None)


def test_dead_lettering_to_a_missing_exchange_drops_the_message(
        connection, channel):
    channel.queue_declare('q', arguments={
        'x-message-ttl': 50, 'x-dead-letter-exchange': 'missing'})
    channel.confirm_delivery()  # so the message is in the queue
    channel.basic_publish('', 'q', b'gone')

    wait_until_empty(connection, channel, 'q')

    assert channel.basic_get('q') == (None, None, None)


def test_a_dead_letter_cycle_without_rejection_is_broken(connection,
                                                         channel):
    # the queue dead-letters to itself (dropped) and to an observer
    channel.exchange_declare('dlx', 'fanout')
    channel.queue_declare('loop', arguments={
        'x-message-ttl': 50, 'x-dead-letter-exchange': 'dlx'})
    channel.queue_declare('observer')
    channel.queue_bind('loop', 'dlx')
    channel.queue_bind('observer', 'dlx')
    observer = Inbox(channel, 'observer')

    channel.basic_publish('', 'loop', b'm')
    _, properties, _, _ = observer.wait()

    assert summary(properties.headers['x-death']) == [('loop', 'expired', 1)]
    # a message going round would come back every 50 ms
    assert observer.nothing_more(1, within=0.3)
    declared = channel.queue_declare('loop', passive=True)
    assert declared.method.message_count == 0


def test_max_length_overflow_dead_letters_from_the_head(connection,
                                                        channel):
    channel.queue_declare('dead')
    channel.queue_declare('bounded', arguments={
        'x-max-length': 2, 'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': 'dead'})
    dead = Inbox(channel, 'dead')

    for body in (b'0', b'1', b'2', b'3'):
        channel.basic_publish('', 'bounded', body)
    dead.wait(2)

    assert [body for _, _, body, _ in dead.deliveries] == [b'0', b'1']
    method, properties, _, _ = dead.deliveries[0]
    assert method.routing_key == 'dead'
    assert summary(properties.headers['x-death']) == [('bounded', 'maxlen', 1)]
    assert [get(connection, channel, 'bounded') for _ in range(2)] == [
        b'2', b'3']


def test_a_dead_letter_routing_key_needs_a_dead_letter_exchange(
        broker, channel):
    with pytest.raises(ChannelClosedByBroker) as raised:
        channel.queue_declare('q', arguments={
            'x-dead-letter-routing-key': 'elsewhere'})

    assert raised.value.reply_code == 406
    assert raised.value.reply_text == (
        "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for "
        "queue 'q' in vhost '{}': routing_key_but_no_dlx_defined".format(
            broker.config['vhost']))


# -- the memory broker's expiry thread ----------------------------------------

def _expiry_threads():
    return {thread for thread in threading.enumerate()
            if thread.name == 'memory-broker-ttl'}


def test_the_expiry_thread_ends_when_nothing_is_left_to_expire():
    vhost = 'test-memory-dead-letters-' + uuid.uuid4().hex
    before = _expiry_threads()
    try:
        channel = memory.connect(vhost).channel()
        channel.queue_declare('q', arguments={'x-message-ttl': 50})
        channel.basic_publish('', 'q', b'm')
        [thread] = _expiry_threads() - before
        assert thread.daemon

        thread.join(WAIT)

        assert not thread.is_alive()
        assert memory.get_broker(vhost).message_count('q') == 0
    finally:
        memory.delete_vhost(vhost)


def test_deleting_the_vhost_stops_its_expiry_thread():
    vhost = 'test-memory-dead-letters-' + uuid.uuid4().hex
    before = _expiry_threads()
    try:
        channel = memory.connect(vhost).channel()
        channel.queue_declare('q', arguments={'x-message-ttl': 60000})
        channel.basic_publish('', 'q', b'm')
        [thread] = _expiry_threads() - before
    finally:
        memory.delete_vhost(vhost)

    assert not thread.is_alive()  # joined by delete_vhost
