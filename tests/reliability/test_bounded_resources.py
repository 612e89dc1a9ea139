"""A burst of queued requests is worked off ``max_workers`` at a time, by a
process whose thread count and memory stay flat.

The requests are published raw (pika) onto the service's queue *before* the
``threadko run`` process starts, so the whole burst really waits on the
broker (checked) and the service meets a full queue from its first
delivery. Publishing raw keeps the test's own client (a ClusterRpcProxy
holding 10,000 pending replies) out of the measurement and makes the
backlog independent of how fast the service drains it. The test declares
the queues with exactly the arguments the service declares them with (the
wire protocol's: durable, no arguments), so the service's declarations
later succeed on them.

Every worker reports how many workers were running when it started (its
reply for RPC, an event it dispatches for events). Workers that return at
once never overlap (the consumer delivers slower than they finish), so the
workers of one group of ``max_workers`` messages in every ``HOLD_EVERY``
hold their slot for ``HOLD`` seconds (all of them would slow the burst
down too much). With a backlog, a group fills every slot, so the peak must
*reach* ``max_workers`` (the control: a service that ran one worker at a
time would fail); and any delivery beyond the bound would start a worker
while the group holds, so the peak must never pass it. (Checked: with the
pool, the worker slots and the prefetch tripled, both tests fail.)
"""

import json
import time

import pika
import pytest

from support import BROKER_WAIT

MAX_WORKERS = 4
RPC_BURST = 10_000
EVENT_BURST = 1_000
WARM_UP = 2_000  # RPC replies before the first resource sample
SAMPLE_EVERY = 2_000
HOLD_EVERY = 50  # messages number n with n % 50 < MAX_WORKERS hold
HOLD = 0.02  # seconds
DRAIN_WAIT = 40  # seconds for the whole RPC burst to be answered

# RSS may grow this much between the warm-up sample and any later one.
# Leaking 1 KiB per request adds ~1 MiB per 1,000 requests, 8 MiB by the
# last sample (measured: +2.1 MiB at the second one already); a healthy
# process moved by under 100 KiB. 2 MiB separates the two clearly.
RSS_GROWTH_LIMIT_KIB = 2048

SERVICE = '''
import threading

from threadko import config
from threadko.events import EventDispatcher, event_handler
from threadko.rpc import rpc

MAX_WORKERS = config['max_workers']
HOLD_EVERY = config['HOLD_EVERY']
HOLD = config['HOLD']
_cond = threading.Condition()
_running = 0


def _work(number):
    """Do message ``number``'s work as one of the service's workers; return
    how many workers were running when it started (itself included)."""
    global _running
    with _cond:
        _running += 1
        running = _running
        _cond.notify_all()
        if number % HOLD_EVERY < MAX_WORKERS:
            # slow work, cut short if the bound is seen broken
            _cond.wait_for(lambda: _running > MAX_WORKERS, timeout=HOLD)
        _running -= 1
    return running


class Burst:
    name = 'burst'

    @rpc
    def work(self, number):
        return {'number': number, 'running': _work(number)}


class EventBurst:
    name = 'eventburst'
    dispatch = EventDispatcher()

    @event_handler('src', 'tick')
    def tick(self, number):
        self.dispatch('handled', {'number': number, 'running': _work(number)})
'''

SERVICE_CONFIG = {
    'max_workers': MAX_WORKERS, 'HOLD_EVERY': HOLD_EVERY, 'HOLD': HOLD}
RPC_EXCHANGE = 'nameko-rpc'


def _connect(rabbit_config):
    return pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))


def _ready_count(channel, queue):
    return channel.queue_declare(queue, passive=True).method.message_count


def _wait_for_backlog(channel, queue, count):
    """The broker routes publishes to a queue asynchronously: wait until
    all ``count`` show as ready."""
    deadline = time.monotonic() + BROKER_WAIT
    while _ready_count(channel, queue) < count:
        assert time.monotonic() < deadline, (
            'only {} of {} messages reached {}'.format(
                _ready_count(channel, queue), count, queue))
        channel.connection.sleep(0.05)
    assert _ready_count(channel, queue) == count


def _collect(channel, queue, count, timeout, on_progress=None):
    """Consume ``count`` messages from ``queue``; return their
    ``(properties, decoded body)``. ``on_progress(received)`` runs after
    each one."""
    received = []
    deadline = time.monotonic() + timeout
    for method, properties, body in channel.consume(
            queue, auto_ack=True, inactivity_timeout=0.5):
        if method is not None:
            received.append((properties, json.loads(body)))
            if on_progress is not None:
                on_progress(len(received))
            if len(received) == count:
                break
        assert time.monotonic() < deadline, (
            'only {} of {} messages arrived on {} within {}s'.format(
                len(received), count, queue, timeout))
    channel.cancel()
    return received


