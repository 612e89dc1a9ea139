"""Events between threadko and real Nameko 2.14.1 processes on RabbitMQ.

1. a Nameko worker's ``EventDispatcher`` -> threadko handlers of every
   type, with the worker's context data and call id stack;
2. Nameko's standalone ``event_dispatcher`` -> a threadko handler;
3. threadko's ``EventDispatcher`` (in a worker) and standalone
   ``event_dispatcher`` -> Nameko handlers of every type;
4. one SINGLETON queue consumed by a Nameko and a threadko handler: every
   event is handled exactly once in total;
5. a Nameko handler service replaced by a threadko one of the same name,
   which takes over its durable queues and the events waiting there;
6. both implementations declaring the same exchanges and queues, in
   either order, without a 406.

Handlers record what they got: threadko ones in a :class:`Received`, the
Nameko ones (``nameko_peer/services.py``) in a journal read over RPC.
"""

import types

import pytest

from threadko.events import (
    BROADCAST, SINGLETON, EventDispatcher, EventHandler, event_handler,
)
from threadko.messaging import Exchange, Publisher, Queue, consume
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

from support import BROKER_WAIT, Received, fire, queue_state, until
from interop_support import STANDALONE_CALL_ID, Worker, call_id_of

WAIT = 10  # seconds a Nameko-side wait may take (RPC timeouts are longer)

DATA = {
    'name': 'Zo\u00eb \u2013 \u6771\u4eac \u2013 \U0001F680',
    'nested': {'list': [1, 2.5, None, True, {'x': '\u00fc'}], 'empty': {}},
    'deep': {'a': {'b': {'c': [[], {}, '']}}},
    'big': 2 ** 62,
    'none': None,
}
#: the dispatching worker's context data: well-known keys, a float (an
#: AMQP double in the headers) and a custom key
CONTEXT_DATA = {
    'language': 'en-gb',
    'user_id': 42,
    'ratio': 0.25,
    'tenant': 'caf\u00e9 \u2615',
}

THREADKO_SOURCE = 'threadko_source'  # the source nameko_listener handles
NAMEKO_BROADCAST_ID = 'nameko-peer'  # nameko_listener's broadcast identifier
#: nameko_listener's queues for ``ping`` events from threadko_source
NAMEKO_LISTENER_QUEUES = {
    'on_ping_pool':
        'evt-threadko_source-ping--nameko_listener.on_ping_pool',
    'on_ping_broadcast':
        'evt-threadko_source-ping--nameko_listener.on_ping_broadcast'
        '-nameko-peer',
    'on_ping_singleton': 'evt-threadko_source-ping',
}
NAMEKO_HANDLERS = sorted(NAMEKO_LISTENER_QUEUES)

# -- threadko services --


def note(received, worker_ctx, data):
    received.add({
        'handler': worker_ctx.entrypoint.method_name,
        'data': data,
        'context_data': dict(worker_ctx.data),
        'call_id': worker_ctx.call_id,
        'call_id_stack': list(worker_ctx.call_id_stack),
    })


def stable_broadcast(identifier):
    """``@event_handler`` for a BROADCAST handler whose queue keeps its name
    across restarts (so it may use reliable delivery)."""
    class StableBroadcastHandler(EventHandler):
        @property
        def broadcast_identifier(self):
            return identifier

    return StableBroadcastHandler.decorator


def threadko_listener(received):
    """``threadko_listener``: every kind of handler of ``happened`` events
    from ``nameko_source``."""
    class ThreadkoListener:
        name = 'threadko_listener'
        worker = Worker()

        @event_handler('nameko_source', 'happened')
        def pooled(self, data):
            note(received, self.worker, data)

        @event_handler('nameko_source', 'happened', handler_type=SINGLETON)
        def singleton(self, data):
            note(received, self.worker, data)

        @stable_broadcast('threadko-peer')(
            'nameko_source', 'happened', handler_type=BROADCAST,
            reliable_delivery=True)
        def broadcast_stable(self, data):
            note(received, self.worker, data)

        @event_handler('nameko_source', 'happened', handler_type=BROADCAST,
                       reliable_delivery=False)
        def broadcast_any(self, data):
            note(received, self.worker, data)

    return ThreadkoListener


