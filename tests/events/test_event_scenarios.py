"""Events as a user sees them, each scenario run on the embedded broker and
on RabbitMQ (the ``broker`` fixture).

Handlers record what they got in a :class:`Received`; tests wait on it.
Where a test proves that something was *not* delivered, the handler runs
with ``max_workers: 1`` (so it takes its queue's messages one at a time, in
order), a later event is sent and awaited, and only then the earlier one is
checked for.
"""

import threading

import pika
import pika.exceptions
import pytest

from threadko import config as global_config
from threadko.events import (
    BROADCAST, SERVICE_POOL, SINGLETON, EventDispatcher, EventHandler,
    EventHandlerConfigurationError, event_handler,
)
from threadko.exceptions import (
    BrokerRefused, ConfigurationError, UndeliverableMessage,
)
from threadko.standalone.events import event_dispatcher
from threadko.testing.services import entrypoint_waiter

from support import (
    Received, entrypoint_for, fire, queue_state, raw_channel, until,
)

WAIT = 10


# -- helpers -----------------------------------------------------------------

class Source:
    """The service whose events the handlers listen to."""

    name = 'src'
    dispatch = EventDispatcher()

    @fire
    def send(self, event_type, data):
        self.dispatch(event_type, data)


def send(container, event_type, data, context_data=None):
    """Dispatch an event from a worker of ``container`` (a ``Source``);
    return the dispatching worker's context."""
    handle = entrypoint_for(container, 'send').fire(
        event_type, data, context_data=context_data)
    handle.result()
    return handle.worker_ctx


@pytest.fixture
def source(broker, containers):
    container = containers(Source, broker.config)
    container.start()
    return container


@pytest.fixture
def dispatch(broker):
    """A standalone dispatcher (the exchange must have been declared)."""
    dispatch = event_dispatcher(broker.config)
    yield dispatch
    dispatch.close()


def serial(broker, **extra):
    """Config for a handler container taking one message at a time."""
    return dict(broker.config, max_workers=1, **extra)


# -- delivery to the three handler types ---------------------------------------

DATA = {
    'name': 'Zoë – 東京 – 🚀',
    'nested': {'list': [1, 2.5, None, True, {'x': 'ü'}], 'empty': {}},
    'none': None,
}


def test_dispatch_reaches_every_handler_type(broker, containers, source):
    received = Received()

    class Listener:
        name = 'listener'

        @event_handler('src', 'happened', handler_type=SERVICE_POOL)
        def pooled(self, data):
            received.add(('pool', data))

        @event_handler('src', 'happened', handler_type=SINGLETON)
        def single(self, data):
            received.add(('singleton', data))

        @event_handler('src', 'happened', handler_type=BROADCAST,
                       reliable_delivery=False)
        def broadcast(self, data):
            received.add(('broadcast', data))

    containers(Listener, broker.config).start()
    send(source, 'happened', DATA)
    items = received.wait_for_count(3)
    assert sorted(items) == [
        ('broadcast', DATA), ('pool', DATA), ('singleton', DATA)]


def _instance_of(service_name, handler_kwargs, received, instance):
    class Instance:
        name = service_name

        @event_handler('src', 'tick', **handler_kwargs)
        def handle(self, data):
            received.add((instance, data))
    return Instance


def test_service_pool_instances_share_the_events(
        broker, containers, dispatch):
    received = Received()
    for instance in ('a', 'b'):
        containers(_instance_of('pool', {}, received, instance),
                   broker.config).start()
    for n in range(20):
        dispatch('src', 'tick', n)
    items = received.wait_for_count(20)
    assert sorted(n for _, n in items) == list(range(20))  # each once
    assert {instance for instance, _ in items} == {'a', 'b'}


def test_different_services_each_get_every_event(
        broker, containers, dispatch):
    received = Received()
    for service in ('one', 'two'):
        containers(_instance_of(service, {}, received, service),
                   broker.config).start()
    for n in range(5):
        dispatch('src', 'tick', n)
    items = received.wait_for_count(10)
    assert sorted(items) == sorted(
        (service, n) for service in ('one', 'two') for n in range(5))


def test_singleton_handlers_of_different_services_share_each_event(
        broker, containers, dispatch):
    received = Received()
    for service in ('one', 'two'):
        containers(_instance_of(service, {'handler_type': SINGLETON},
                                received, service),
                   broker.config).start()
    for n in range(10):
        dispatch('src', 'tick', n)
    items = received.wait_for_count(10)
    # one queue for the whole cluster: nothing is waiting or handled twice
    assert queue_state(broker, 'evt-src-tick') == (0, 2)
    assert sorted(n for _, n in items) == list(range(10))


