"""Retries (threadko.retry) next to real Nameko 2.14.1 processes.

1. events dispatched by a Nameko service's worker reach a threadko handler
   with retries, which retries them as it retries threadko's own events:
   attempt 2 gets the same data and the Nameko worker's context data and
   call id stack; an event failing every attempt ends as one dead letter,
   which a Nameko client reads with the Nameko headers intact;
2. a Nameko service handling the same event type (nameko_listener's
   SERVICE_POOL, BROADCAST and SINGLETON handlers) gets each event exactly
   once while the threadko handler retries every one of them: retries go
   back to the threadko handler's queue only, and the wait queues do not
   disturb the Nameko service.
"""

import types

import pytest

from threadko.events import event_handler
from threadko.retry import ATTEMPT_HEADER, EXCEPTION_HEADER, Retry, \
    RetryAttempt
from threadko.standalone.rpc import ClusterRpcProxy

from support import Received, queue_state, until
from interop_support import STANDALONE_CALL_ID, Worker, call_id_of

WAIT = 10  # seconds a Nameko-side wait may take (RPC timeouts are longer)
POLICY = Retry(attempts=3, delay=0.3, jitter=0.1)


class Flaky(Exception):
    pass


def record(received, worker_ctx, attempt, data):
    received.add({
        'data': data,
        'attempt': attempt,
        'context_data': dict(worker_ctx.data),
        'call_id': worker_ctx.call_id,
        'call_id_stack': list(worker_ctx.call_id_stack),
    })


def start_threadko(container_factory, rabbit_config, service_cls):
    container = container_factory(service_cls, rabbit_config)
    container.start()
    return container


def assert_untroubled(nameko):
    """The Nameko process is still running and has logged no error."""
    assert nameko.proc.poll() is None, nameko.describe()
    log = nameko.log_path.read_text(errors='replace')
    assert 'Traceback' not in log and ' ERROR ' not in log, \
        nameko.describe()


# -- 1. a Nameko worker's events, retried by a threadko handler --

#: the Nameko worker's context data
CONTEXT_DATA = {'language': 'de', 'user_id': 7, 'tenant': 'caf\u00e9'}
NAMEKO_SOURCE_QUEUE = 'evt-nameko_source-happened--threadko_retrier.handle'


def retrier_of_nameko_events(received):
    class Retrier:
        name = 'threadko_retrier'
        worker = Worker()
        attempt = RetryAttempt()

        @event_handler('nameko_source', 'happened', retry=POLICY)
        def handle(self, data):
            record(received, self.worker, self.attempt, data)
            if data['fail'] == 'always' or \
                    (data['fail'] == 'once' and self.attempt == 1):
                raise Flaky('attempt {}'.format(self.attempt))

    return Retrier


@pytest.mark.timeout(120)
def test_nameko_worker_events_are_retried_by_a_threadko_handler(
        nameko_services, nameko_driver, container_factory, rabbit_config):
    received = Received()
    nameko = nameko_services('nameko_source', wait=False)
    driver = nameko_driver(wait=False)
    start_threadko(container_factory, rabbit_config,
                   retrier_of_nameko_events(received))
    nameko.wait_ready()
    driver.wait_ready()

    once = {'fail': 'once', 'text': 'gr\u00fc\u00df \U0001F680'}
    nameko_stack = driver.call('nameko_source', 'dispatch',
                               ['happened', once], context_data=CONTEXT_DATA)
    first, second = received.wait_for_count(2)
    # both attempts: the event as the Nameko worker dispatched it, with its
    # context data and its call id stack under a new call id of their own
    assert STANDALONE_CALL_ID.match(nameko_stack[0])
    assert call_id_of('nameko_source', 'dispatch').match(nameko_stack[1])
    assert (first['attempt'], second['attempt']) == (1, 2)
    for got in (first, second):
        assert got['data'] == once
        # (a subset: on attempt 2 the retry's own headers, x-death and
        # x-threadko-*, show up in the context data too)
        for key, value in CONTEXT_DATA.items():
            assert got['context_data'][key] == value
        assert call_id_of('threadko_retrier', 'handle').match(got['call_id'])
        assert got['call_id_stack'] == nameko_stack + [got['call_id']]
    assert first['call_id'] != second['call_id']

    # one that always fails: three attempts, then one dead letter, which
    # a Nameko client reads with the Nameko worker's headers
    doomed = {'fail': 'always', 'n': 1}
    doomed_stack = driver.call('nameko_source', 'dispatch',
                               ['happened', doomed], context_data=CONTEXT_DATA)
    attempts = received.wait_for_count(5)[2:]
    assert [(got['data'], got['attempt']) for got in attempts] == [
        (doomed, 1), (doomed, 2), (doomed, 3)]
    letter = driver.get(NAMEKO_SOURCE_QUEUE + '.dead-letters', timeout=WAIT)
    assert letter is not None, 'no dead letter'
    assert letter['body'] == doomed
    headers = letter['headers']
    assert headers[ATTEMPT_HEADER] == 3
    assert headers[EXCEPTION_HEADER] == '{}.Flaky'.format(__name__)
    assert headers['x-threadko-original-exchange'] == 'nameko_source.events'
    assert headers['x-threadko-original-routing-key'] == 'happened'
    assert headers['nameko.call_id_stack'] == doomed_stack
    assert headers['nameko.language'] == 'de'
    assert driver.get(NAMEKO_SOURCE_QUEUE + '.dead-letters') is None
    assert len(received.items) == 5
    assert_untroubled(nameko)