def nameko_listener_twin(received):
    """A threadko ``nameko_listener``: the same handlers (service, method,
    handler type, broadcast identifier) and ``@consume`` queue as Nameko's,
    so it consumes the very same queues."""
    class NamekoListenerTwin:
        name = 'nameko_listener'
        worker = Worker()

        @event_handler(THREADKO_SOURCE, 'ping')
        def on_ping_pool(self, data):
            note(received, self.worker, data)

        @stable_broadcast(NAMEKO_BROADCAST_ID)(
            THREADKO_SOURCE, 'ping', handler_type=BROADCAST,
            reliable_delivery=True)
        def on_ping_broadcast(self, data):
            note(received, self.worker, data)

        @event_handler(THREADKO_SOURCE, 'ping', handler_type=SINGLETON)
        def on_ping_singleton(self, data):
            note(received, self.worker, data)

        @consume(Queue(
            'nameko_consume', routing_key='nameko_consume',
            exchange=Exchange('interop_messages', type='direct',
                              durable=True)))
        def on_message(self, body):
            note(received, self.worker, body)

    return NamekoListenerTwin


class ThreadkoSource:
    """Dispatches ``threadko_source`` events (and declares the messages
    exchange nameko_source publishes to)."""

    name = THREADKO_SOURCE
    dispatch = EventDispatcher()
    publish = Publisher(exchange=Exchange(
        'interop_messages', type='direct', durable=True))

    @fire
    def send(self, event_type, data):
        self.dispatch(event_type, data)


def send(container, event_type, data, context_data=None):
    """Dispatch an event from a worker of a started ``ThreadkoSource``
    container; return that worker's call id stack."""
    entrypoint = next(ep for ep in container.entrypoints
                      if ep.method_name == 'send')
    handle = entrypoint.fire(event_type, data, context_data=context_data)
    handle.result(BROKER_WAIT)
    return handle.worker_ctx.call_id_stack


# -- fixtures --


@pytest.fixture
def broker(rabbit_config):
    """The test's vhost, as ``support.queue_state`` takes it."""
    return types.SimpleNamespace(kind='rabbit', config=rabbit_config)


@pytest.fixture
def start_threadko(container_factory, rabbit_config):
    """``start(service_cls, **config)``: a started threadko container on the
    test's vhost (``config`` adds keys, e.g. ``max_workers``)."""
    def start(service_cls, **config):
        container = container_factory(
            service_cls, dict(rabbit_config, **config))
        container.start()
        return container
    return start


@pytest.fixture
def client(rabbit_config):
    """threadko's standalone RPC client, for nameko_listener's journal."""
    with ClusterRpcProxy(rabbit_config, timeout=WAIT + 10) as proxy:
        yield proxy


@pytest.fixture
def dispatch(rabbit_config):
    """threadko's standalone event dispatcher (Nameko 2 signature)."""
    dispatch = event_dispatcher(rabbit_config)
    yield dispatch
    dispatch.close()


def by_handler(records):
    return {record['handler']: record for record in records}


# -- 1. Nameko EventDispatcher -> threadko handlers --


def test_nameko_worker_event_reaches_every_threadko_handler_type(
        nameko_services, nameko_driver, start_threadko, broker):
    received = Received()
    nameko = nameko_services('nameko_source', wait=False)
    driver = nameko_driver(wait=False)
    start_threadko(threadko_listener(received))
    nameko.wait_ready()
    driver.wait_ready()

    nameko_stack = driver.call('nameko_source', 'dispatch',
                               ['happened', DATA], context_data=CONTEXT_DATA)

    records = by_handler(received.wait_for_count(4))
    assert sorted(records) == [
        'broadcast_any', 'broadcast_stable', 'pooled', 'singleton']
    assert STANDALONE_CALL_ID.match(nameko_stack[0])
    assert call_id_of('nameko_source', 'dispatch').match(nameko_stack[1])
    assert len(nameko_stack) == 2
    for handler, record in records.items():
        assert record['data'] == DATA
        assert record['context_data'] == CONTEXT_DATA
        assert type(record['context_data']['ratio']) is float
        assert record['call_id_stack'] == nameko_stack + [record['call_id']]
        assert call_id_of('threadko_listener', handler).match(
            record['call_id'])
    # each handler consumes the queue Nameko would have named for it
    for queue in ('evt-nameko_source-happened--threadko_listener.pooled',
                  'evt-nameko_source-happened',
                  'evt-nameko_source-happened--threadko_listener.'
                  'broadcast_stable-threadko-peer'):
        assert queue_state(broker, queue) == (0, 1), queue
    assert len(received.items) == 4


