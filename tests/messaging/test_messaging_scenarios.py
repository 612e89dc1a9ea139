"""``@consume`` and ``Publisher`` as a user sees them, each scenario run on
the embedded broker and on RabbitMQ (the ``broker`` fixture).

Messages are published and read with a raw pika(-like) channel where the
test needs to see exactly what is on the broker.
"""

import json
import logging
import pickle
import threading

import pika
import pika.exceptions
import pytest

from threadko.exceptions import (
    BrokerRefused, BrokerUnavailable, UndeliverableMessage,
)
from threadko.messaging import Exchange, Publisher, Queue, consume
from threadko.testing.services import entrypoint_waiter

from support import (
    Received, drain_queue, entrypoint_for, fire, queue_state, raw_channel,
    until,
)

WAIT = 10


# -- helpers -----------------------------------------------------------------

def raw_publish(broker, exchange, routing_key, payload, headers=None):
    with raw_channel(broker) as channel:
        channel.basic_publish(
            exchange, routing_key, json.dumps(payload).encode('utf-8'),
            pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8',
                delivery_mode=2, headers=headers))


def get_message(broker, queue):
    """Take one message off ``queue``: ``(method, properties, body)``."""
    with raw_channel(broker) as channel:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, 'no message on {}'.format(queue)
    return method, properties, body


def serial(broker, **extra):
    """Config for a container taking one message at a time."""
    return dict(broker.config, max_workers=1, **extra)


# -- @consume ------------------------------------------------------------------

QUEUES = {
    # kind: (queue, exchange to publish to, routing key to publish with)
    'direct': (Queue('q-direct', exchange=Exchange('ex-direct'),
                     routing_key='jobs'), 'ex-direct', 'jobs'),
    'topic': (Queue('q-topic', exchange=Exchange('ex-topic', type='topic'),
                    routing_key='jobs.*'), 'ex-topic', 'jobs.new'),
    'fanout': (Queue('q-fanout',
                     exchange=Exchange('ex-fanout', type='fanout')),
               'ex-fanout', 'whatever'),
    'default': (Queue('q-default'), '', 'q-default'),
}


@pytest.mark.parametrize('kind', sorted(QUEUES))
def test_consume_body_and_headers(broker, containers, kind):
    queue, exchange, routing_key = QUEUES[kind]

    class Consumer:
        name = 'consumer'

        @consume(queue)
        def handle(self, body):
            return body

    container = containers(Consumer, broker.config)
    container.start()
    payload = {'text': 'Zoë – 東京 – 🚀', 'list': [1, None, {'a': True}]}
    with entrypoint_waiter(container, 'handle', timeout=WAIT) as result:
        raw_publish(broker, exchange, routing_key, payload, headers={
            'nameko.language': 'fr',
            'nameko.call_id_stack': ['upstream.call.1'],
            'custom': 'kept as is',
        })
    assert result.get() == payload
    worker_ctx = result.worker_ctx
    assert worker_ctx.data == {'language': 'fr', 'custom': 'kept as is'}
    assert worker_ctx.call_id_stack[0] == 'upstream.call.1'
    assert worker_ctx.call_id_stack[1].startswith('consumer.handle.')
    assert len(worker_ctx.call_id_stack) == 2


def test_consume_ignores_messages_for_other_routing_keys(
        broker, containers):
    received = Received()
    queue = Queue('q-picky', exchange=Exchange('ex-picky'),
                  routing_key='mine')

    class Picky:
        name = 'picky'

        @consume(queue)
        def handle(self, body):
            received.add(body)

    containers(Picky, serial(broker)).start()
    raw_publish(broker, 'ex-picky', 'not-mine', 'other')
    raw_publish(broker, 'ex-picky', 'mine', 'mine')
    assert received.wait_for('mine') == ['mine']


def _failing_consumer(received, fail, **consume_kwargs):
    queue = Queue('q-failing', exchange=Exchange('ex-failing'),
                  routing_key='k')

    class Failing:
        name = 'failing'

        @consume(queue, **consume_kwargs)
        def handle(self, body):
            received.add(body)
            if fail(body):
                raise ValueError(body)
    return Failing


def test_failed_message_is_acked_without_requeue_on_error(
        broker, containers):
    received = Received()
    containers(_failing_consumer(received, lambda body: body == 'bad'),
               serial(broker)).start()
    raw_publish(broker, 'ex-failing', 'k', 'bad')
    raw_publish(broker, 'ex-failing', 'k', 'good')
    # a requeued 'bad' would come back before 'good'
    assert received.wait_for('good') == ['bad', 'good']


