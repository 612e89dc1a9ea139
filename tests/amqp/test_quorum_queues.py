"""Quorum queues: ``QUEUE_TYPE: quorum`` makes the durable queues a
service's instances share (its RPC queue, its reliable SERVICE_POOL and
SINGLETON event queues) quorum queues, with ``QUEUE_DELIVERY_LIMIT`` as
their ``x-delivery-limit``; reply, BROADCAST and auto-delete queues stay
classic. Checked on RabbitMQ through its management API, and on the
embedded broker where it models the behaviour (argument equivalence).
"""

import threading

import pika
import pika.exceptions
import pytest

from threadko.amqp.entities import shared_queue_arguments
from threadko.amqp.errors import (
    explain_declaration_error, explain_queue_type_mismatch,
)
from threadko.events import (
    BROADCAST, SERVICE_POOL, SINGLETON, EventHandler, event_handler,
)
from threadko.exceptions import ConfigurationError
from threadko.messaging import Exchange, Queue, consume
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

from support import BROKER_WAIT, Received, queue_state, until

QUORUM = {'QUEUE_TYPE': 'quorum'}


def quorum_config(config, **extra):
    return dict(config, **QUORUM, **extra)


# -- the arguments, in one place ----------------------------------------------

@pytest.mark.parametrize('config, arguments, expected', [
    ({}, None, None),  # Nameko 2's declaration: no arguments at all
    ({'QUEUE_TYPE': 'classic'}, None, None),
    ({'QUEUE_TYPE': None}, None, None),
    ({'QUEUE_DELIVERY_LIMIT': 3}, None, None),  # only for quorum queues
    ({}, {'x-message-ttl': 5}, {'x-message-ttl': 5}),
    (QUORUM, None, {'x-queue-type': 'quorum', 'x-delivery-limit': 20}),
    (dict(QUORUM, QUEUE_DELIVERY_LIMIT=3), None,
     {'x-queue-type': 'quorum', 'x-delivery-limit': 3}),
    (dict(QUORUM, QUEUE_DELIVERY_LIMIT=None), None,
     {'x-queue-type': 'quorum'}),
    (dict(QUORUM, QUEUE_DELIVERY_LIMIT=0), None, {'x-queue-type': 'quorum'}),
    (QUORUM, {'x-message-ttl': 5}, {
        'x-message-ttl': 5, 'x-queue-type': 'quorum',
        'x-delivery-limit': 20}),
], ids=['default', 'classic', 'null', 'limit-ignored-for-classic',
        'classic-keeps-arguments', 'quorum', 'quorum-limit',
        'quorum-null-limit', 'quorum-zero-limit', 'quorum-keeps-arguments'])
def test_shared_queue_arguments(config, arguments, expected):
    given = None if arguments is None else dict(arguments)

    assert shared_queue_arguments(config, given) == expected
    assert given == arguments  # not modified


def test_shared_queue_arguments_refuse_an_unknown_queue_type():
    with pytest.raises(ConfigurationError, match="'stream'.*'quorum'"):
        shared_queue_arguments({'QUEUE_TYPE': 'stream'})


# -- what becomes a quorum queue ----------------------------------------------

class StableBroadcastHandler(EventHandler):
    @property
    def broadcast_identifier(self):
        return 'host-1'


class Everything:
    """One entrypoint (or dependency) per kind of queue threadko declares."""

    name = 'everything'
    other = RpcProxy('other')  # a reply queue

    @rpc
    def ping(self):
        return 'pong'

    @event_handler('src', 'pooled', handler_type=SERVICE_POOL)
    def pooled(self, data):
        pass

    @event_handler('src', 'single', handler_type=SINGLETON)
    def single(self, data):
        pass

    @StableBroadcastHandler.decorator(
        'src', 'broadcast', handler_type=BROADCAST)
    def broadcast(self, data):
        pass

    @event_handler('src', 'fleeting', handler_type=BROADCAST,
                   reliable_delivery=False)
    def fleeting_broadcast(self, data):
        pass

    @event_handler('src', 'unreliable', reliable_delivery=False)
    def unreliable(self, data):
        pass

    @consume(Queue('jobs', exchange=Exchange('jobs'), routing_key='jobs'))
    def job(self, body):
        pass


def queue_types(rabbit_manager, vhost):
    return {queue['name']: (queue['type'], queue['arguments'])
            for queue in rabbit_manager.get_queues(vhost)}