class Samples:
    """Thread count and RSS of a process at points of the run."""

    def __init__(self, process):
        self.process = process
        self.taken = []  # (label, threads, rss KiB)

    def take(self, label):
        self.taken.append(
            (label, self.process.thread_count(), self.process.rss_kib()))

    def assert_flat(self, max_threads):
        _, threads, rss = self.taken[0]
        table = '\n'.join('{}: {} threads, {} KiB'.format(*sample)
                          for sample in self.taken)
        assert threads <= max_threads, table
        for label, threads_now, rss_now in self.taken[1:]:
            # workers are threads of a pool of max_workers, all started by
            # the end of the warm-up: none may be added later
            assert threads_now == threads, table
            assert rss_now - rss < RSS_GROWTH_LIMIT_KIB, table


@pytest.mark.timeout(60)
def test_rpc_burst_runs_at_most_max_workers_with_flat_threads_and_memory(
        rabbit_config, service_process):
    connection = _connect(rabbit_config)
    try:
        channel = connection.channel()
        channel.exchange_declare(
            RPC_EXCHANGE, exchange_type='topic', durable=True)
        channel.queue_declare('rpc-burst', durable=True)
        channel.queue_bind('rpc-burst', RPC_EXCHANGE, 'burst.*')
        replies = channel.queue_declare('', exclusive=True).method.queue
        channel.queue_bind(replies, RPC_EXCHANGE, 'burst-test-replies')

        for number in range(RPC_BURST):
            channel.basic_publish(
                RPC_EXCHANGE, 'burst.work',
                json.dumps({'args': [number], 'kwargs': {}}),
                pika.BasicProperties(
                    content_type='application/json',
                    content_encoding='utf-8',
                    reply_to='burst-test-replies',
                    correlation_id=str(number)))
        _wait_for_backlog(channel, 'rpc-burst', RPC_BURST)

        process = service_process(
            SERVICE, 'burst:Burst', config=SERVICE_CONFIG)
        # the pool may already have started some of its threads
        threads_at_start = process.thread_count()
        samples = Samples(process)

        def sample(received):
            if received >= WARM_UP and received % SAMPLE_EVERY == 0:
                samples.take('after {} replies'.format(received))

        received = _collect(
            channel, replies, RPC_BURST, DRAIN_WAIT, on_progress=sample)
        # the workers are done; the process is idle again
        samples.take('idle at the end')
        assert _ready_count(channel, 'rpc-burst') == 0
    finally:
        connection.close()

    numbers = sorted(body['result']['number'] for _, body in received)
    assert numbers == list(range(RPC_BURST))
    assert all(body['error'] is None for _, body in received)
    assert all(properties.correlation_id == str(body['result']['number'])
               for properties, body in received)
    assert max(body['result']['running'] for _, body in received) == (
        MAX_WORKERS)
    assert len(samples.taken) == 6  # at 2,000, 4,000, ... 10,000; idle
    samples.assert_flat(max_threads=threads_at_start + MAX_WORKERS)


@pytest.mark.timeout(60)
def test_event_burst_runs_at_most_max_workers(rabbit_config, service_process):
    connection = _connect(rabbit_config)
    try:
        channel = connection.channel()
        channel.exchange_declare('src.events', exchange_type='topic',
                                 durable=True)
        handler_queue = 'evt-src-tick--eventburst.tick'
        channel.queue_declare(handler_queue, durable=True)
        channel.queue_bind(handler_queue, 'src.events', 'tick')
        channel.exchange_declare('eventburst.events', exchange_type='topic',
                                 durable=True)
        handled = channel.queue_declare('', exclusive=True).method.queue
        channel.queue_bind(handled, 'eventburst.events', 'handled')

        for number in range(EVENT_BURST):
            channel.basic_publish(
                'src.events', 'tick', json.dumps(number),
                pika.BasicProperties(content_type='application/json',
                                     content_encoding='utf-8'))
        _wait_for_backlog(channel, handler_queue, EVENT_BURST)

        process = service_process(
            SERVICE, 'burst:EventBurst', config=SERVICE_CONFIG)
        # the pool may already have started some of its threads
        threads_at_start = process.thread_count()
        received = _collect(channel, handled, EVENT_BURST, DRAIN_WAIT)
        assert _ready_count(channel, handler_queue) == 0
        # no thread per event either
        assert process.thread_count() <= threads_at_start + MAX_WORKERS
    finally:
        connection.close()

    assert sorted(body['number'] for _, body in received) == list(
        range(EVENT_BURST))
    assert max(body['running'] for _, body in received) == MAX_WORKERS