class InstanceBroadcastHandler(EventHandler):
    """A broadcast handler identified by its container's ``INSTANCE_ID``,
    stable across restarts (as a hostname would be)."""

    @property
    def broadcast_identifier(self):
        if self.container is None:  # the unbound prototype
            return None
        return self.container.config['INSTANCE_ID']


def test_broadcast_with_stable_identifier_reaches_every_instance(
        broker, containers, dispatch):
    received = Received()

    def start(instance):
        class Watcher:
            name = 'watcher'

            @InstanceBroadcastHandler.decorator(
                'src', 'tick', handler_type=BROADCAST)
            def handle(self, data):
                received.add((instance, data))

        container = containers(
            Watcher, dict(broker.config, INSTANCE_ID=instance))
        container.start()
        return container

    a = start('a')
    start('b')
    for n in range(3):
        dispatch('src', 'tick', n)
    items = received.wait_for_count(6)
    assert sorted(items) == sorted(
        (instance, n) for instance in 'ab' for n in range(3))

    # reliable: what is sent while `a` is down waits in a's own queue
    a.stop()
    dispatch('src', 'tick', 3)
    received.wait_for(('b', 3))
    start('a')
    received.wait_for(('a', 3))


def test_default_broadcast_identifier_refuses_reliable_delivery(
        broker, containers):
    class Careless:
        name = 'careless'

        @event_handler('src', 'tick', handler_type=BROADCAST)
        def handle(self, data):
            pass

    with pytest.raises(EventHandlerConfigurationError) as info:
        containers(Careless, broker.config)
    assert 'broadcast_identifier' in str(info.value)
    assert 'reliable_delivery=False' in str(info.value)


def test_default_broadcast_identifier_without_reliable_delivery(
        broker, containers, dispatch):
    received = Received()
    kwargs = {'handler_type': BROADCAST, 'reliable_delivery': False}
    for instance in ('a', 'b'):
        containers(_instance_of('watcher', kwargs, received, instance),
                   broker.config).start()
    for n in range(3):
        dispatch('src', 'tick', n)
    items = received.wait_for_count(6)
    assert sorted(items) == sorted(
        (instance, n) for instance in 'ab' for n in range(3))


# -- reliable delivery ---------------------------------------------------------

def test_reliable_delivery_keeps_events_while_the_handler_is_down(
        broker, containers, dispatch):
    received = Received()
    service = _instance_of('keeper', {}, received, 'keeper')
    first = containers(service, broker.config)
    first.start()
    first.stop()
    for n in range(3):
        dispatch('src', 'tick', n)
    assert queue_state(broker, 'evt-src-tick--keeper.handle') == (3, 0)

    containers(service, broker.config).start()
    assert sorted(n for _, n in received.wait_for_count(3)) == [0, 1, 2]


def test_unreliable_delivery_queue_goes_with_the_handler(
        broker, containers, dispatch):
    received = Received()
    service = _instance_of(
        'forgetful', {'reliable_delivery': False}, received, 'forgetful')
    queue = 'evt-src-tick--forgetful.handle'
    first = containers(service, serial(broker))
    first.start()
    assert queue_state(broker, queue) == (0, 1)
    first.stop()
    until(lambda: queue_state(broker, queue) is None)

    dispatch('src', 'tick', 'lost')
    containers(service, serial(broker)).start()
    dispatch('src', 'tick', 'after')
    assert received.wait_for(('forgetful', 'after')) == [
        ('forgetful', 'after')]


# -- routing -------------------------------------------------------------------

def test_event_type_patterns(broker, containers, dispatch):
    received = Received()

    class Patterns:
        name = 'patterns'

        @event_handler('src', 'order.*')
        def one_word(self, data):
            received.add(('order.*', data))

        @event_handler('src', '#')
        def everything(self, data):
            received.add(('#', data))

    containers(Patterns, serial(broker)).start()
    sent = ['order.placed', 'order.placed.late', 'invoice.sent',
            'order.cancelled']
    for event_type in sent:
        dispatch('src', event_type, event_type)
    received.wait_for(('order.*', 'order.cancelled'))
    received.wait_for(('#', 'order.cancelled'))
    items = received.items
    assert [d for p, d in items if p == 'order.*'] == [
        'order.placed', 'order.cancelled']
    assert [d for p, d in items if p == '#'] == sent