@pytest.mark.rabbit
def test_quorum_makes_the_shared_queues_quorum_and_leaves_the_others(
        rabbit_config, rabbit_manager, containers):
    containers(Everything, quorum_config(rabbit_config)).start()

    types = queue_types(rabbit_manager, rabbit_config['vhost'])
    [reply_queue] = [name for name in types
                     if name.startswith('rpc.reply-everything-')]
    [fleeting] = [name for name in types if name.startswith(
        'evt-src-fleeting--everything.fleeting_broadcast-')]
    quorum = ('quorum', {'x-queue-type': 'quorum', 'x-delivery-limit': 20})
    assert types == {
        'rpc-everything': quorum,
        'evt-src-pooled--everything.pooled': quorum,
        'evt-src-single': quorum,
        'evt-src-broadcast--everything.broadcast-host-1': ('classic', {}),
        fleeting: ('classic', {}),
        'evt-src-unreliable--everything.unreliable': ('classic', {}),
        reply_queue: ('classic', {'x-expires': 300000}),
        'jobs': ('classic', {}),  # @consume queues only opt in themselves
    }


@pytest.mark.rabbit
def test_a_standalone_client_reply_queue_stays_classic(
        rabbit_config, rabbit_manager):
    with ClusterRpcProxy(quorum_config(rabbit_config)):
        [queue] = rabbit_manager.get_queues(rabbit_config['vhost'])

    assert queue['name'].startswith('rpc.reply-standalone_rpc_proxy-')
    assert queue['type'] == 'classic'


@pytest.mark.rabbit
def test_the_default_declares_every_queue_as_nameko_2_does(
        rabbit_config, rabbit_manager, containers):
    containers(Everything, rabbit_config).start()

    types = queue_types(rabbit_manager, rabbit_config['vhost'])
    assert {queue_type for queue_type, _ in types.values()} == {'classic'}
    assert types['rpc-everything'] == ('classic', {})
    assert types['evt-src-single'] == ('classic', {})


@pytest.mark.rabbit
def test_a_service_on_quorum_queues_answers_calls_and_handles_events(
        rabbit_config, containers):
    received = Received()

    class Worker:
        name = 'worker'

        @rpc
        def double(self, value):
            return value * 2

        @event_handler('src', 'pooled')
        def pooled(self, data):
            received.add(('pooled', data))

        @event_handler('src', 'single', handler_type=SINGLETON)
        def single(self, data):
            received.add(('single', data))

    config = quorum_config(rabbit_config)
    containers(Worker, config).start()

    with ClusterRpcProxy(config, timeout=BROKER_WAIT) as proxy:
        assert proxy.worker.double(21) == 42
    dispatch = event_dispatcher(config)
    try:
        dispatch('src', 'pooled', 1)
        dispatch('src', 'single', 2)
    finally:
        dispatch.close()

    received.wait_for(('pooled', 1))
    received.wait_for(('single', 2))


@pytest.mark.rabbit
def test_a_consume_queue_is_quorum_when_its_arguments_say_so(
        rabbit_config, rabbit_manager, containers):
    received = Received()

    class Jobs:
        name = 'jobs'

        @consume(Queue('quorum-jobs', exchange=Exchange('jobs'),
                       routing_key='jobs', queue_arguments={
                           'x-queue-type': 'quorum', 'x-delivery-limit': 5}))
        def job(self, body):
            received.add(body)

    containers(Jobs, rabbit_config).start()  # QUEUE_TYPE: classic
    assert rabbit_manager.publish(
        rabbit_config['vhost'], 'jobs', 'jobs', {'job': 1})

    received.wait_for({'job': 1})
    queue = rabbit_manager.get_queue(rabbit_config['vhost'], 'quorum-jobs')
    assert queue['type'] == 'quorum'
    assert queue['arguments'] == {
        'x-queue-type': 'quorum', 'x-delivery-limit': 5}


# -- the delivery limit bounds a poison message ------------------------------

class Counter:
    """Counts the calls per value; waits for a value's count."""

    def __init__(self):
        self.counts = {}
        self._cond = threading.Condition()

    def __call__(self, value):
        with self._cond:
            self.counts[value] = self.counts.get(value, 0) + 1
            self._cond.notify_all()

    def wait_for(self, value, count, timeout=BROKER_WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: self.counts.get(value, 0) >= count, timeout), (
                'expected {} x {!r}; got {!r}'.format(
                    count, value, self.counts))


def passive_declare(rabbit_config, queue):
    """``(ready messages, consumers)`` of ``queue``, now (the management
    API's numbers lag by seconds)."""
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        ok = connection.channel().queue_declare(queue, passive=True)
    finally:
        connection.close()
    return ok.method.message_count, ok.method.consumer_count


LIMIT = 3