# -- 2. Nameko handlers of the same events are not disturbed --

THREADKO_SOURCE = 'threadko_source'  # the source nameko_listener handles
#: nameko_listener's queues for ``ping`` events from threadko_source
NAMEKO_LISTENER_QUEUES = {
    'on_ping_pool':
        'evt-threadko_source-ping--nameko_listener.on_ping_pool',
    'on_ping_broadcast':
        'evt-threadko_source-ping--nameko_listener.on_ping_broadcast'
        '-nameko-peer',
    'on_ping_singleton': 'evt-threadko_source-ping',
}
PING_QUEUE = 'evt-threadko_source-ping--threadko_retrier.on_ping'
EVENTS = 5


def retrier_of_pings(received):
    class Retrier:
        name = 'threadko_retrier'
        worker = Worker()
        attempt = RetryAttempt()

        @event_handler(THREADKO_SOURCE, 'ping', retry=POLICY)
        def on_ping(self, data):
            record(received, self.worker, self.attempt, data)
            if 'n' in data and self.attempt == 1:
                raise Flaky(data['n'])

    return Retrier


@pytest.mark.timeout(120)
def test_nameko_handlers_of_retried_events_get_each_event_once(
        nameko_services, nameko_driver, container_factory, rabbit_config,
        rabbit_manager):
    received = Received()
    # one worker: Nameko takes each queue's messages one at a time, in
    # order, so once it has handled the marker sent after the retries it
    # has handled anything the retries could have put in its queues
    nameko = nameko_services(
        'nameko_listener', config={'max_workers': 1}, wait=False)
    driver = nameko_driver(wait=False)
    start_threadko(container_factory, rabbit_config,
                   retrier_of_pings(received))
    nameko.wait_ready()
    driver.wait_ready()

    # Nameko's standalone dispatcher publishes the events
    for n in range(EVENTS):
        driver.dispatch(THREADKO_SOURCE, 'ping', {'n': n})
    handled = received.wait_for_count(2 * EVENTS)
    assert sorted((got['data']['n'], got['attempt']) for got in handled) == [
        (n, attempt) for n in range(EVENTS) for attempt in (1, 2)]

    driver.dispatch(THREADKO_SOURCE, 'ping', {'marker': True})
    assert received.wait_for_count(2 * EVENTS + 1)[-1]['data'] == \
        {'marker': True}

    with ClusterRpcProxy(rabbit_config, timeout=WAIT + 10) as client:
        def nameko_side(handler):
            # under max_workers 1 a blocking wait_for would starve the
            # handlers: poll instead
            return [got['body'] for got in client.nameko_listener.received(
                'event', handler)]

        for handler in NAMEKO_LISTENER_QUEUES:
            until(lambda: {'marker': True} in nameko_side(handler),
                  timeout=WAIT + 10)
        for handler in NAMEKO_LISTENER_QUEUES:
            assert nameko_side(handler) == [
                {'n': n} for n in range(EVENTS)] + [{'marker': True}], \
                handler

    # the retries went through wait queues of the threadko handler's queue
    # only; the Nameko queues hold nothing and keep their one consumer
    names = [queue['name'] for queue in
             rabbit_manager.get_queues(rabbit_config['vhost'])]
    assert any(name.startswith(PING_QUEUE + '.retry.') for name in names)
    assert not any('.retry.' in name or 'dead-letters' in name
                   for name in names if not name.startswith(PING_QUEUE))
    broker = types.SimpleNamespace(kind='rabbit', config=rabbit_config)
    for queue in NAMEKO_LISTENER_QUEUES.values():
        assert queue_state(broker, queue) == (0, 1), queue
    assert len(received.items) == 2 * EVENTS + 1
    assert_untroubled(nameko)