def test_other_sources_events_are_not_handled(broker, containers, dispatch):
    received = Received()
    containers(_instance_of('picky', {}, received, 'picky'),
               serial(broker)).start()
    # another service's exchange, with the same event type
    containers(type('Other', (Source,), {'name': 'other'}),
               broker.config).start()
    dispatch('other', 'tick', 'not mine')
    dispatch('src', 'tick', 'mine')
    assert received.wait_for(('picky', 'mine')) == [('picky', 'mine')]


# -- context -------------------------------------------------------------------

def test_context_data_and_call_id_stack_travel_with_the_event(
        broker, containers, source):
    class Listener:
        name = 'listener'

        @event_handler('src', 'happened')
        def handle(self, data):
            return data

    listener = containers(Listener, broker.config)
    listener.start()
    with entrypoint_waiter(listener, 'handle', timeout=WAIT) as result:
        dispatcher_ctx = send(
            source, 'happened', 'payload',
            context_data={'language': 'fr', 'user_id': 7,
                          'call_id_stack': ['upstream.call.1']})
    assert result.get() == 'payload'
    handler_ctx = result.worker_ctx
    assert handler_ctx.data == {'language': 'fr', 'user_id': 7}
    dispatcher_stack = dispatcher_ctx.call_id_stack
    assert dispatcher_stack[0] == 'upstream.call.1'
    assert dispatcher_stack[1].startswith('src.send.')
    stack = handler_ctx.call_id_stack
    assert stack[:-1] == dispatcher_stack
    assert stack[-1].startswith('listener.handle.')


# -- errors ----------------------------------------------------------------------

def _failing_service(received, fail, **handler_kwargs):
    class Failing:
        name = 'failing'

        @event_handler('src', 'tick', **handler_kwargs)
        def handle(self, data):
            received.add(data)
            if fail(data):
                raise ValueError(data)
    return Failing


def test_failed_event_is_acked_without_requeue_on_error(
        broker, containers, dispatch):
    received = Received()
    service = _failing_service(received, lambda data: data == 'bad')
    containers(service, serial(broker)).start()
    dispatch('src', 'tick', 'bad')
    dispatch('src', 'tick', 'good')
    # a requeued 'bad' would come back before 'good'
    assert received.wait_for('good') == ['bad', 'good']
    assert queue_state(broker, 'evt-src-tick--failing.handle') == (0, 1)


def test_failed_event_is_redelivered_with_requeue_on_error(
        broker, containers, dispatch):
    received = Received()
    failed = []

    def fail_first_time(data):
        if data == 'flaky' and not failed:
            failed.append(data)
            return True
        return False

    service = _failing_service(
        received, fail_first_time, requeue_on_error=True)
    containers(service, serial(broker)).start()
    dispatch('src', 'tick', 'flaky')
    dispatch('src', 'tick', 'next')
    received.wait_for('next')
    assert received.items == ['flaky', 'flaky', 'next']


def _raw_publish(broker, exchange, routing_key, body, content_type):
    with raw_channel(broker) as channel:
        channel.basic_publish(
            exchange, routing_key, body,
            pika.BasicProperties(content_type=content_type,
                                 content_encoding='utf-8', delivery_mode=2))


@pytest.mark.parametrize('body, content_type', [
    (b'\x00\x01 not for us', 'application/x-bogus'),
    (b'{"truncated": ', 'application/json'),
], ids=['unaccepted-content-type', 'invalid-json'])
def test_undecodable_event_is_dropped_and_the_service_carries_on(
        broker, containers, dispatch, body, content_type):
    received = Received()
    container = containers(
        _instance_of('robust', {}, received, 'robust'), serial(broker))
    container.start()
    _raw_publish(broker, 'src.events', 'tick', body, content_type)
    dispatch('src', 'tick', 'good')
    # were the bad message requeued, it would block the queue forever
    assert received.wait_for(('robust', 'good')) == [('robust', 'good')]
    container.stop()
    assert queue_state(broker, 'evt-src-tick--robust.handle') == (0, 0)


# -- standalone dispatcher -------------------------------------------------------

def _listener(received):
    class Listener:
        name = 'listener'

        @event_handler('src', 'happened')
        def handle(self, data):
            received.add(data)
            return data
    return Listener