@pytest.mark.rabbit
def test_the_delivery_limit_bounds_an_event_that_always_fails(
        rabbit_config, containers):
    deliveries = Counter()

    class Poisoned:
        name = 'poisoned'

        @event_handler('src', 'happened', requeue_on_error=True)
        def handle(self, data):
            deliveries(data)
            if data == 'poison':
                raise ValueError('this event always fails')

    # RabbitMQ 3.10 delivers a message at most x-delivery-limit + 1 times:
    # the first delivery, then one per return to the queue
    expected = LIMIT + 1
    config = quorum_config(
        rabbit_config, QUEUE_DELIVERY_LIMIT=LIMIT, max_workers=1)
    container = containers(Poisoned, config)
    container.start()

    dispatch = event_dispatcher(config)
    try:
        dispatch('src', 'happened', 'poison')
        deliveries.wait_for('poison', expected)
        dispatch('src', 'happened', 'fine')  # handled as usual
    finally:
        dispatch.close()
    deliveries.wait_for('fine', 1)

    # once stopped, no consumer holds anything: a poison event still in the
    # queue would be a ready message now
    container.stop()
    queue = 'evt-src-happened--poisoned.handle'
    until(lambda: passive_declare(rabbit_config, queue)[1] == 0)
    assert passive_declare(rabbit_config, queue) == (0, 0)
    assert deliveries.counts == {'poison': expected, 'fine': 1}


# -- a queue of the other type: a clear error at start -----------------------

class Svc:
    name = 'svc'

    @rpc
    def ping(self):
        return 'pong'


def start_then_stop(containers, config):
    container = containers(Svc, config)
    container.start()
    container.stop()


@pytest.mark.parametrize('existing, declared, wanted', [
    ({}, QUORUM, 'classic'),
    (QUORUM, {}, 'quorum'),  # threadko's default is Nameko 2's declaration
], ids=['classic-exists', 'quorum-exists'])
def test_a_queue_of_the_other_type_stops_the_start_with_what_to_do(
        broker, containers, existing, declared, wanted):
    start_then_stop(containers, dict(broker.config, **existing))
    container = containers(Svc, dict(broker.config, **declared))

    with pytest.raises(ConfigurationError) as raised:
        container.start()

    message = str(raised.value)
    other = 'quorum' if wanted == 'classic' else 'classic'
    assert "queue 'rpc-svc' exists as a {} queue".format(wanted) in message
    assert 'declares it as a {} queue'.format(other) in message
    assert 'Set QUEUE_TYPE to {}'.format(wanted) in message
    assert 'rabbitmqctl delete_queue --vhost {} rpc-svc'.format(
        broker.config['vhost']) in message
    assert 'docs/deployment.rst' in message
    # nothing goes on retrying: the container is killed cleanly, and the
    # autouse leak check sees every threadko thread gone
    container.kill()
    assert queue_state(broker, 'rpc-svc') == (0, 0)


def test_another_delivery_limit_stops_the_start_with_what_to_do(
        broker, containers):
    start_then_stop(
        containers, quorum_config(broker.config, QUEUE_DELIVERY_LIMIT=3))
    container = containers(
        Svc, quorum_config(broker.config, QUEUE_DELIVERY_LIMIT=5))

    with pytest.raises(ConfigurationError) as raised:
        container.start()

    message = str(raised.value)
    assert ("quorum queue 'rpc-svc' exists with x-delivery-limit 3, and "
            'this service declares it with 5') in message
    assert 'Set QUEUE_DELIVERY_LIMIT to 3' in message
    assert 'policy' in message
    container.kill()


@pytest.mark.parametrize('reply_text, existing, declared', [
    ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
     "'rpc-a' in vhost 'v': received none but current is the value "
     "'quorum' of type 'longstr'", 'quorum', 'classic'),
    ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
     "'rpc-a' in vhost 'v': received the value 'quorum' of type 'longstr' "
     "but current is none", 'classic', 'quorum'),
    ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
     "'rpc-a' in vhost 'v': received 'classic' but current is 'quorum'",
     'quorum', 'classic'),
], ids=['undeclared-type', 'quorum-over-classic', 'explicit-classic'])
def test_rabbitmq_wordings_of_a_type_mismatch(reply_text, existing, declared):
    exc = pika.exceptions.ChannelClosedByBroker(406, reply_text)

    message = explain_declaration_error(exc, 'service a')

    assert message.startswith(
        "The broker refused a declaration for service a: queue 'rpc-a' "
        'exists as a {} queue, and this service declares it as a {} '
        'queue'.format(existing, declared))


def test_other_refusals_are_not_taken_for_a_type_mismatch():
    refusals = [
        pika.exceptions.ChannelClosedByBroker(
            406, "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for "
            "queue 'q' in vhost 'v': received '5' but current is none"),
        pika.exceptions.ChannelClosedByBroker(
            403, "ACCESS_REFUSED - access to queue 'q' in vhost 'v' refused"),
    ]
    for exc in refusals:
        assert explain_queue_type_mismatch(exc, 'service a') is None