def test_failed_message_is_redelivered_with_requeue_on_error(
        broker, containers):
    received = Received()
    failed = []

    def fail_first_time(body):
        if body == 'flaky' and not failed:
            failed.append(body)
            return True
        return False

    containers(_failing_consumer(received, fail_first_time,
                                 requeue_on_error=True),
               serial(broker)).start()
    raw_publish(broker, 'ex-failing', 'k', 'flaky')
    raw_publish(broker, 'ex-failing', 'k', 'next')
    assert received.wait_for('next') == ['flaky', 'flaky', 'next']


def _slow_and_fast(received, started, release):
    queue = Queue('q-work', exchange=Exchange('ex-work'), routing_key='k')

    class Slow:
        name = 'work'

        @consume(queue)
        def handle(self, body):
            received.add(('slow', body))
            started.set()
            assert release.wait(WAIT)

    class Fast:
        name = 'work'

        @consume(queue)
        def handle(self, body):
            received.add(('fast', body))

    return Slow, Fast


def test_stop_acks_only_after_the_running_worker_finished(
        broker, containers):
    received = Received()
    started = threading.Event()
    release = threading.Event()
    slow_cls, fast_cls = _slow_and_fast(received, started, release)
    slow = containers(slow_cls, broker.config)
    slow.start()
    stopper = threading.Thread(target=slow.stop, name='threadko-test-stop')
    try:
        raw_publish(broker, 'ex-work', 'k', 1)
        assert started.wait(WAIT)
        containers(fast_cls, serial(broker)).start()
        stopper.start()
        # stopping has begun: the slow instance no longer consumes
        until(lambda: queue_state(broker, 'q-work') == (0, 1))
    finally:
        release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()

    raw_publish(broker, 'ex-work', 'k', 2)
    # had message 1 gone back to the queue, `fast` would get it before 2
    assert received.wait_for(('fast', 2)) == [('slow', 1), ('fast', 2)]


def test_kill_redelivers_the_unacked_message(broker, containers):
    received = Received()
    started = threading.Event()
    release = threading.Event()
    slow_cls, fast_cls = _slow_and_fast(received, started, release)
    slow = containers(slow_cls, broker.config)
    slow.start()
    try:
        raw_publish(broker, 'ex-work', 'k', 1)
        assert started.wait(WAIT)
        containers(fast_cls, broker.config).start()
        slow.kill()
        assert received.wait_for(('fast', 1)) == [('slow', 1), ('fast', 1)]
    finally:
        release.set()


# -- Publisher -------------------------------------------------------------------

OUTBOX = Exchange('outbox', type='topic')


def publisher_service(publisher):
    """A service publishing with ``publisher`` from a fired worker."""

    class Sender:
        name = 'sender'
        publish = publisher

        @fire
        def send(self, msg, **kwargs):
            self.publish(msg, **kwargs)

    return Sender


def send(container, msg, context_data=None, **kwargs):
    """Publish from a worker of ``container``; return the worker's
    context (raise what the publish raised)."""
    handle = entrypoint_for(container, 'send').fire(
        msg, context_data=context_data, **kwargs)
    handle.result()
    return handle.worker_ctx


def bind_sink(broker, exchange='outbox', routing_key='#', name='sink'):
    """A queue catching what is published to ``exchange``."""
    with raw_channel(broker) as channel:
        channel.queue_declare(name)
        channel.queue_bind(name, exchange, routing_key)
    return name


def test_publisher_defaults_and_per_call_overrides(broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, routing_key='default.key')),
        broker.config)
    container.start()  # declares the exchange
    sink = bind_sink(broker)

    send(container, {'n': 1})
    method, properties, body = get_message(broker, sink)
    assert method.exchange == 'outbox'
    assert method.routing_key == 'default.key'
    assert json.loads(body) == {'n': 1}
    assert properties.content_type == 'application/json'
    assert properties.delivery_mode == 2
    assert properties.priority == 0
    assert properties.expiration is None
    assert properties.correlation_id is None

    send(container, 'two', routing_key='other.key', priority=5,
         expiration=2.5, correlation_id='corr-1', delivery_mode=1,
         headers={'h': 'v'})
    method, properties, body = get_message(broker, sink)
    assert method.routing_key == 'other.key'
    assert json.loads(body) == 'two'
    assert properties.priority == 5
    assert properties.expiration == '2500'
    assert properties.correlation_id == 'corr-1'
    assert properties.delivery_mode == 1
    assert properties.headers['h'] == 'v'

    # overrides were for that call only
    send(container, 'three')
    method, properties, _ = get_message(broker, sink)
    assert method.routing_key == 'default.key'
    assert (properties.priority, properties.delivery_mode) == (0, 2)
    assert 'h' not in properties.headers