# -- 2. Nameko standalone event_dispatcher -> threadko handler --


def test_nameko_standalone_dispatcher_reaches_threadko_handler(
        nameko_driver, start_threadko):
    received = Received()
    driver = nameko_driver(wait=False)
    # the handler declares nameko_source.events, which the standalone
    # dispatcher needs to exist
    start_threadko(threadko_listener(received))
    driver.wait_ready()

    driver.dispatch('nameko_source', 'happened', DATA)
    first = by_handler(received.wait_for_count(4))
    # the standalone dispatcher's publisher options include headers: they
    # arrive as context data (``nameko.`` stripped, others as they are)
    driver.dispatch('nameko_source', 'happened', ['second'],
                    headers={'nameko.language': 'de', 'x-trace': 'abc'})
    second = by_handler(received.wait_for_count(8)[4:])

    for handler, record in first.items():
        assert record['data'] == DATA
        # no context headers at all: no data, a stack of the handler's own
        assert record['context_data'] == {}
        assert record['call_id_stack'] == [record['call_id']]
        assert call_id_of('threadko_listener', handler).match(
            record['call_id'])
    assert sorted(second) == sorted(first)
    for record in second.values():
        assert record['data'] == ['second']
        assert record['context_data'] == {'language': 'de', 'x-trace': 'abc'}
        assert record['call_id_stack'] == [record['call_id']]


# -- 3. threadko EventDispatcher -> Nameko handlers --


@pytest.fixture
def nameko_listener_and_source(nameko_services, start_threadko):
    """nameko_listener (Nameko) and ThreadkoSource (threadko) running;
    provides the threadko container."""
    nameko = nameko_services('nameko_listener', wait=False)
    source = start_threadko(ThreadkoSource)
    nameko.wait_ready()
    return source


def test_threadko_worker_event_reaches_every_nameko_handler_type(
        nameko_listener_and_source, client):
    threadko_stack = send(nameko_listener_and_source, 'ping', DATA,
                          context_data=CONTEXT_DATA)

    records = client.nameko_listener.wait_for(3, WAIT, 'event')
    assert sorted(record['handler'] for record in records) == NAMEKO_HANDLERS
    assert len(threadko_stack) == 1
    assert call_id_of(THREADKO_SOURCE, 'send').match(threadko_stack[0])
    for record in records:
        assert record['body'] == DATA
        assert record['context_data'] == CONTEXT_DATA
        assert type(record['context_data']['ratio']) is float
        nameko_call_id = record['call_id_stack'][-1]
        assert record['call_id_stack'] == threadko_stack + [nameko_call_id]
        assert call_id_of('nameko_listener', record['handler']).match(
            nameko_call_id)


def test_threadko_standalone_dispatcher_reaches_nameko_handlers(
        nameko_services, client, dispatch):
    # nameko_listener's handlers declare threadko_source.events
    nameko_services('nameko_listener')

    dispatch(THREADKO_SOURCE, 'ping', DATA)

    records = client.nameko_listener.wait_for(3, WAIT, 'event')
    assert sorted(record['handler'] for record in records) == NAMEKO_HANDLERS
    for record in records:
        assert record['body'] == DATA
        assert record['context_data'] == {}
        nameko_call_id, = record['call_id_stack']
        assert call_id_of('nameko_listener', record['handler']).match(
            nameko_call_id)


# -- 4. one SINGLETON queue, two implementations --


EVENTS = 10
MAX_MARKERS = 20