def test_standalone_dispatcher_with_explicit_config(broker, containers):
    received = Received()
    listener = containers(_listener(received), broker.config)
    listener.start()
    dispatch = event_dispatcher(broker.config)
    try:
        with entrypoint_waiter(listener, 'handle', timeout=WAIT) as result:
            dispatch('src', 'happened', DATA)
        assert result.get() == DATA
        # no context travels from a standalone dispatcher
        assert result.worker_ctx.data == {}
        [call_id] = result.worker_ctx.call_id_stack
        assert call_id.startswith('listener.handle.')

        # one dispatcher, used by several threads at once
        threads = [threading.Thread(
            target=dispatch, args=('src', 'happened', n),
            name='threadko-test-dispatch-{}'.format(n)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(received.wait_for_count(5)[1:]) == [0, 1, 2, 3]

        # close() ends its connections; it reconnects when used again
        dispatch.close()
        dispatch('src', 'happened', 'reopened')
        received.wait_for('reopened')
    finally:
        dispatch.close()


def test_standalone_dispatcher_with_global_config(broker, containers):
    received = Received()
    containers(_listener(received), broker.config).start()
    with global_config.patch({'AMQP_URI': broker.config['AMQP_URI']},
                             clear=True):
        dispatch = event_dispatcher()
    try:
        dispatch('src', 'happened', 'nameko 3 style')
        received.wait_for('nameko 3 style')
    finally:
        dispatch.close()

    # Nameko 3's connection options override the global config
    with global_config.patch({}, clear=True):
        dispatch = event_dispatcher(uri=broker.config['AMQP_URI'])
    try:
        dispatch('src', 'happened', 'given uri')
        received.wait_for('given uri')
    finally:
        dispatch.close()


def test_standalone_mandatory_dispatch_without_a_queue(
        broker, containers, source):
    received = Received()
    containers(_listener(received), broker.config).start()
    dispatch = event_dispatcher(broker.config, mandatory=True)
    try:
        with pytest.raises(UndeliverableMessage):
            dispatch('src', 'nobody_listens', {})
        dispatch('src', 'happened', 'bound')
        received.wait_for('bound')
    finally:
        dispatch.close()


def test_service_dispatcher_with_mandatory_option(broker, containers):
    strict = containers(type('Strict', (Source,), {
        'name': 'src', 'dispatch': EventDispatcher(mandatory=True)}),
        broker.config)
    strict.start()
    with pytest.raises(UndeliverableMessage):
        send(strict, 'nobody_listens', {})
    received = Received()
    containers(_listener(received), broker.config).start()
    send(strict, 'happened', 'bound')
    received.wait_for('bound')


def test_standalone_dispatch_to_an_undeclared_exchange(broker, containers):
    dispatch = event_dispatcher(broker.config)
    try:
        with pytest.raises(BrokerRefused) as info:
            dispatch('ghost', 'happened', {})
        assert info.value.reply_code == 404
        message = str(info.value)
        assert "'ghost.events'" in message
        assert 'declare it first' in message

        # once the source service has run, the same dispatcher works
        received = Received()

        class Ghost:
            name = 'ghost_listener'

            @event_handler('ghost', 'happened')
            def handle(self, data):
                received.add(data)

        containers(Ghost, broker.config).start()
        dispatch('ghost', 'happened', 'now it exists')
        received.wait_for('now it exists')
    finally:
        dispatch.close()


# -- exchange configuration ------------------------------------------------------

def test_declare_event_exchanges_false(broker, containers):
    source = containers(Source, dict(broker.config,
                                     DECLARE_EVENT_EXCHANGES=False))
    source.start()
    with raw_channel(broker) as channel:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.exchange_declare('src.events', passive=True)
    assert info.value.reply_code == 404

    with pytest.raises(BrokerRefused) as refused:
        send(source, 'happened', 'too early')
    assert refused.value.reply_code == 404

    # a handler (declaring as usual) brings the exchange
    received = Received()
    containers(_listener(received), broker.config).start()
    send(source, 'happened', 'declared now')
    assert received.wait_for('declared now') == ['declared now']


def test_declare_event_exchanges_false_for_a_handler(broker, containers):
    received = Received()
    config = dict(broker.config, DECLARE_EVENT_EXCHANGES=False)
    # it binds its queue to the exchange, which must exist then
    with pytest.raises(ConfigurationError) as info:
        containers(_listener(received), config).start()
    assert 'src.events' in str(info.value)

    containers(Source, broker.config).start()
    containers(_listener(received), config).start()
    dispatch = event_dispatcher(broker.config)
    try:
        dispatch('src', 'happened', 'bound later')
    finally:
        dispatch.close()
    received.wait_for('bound later')


def test_auto_delete_event_exchanges(broker, containers):
    containers(Source, dict(broker.config, AUTO_DELETE_EVENT_EXCHANGES=True)
               ).start()
    with raw_channel(broker) as channel:
        # an equivalent declaration is accepted, a durable one refused
        channel.exchange_declare('src.events', 'topic', durable=True,
                                 auto_delete=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.exchange_declare('src.events', 'topic', durable=True,
                                     auto_delete=False)
    assert info.value.reply_code == 406


# -- workers -------------------------------------------------------------------

def test_max_workers_bounds_concurrent_handlers(
        broker, containers, dispatch):
    release = threading.Event()
    lock = threading.Lock()
    in_flight = []
    most = [0]
    done = Received()
    three_running = threading.Event()

    class Busy:
        name = 'busy'

        @event_handler('src', 'tick')
        def handle(self, n):
            with lock:
                in_flight.append(n)
                most[0] = max(most[0], len(in_flight))
                if len(in_flight) == 3:
                    three_running.set()
            try:
                assert release.wait(WAIT)
            finally:
                with lock:
                    in_flight.remove(n)
                done.add(n)

    containers(Busy, dict(broker.config, max_workers=3)).start()
    try:
        for n in range(8):
            dispatch('src', 'tick', n)
        assert three_running.wait(WAIT)
        # the prefetch matches: the other five wait in the queue
        assert queue_state(broker, 'evt-src-tick--busy.handle') == (5, 1)
    finally:
        release.set()
    assert sorted(done.wait_for_count(8)) == list(range(8))
    assert most[0] == 3


def test_handlers_and_dispatchers_survive_dropped_connections(
        broker, containers, source):
    received = Received()
    containers(_listener(received), broker.config).start()
    send(source, 'happened', 'before')
    received.wait_for('before')

    broker.drop_connections()
    # the dispatcher's pooled connection is gone: it takes a new one; the
    # handler reconnects and finds the event waiting in its queue. (The ack
    # of 'before' may have been lost with the connection: it may come
    # again, as at-least-once delivery allows.)
    send(source, 'happened', 'after')
    received.wait_for('after')
    send(source, 'happened', 'again')
    received.wait_for('again')
    assert set(received.items) == {'before', 'after', 'again'}


def _slow_and_fast(received, started, release):
    class Slow:
        name = 'worker'

        @event_handler('src', 'job')
        def handle(self, data):
            received.add(('slow', data))
            started.set()
            assert release.wait(WAIT)

    class Fast:
        name = 'worker'

        @event_handler('src', 'job')
        def handle(self, data):
            received.add(('fast', data))

    return Slow, Fast


def test_stop_lets_a_running_handler_finish_and_acks_its_event(
        broker, containers, dispatch):
    received = Received()
    started = threading.Event()
    release = threading.Event()
    slow_cls, fast_cls = _slow_and_fast(received, started, release)
    queue = 'evt-src-job--worker.handle'
    slow = containers(slow_cls, broker.config)
    slow.start()
    stopper = threading.Thread(target=slow.stop, name='threadko-test-stop')
    try:
        dispatch('src', 'job', 1)
        assert started.wait(WAIT)
        containers(fast_cls, serial(broker)).start()
        stopper.start()
        # stopping has begun: the slow instance no longer consumes
        until(lambda: queue_state(broker, queue) == (0, 1))
    finally:
        release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()

    dispatch('src', 'job', 2)
    # had event 1 gone back to the queue, `fast` would get it before 2
    assert received.wait_for(('fast', 2)) == [('slow', 1), ('fast', 2)]


def test_kill_redelivers_the_unacked_event_to_another_instance(
        broker, containers, dispatch):
    received = Received()
    started = threading.Event()
    release = threading.Event()
    slow_cls, fast_cls = _slow_and_fast(received, started, release)
    slow = containers(slow_cls, broker.config)
    slow.start()
    try:
        dispatch('src', 'job', 1)
        assert started.wait(WAIT)
        containers(fast_cls, broker.config).start()
        slow.kill()
        assert received.wait_for(('fast', 1)) == [('slow', 1), ('fast', 1)]
    finally:
        release.set()