def test_publisher_per_call_exchange_and_declare(broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, routing_key='k')), broker.config)
    container.start()
    other = Exchange('other-ex', type='fanout')
    late = Queue('late', exchange=other)
    # the call declares what it is given, then publishes to it
    send(container, 'elsewhere', exchange=other, declare=[late])
    assert json.loads(get_message(broker, 'late')[2]) == 'elsewhere'


def test_publish_to_the_default_exchange_reaches_a_consumer(
        broker, containers):
    inbox = Queue('inbox')

    class Receiver:
        name = 'receiver'

        @consume(inbox)
        def handle(self, body):
            return body

    receiver = containers(Receiver, broker.config)
    receiver.start()
    sender = containers(publisher_service(
        Publisher(routing_key='inbox')), broker.config)
    sender.start()
    with entrypoint_waiter(receiver, 'handle', timeout=WAIT) as result:
        sender_ctx = send(sender, {'hop': 1}, context_data={'user_id': 3})
    assert result.get() == {'hop': 1}
    assert result.worker_ctx.data == {'user_id': 3}
    stack = result.worker_ctx.call_id_stack
    assert stack[:-1] == sender_ctx.call_id_stack
    assert stack[-1].startswith('receiver.handle.')


def test_publisher_headers_merge_order(broker, containers):
    container = containers(publisher_service(Publisher(
        exchange=OUTBOX, routing_key='k',
        headers={'a': 'instance', 'b': 'instance',
                 'nameko.language': 'instance'})), broker.config)
    container.start()
    sink = bind_sink(broker)
    worker_ctx = send(
        container, 'x', context_data={'language': 'context'},
        headers={'b': 'call', 'c': 'call', 'nameko.language': 'call'})
    _, properties, _ = get_message(broker, sink)
    assert properties.headers == {
        'a': 'instance', 'b': 'call', 'c': 'call',
        'nameko.language': 'context',
        'nameko.call_id_stack': worker_ctx.call_id_stack,
    }


def test_publisher_declares_at_setup(broker, containers):
    declared = Queue('declared', exchange=OUTBOX, routing_key='declared.*')
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, declare=[declared])), broker.config)
    container.start()
    # no consumer and nothing published yet: the queue is there anyway
    assert queue_state(broker, 'declared') == (0, 0)
    send(container, 'in', routing_key='declared.x')
    send(container, 'out', routing_key='elsewhere')
    assert queue_state(broker, 'declared') == (1, 0)


def test_publisher_declaration_refused_at_start(broker, containers):
    with raw_channel(broker) as channel:
        channel.exchange_declare('outbox', 'fanout', durable=True)
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX)), broker.config)
    with pytest.raises(BrokerRefused) as info:
        container.start()
    assert info.value.reply_code == 406
    assert "'outbox'" in str(info.value)
    assert 'different flags' in str(info.value)


def test_many_workers_publish_at_once(broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, routing_key='k')),
        dict(broker.config, max_workers=8))
    container.start()
    sink = bind_sink(broker)
    handles = [entrypoint_for(container, 'send').fire(n) for n in range(40)]
    for handle in handles:
        handle.result()
    with raw_channel(broker) as channel:
        bodies = drain_queue(channel, sink)
    assert sorted(json.loads(body) for body in bodies) == list(range(40))


def test_publisher_mandatory_unroutable_raises_in_the_worker(
        broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, routing_key='nowhere')), broker.config)
    container.start()
    send(container, 'dropped quietly')
    with pytest.raises(UndeliverableMessage):
        send(container, 'refused', mandatory=True)
    # an instance-wide option works the same
    strict = containers(type('Strict', (publisher_service(
        Publisher(exchange=OUTBOX, mandatory=True)),), {'name': 'strict'}),
        broker.config)
    strict.start()
    with pytest.raises(UndeliverableMessage):
        send(strict, 'refused', routing_key='nowhere')
    sink = bind_sink(broker, routing_key='somewhere')
    send(strict, 'routed', routing_key='somewhere')
    assert json.loads(get_message(broker, sink)[2]) == 'routed'


def test_publisher_queue_argument_is_deprecated_but_works(
        broker, containers):
    legacy = Queue('legacy', exchange=Exchange('legacy-ex'),
                   routing_key='legacy')
    with pytest.warns(DeprecationWarning, match='queue'):
        publisher = Publisher(queue=legacy)
    with pytest.warns(DeprecationWarning):
        container = containers(publisher_service(publisher), broker.config)
    container.start()
    assert queue_state(broker, 'legacy') == (0, 0)
    # the queue's exchange is the one published to
    send(container, 'via legacy', routing_key='legacy')
    assert json.loads(get_message(broker, 'legacy')[2]) == 'via legacy'