def test_singleton_shared_by_nameko_and_threadko_handles_each_event_once(
        nameko_services, start_threadko, client, dispatch, broker):
    """Both consume ``evt-threadko_source-ping`` one message at a time
    (``max_workers: 1``), in queue order. After the events, markers are
    dispatched one by one until each side has handled one: a side that
    handled a marker has handled everything the broker gave it before, so
    the counts are final and any second copy of an event would show."""
    threadko_side = Received()

    class ThreadkoSingleton:
        name = 'threadko_singleton'

        @event_handler(THREADKO_SOURCE, 'ping', handler_type=SINGLETON)
        def on_ping(self, data):
            threadko_side.add(data)

    nameko = nameko_services(
        'nameko_listener', config={'max_workers': 1}, wait=False)
    start_threadko(ThreadkoSingleton, max_workers=1)
    nameko.wait_ready()
    singleton_queue = NAMEKO_LISTENER_QUEUES['on_ping_singleton']
    assert queue_state(broker, singleton_queue) == (0, 2)

    def nameko_side():
        # under max_workers 1 a blocking wait_for would starve the handlers
        return [record['body'] for record in client.nameko_listener.received(
            'event', 'on_ping_singleton')]

    def markers(bodies):
        return [body['marker'] for body in bodies if 'marker' in body]

    for n in range(EVENTS):
        dispatch(THREADKO_SOURCE, 'ping', {'n': n})
    sent = 0
    while not (markers(nameko_side()) and markers(threadko_side.items)):
        assert sent < MAX_MARKERS, 'one side never got a marker'
        dispatch(THREADKO_SOURCE, 'ping', {'marker': sent})
        sent += 1
        until(lambda: len(markers(nameko_side() + threadko_side.items))
              >= sent)

    on_nameko, on_threadko = nameko_side(), list(threadko_side.items)
    everything = on_nameko + on_threadko
    assert sorted(body['n'] for body in everything if 'n' in body) == \
        list(range(EVENTS))
    assert sorted(markers(everything)) == list(range(sent))
    assert queue_state(broker, singleton_queue) == (0, 2)


# -- 5. a Nameko handler service replaced by a threadko one --


def test_threadko_service_takes_over_nameko_handler_queues_and_backlog(
        nameko_services, start_threadko, client, dispatch, broker):
    nameko = nameko_services('nameko_listener')
    dispatch(THREADKO_SOURCE, 'ping', 'before')
    assert sorted(record['handler'] for record in client.nameko_listener
                  .wait_for(3, WAIT, 'event')) == NAMEKO_HANDLERS

    assert nameko.stop() == 0
    assert nameko.lines[-1] == 'STOPPED'
    # reliable delivery: the queues stay, and keep what comes meanwhile
    dispatch(THREADKO_SOURCE, 'ping', 'while-down-1')
    dispatch(THREADKO_SOURCE, 'ping', 'while-down-2')
    for queue in NAMEKO_LISTENER_QUEUES.values():
        until(lambda: queue_state(broker, queue) == (2, 0))

    received = Received()
    start_threadko(nameko_listener_twin(received), max_workers=1)
    backlog = received.wait_for_count(6)
    dispatch(THREADKO_SOURCE, 'ping', 'after')
    everything = received.wait_for_count(9)

    def bodies(records, handler):
        return [r['data'] for r in records if r['handler'] == handler]

    for handler in NAMEKO_HANDLERS:
        assert bodies(backlog, handler) == ['while-down-1', 'while-down-2']
        assert bodies(everything, handler) == [
            'while-down-1', 'while-down-2', 'after']
    for record in everything:
        assert call_id_of('nameko_listener', record['handler']).match(
            record['call_id'])
    for queue in NAMEKO_LISTENER_QUEUES.values():
        assert queue_state(broker, queue) == (0, 1), queue


# -- 6. compatible declarations, in either order --


@pytest.mark.parametrize('nameko_first', [True, False],
                         ids=['nameko-first', 'threadko-first'])
def test_same_exchanges_and_queues_declared_by_both(
        nameko_first, nameko_services, start_threadko, client, broker):
    """Nameko's nameko_listener and nameko_source, and threadko twins of
    their handlers, dispatcher and publisher, declare the same exchanges
    (``threadko_source.events``, ``nameko_source.events``,
    ``interop_messages``) and queues; a mismatch in any flag would make the
    later declaration fail with 406 PRECONDITION_FAILED."""
    received = Received()

    def start_nameko():
        return nameko_services('nameko_listener', 'nameko_source')

    def start_threadko_side():
        start_threadko(nameko_listener_twin(received))
        start_threadko(threadko_listener(received))
        start_threadko(ThreadkoSource)

    if nameko_first:
        nameko = start_nameko()
        start_threadko_side()
    else:
        start_threadko_side()
        nameko = start_nameko()

    shared = list(NAMEKO_LISTENER_QUEUES.values()) + ['nameko_consume']
    for queue in shared:
        assert queue_state(broker, queue) == (0, 2), queue
    # and the exchange Nameko's dispatcher declared reaches threadko
    client.nameko_source.dispatch('happened', {'order': nameko_first})
    records = received.wait_for_count(4)
    assert all(record['data'] == {'order': nameko_first}
               for record in records)
    assert nameko.proc.poll() is None