def test_publisher_class_attribute_options_warn_and_apply(
        broker, containers):
    class NoConfirms(Publisher):
        use_confirms = False

    with pytest.warns(DeprecationWarning, match='use_confirms'):
        publisher = NoConfirms(exchange=OUTBOX)
    with pytest.warns(DeprecationWarning):
        container = containers(publisher_service(publisher), broker.config)
    container.start()
    # without confirms, an unroutable mandatory message cannot be detected
    with pytest.warns(UserWarning, match='without publish confirms'):
        send(container, 'lost', routing_key='nowhere', mandatory=True)
    sink = bind_sink(broker)
    send(container, 'found', routing_key='somewhere')
    assert json.loads(get_message(broker, sink)[2]) == 'found'


def test_mandatory_without_confirms_warns(broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, use_confirms=False)), broker.config)
    container.start()
    with pytest.warns(UserWarning, match='confirms'):
        send(container, 'lost', routing_key='nowhere', mandatory=True)


def test_publisher_class_attribute_retry_options_are_honoured(
        containers, caplog):
    # no broker needed: nothing listens on port 1, so every attempt fails
    config = {'AMQP_URI': 'amqp://guest:guest@127.0.0.1:1/'}

    class NoRetry(Publisher):
        retry = False

    class QuickRetry(Publisher):
        retry_policy = {'max_retries': 2, 'interval_start': 0,
                        'interval_step': 0, 'interval_max': 0}

    with pytest.warns(DeprecationWarning):
        no_retry = containers(publisher_service(NoRetry()), config)
        quick = containers(type('Quick', (publisher_service(QuickRetry()),),
                                {'name': 'quick'}), config)
    no_retry.start()
    quick.start()

    def retry_warnings():
        return [r for r in caplog.records
                if r.levelno == logging.WARNING and 'retrying' in r.message]

    with caplog.at_level(logging.WARNING):
        with pytest.raises(BrokerUnavailable) as no_retry_error:
            send(no_retry, 'x', routing_key='q')
        assert retry_warnings() == []
        with pytest.raises(BrokerUnavailable) as quick_error:
            send(quick, 'x', routing_key='q')
        assert len(retry_warnings()) == 2

    # a ConnectionError that says what failed, where, and what to do
    assert isinstance(quick_error.value, ConnectionError)
    assert isinstance(quick_error.value.__cause__,
                      pika.exceptions.AMQPConnectionError)
    assert 'unreachable on 1 attempt ' in str(no_retry_error.value)
    message = str(quick_error.value)
    assert message.startswith("Could not publish to exchange ")
    assert 'amqp://guest:********@127.0.0.1:1/' in message
    assert 'unreachable on 3 attempts' in message
    assert 'ConnectionRefusedError' in message  # the cause, not just a name
    assert 'Nothing was sent' in message


def test_publisher_uses_the_container_serializer(broker, containers):
    received = Received()
    inbox = Queue('inbox', exchange=OUTBOX, routing_key='inbox')

    class Pickled:
        name = 'pickled'
        publish = Publisher(exchange=OUTBOX)

        @fire
        def send(self, msg, **kwargs):
            self.publish(msg, **kwargs)

        @consume(inbox)
        def handle(self, body):
            received.add(body)

    container = containers(Pickled, dict(
        broker.config, serializer='pickle', ACCEPT=['pickle', 'json']))
    container.start()
    sink = bind_sink(broker, routing_key='sink')

    send(container, {1, 2}, routing_key='sink')
    _, properties, body = get_message(broker, sink)
    assert properties.content_type == 'application/x-python-serialize'
    assert pickle.loads(body) == {1, 2}

    send(container, ['json'], routing_key='sink', serializer='json')
    _, properties, body = get_message(broker, sink)
    assert properties.content_type == 'application/json'
    assert json.loads(body) == ['json']

    # and the service's own consumer accepts both
    send(container, frozenset('ab'), routing_key='inbox')
    received.wait_for(frozenset('ab'))
    send(container, 'plain', routing_key='inbox', serializer='json')
    received.wait_for('plain')


def test_publisher_keeps_working_after_dropped_connections(
        broker, containers):
    container = containers(publisher_service(
        Publisher(exchange=OUTBOX, routing_key='k')), broker.config)
    container.start()
    sink = bind_sink(broker)
    send(container, 'before')
    broker.drop_connections()
    send(container, 'after')
    assert [json.loads(get_message(broker, sink)[2]) for _ in range(2)] == [
        'before', 'after']
