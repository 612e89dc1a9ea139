"""Retries with back-off and dead letters (threadko.retry) for
``@event_handler`` and ``@consume``, on the embedded broker and on
RabbitMQ: delays wait on the broker, in per-delay wait queues, and the
last failure ends in the handler's dead-letter queue."""

import threading
import time

import pika
import pytest

from threadko.amqp.connection import Connector
from threadko.events import event_handler
from threadko.retry import (
    ATTEMPT_HEADER, DEAD_LETTER_HEADERS, EXCEPTION_HEADER, Backoff, Retry,
    RetryAttempt,
)
from threadko.standalone.events import event_dispatcher

WAIT = 15
QUEUE = 'evt-src-happened--flaky.handle'


class Calls:
    """Each call's payload, attempt and time, with a wait for a count."""

    def __init__(self):
        self.calls = []
        self._cond = threading.Condition()

    def add(self, payload, attempt):
        with self._cond:
            self.calls.append((payload, attempt, time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, count, timeout=WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self.calls) >= count, timeout), self.calls
            return list(self.calls)


def flaky_service(calls, fail_times, policy, exc=ValueError):
    class Flaky:
        name = 'flaky'
        attempt = RetryAttempt()

        @event_handler('src', 'happened', retry=policy)
        def handle(self, payload):
            calls.add(payload, self.attempt)
            if self.attempt <= fail_times.get(payload, 0):
                raise exc('attempt {} fails'.format(self.attempt))
    return Flaky


def _get(config, queue):
    """``(properties, body)`` of the next message of ``queue``; None if
    it is empty or does not exist (dead-letter queues are declared with
    their first letter)."""
    connection = Connector(config).connect()
    try:
        method, properties, body = connection.channel().basic_get(
            queue, auto_ack=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return None
    finally:
        if connection.is_open:
            connection.close()
    return (properties, body) if method is not None else None


def test_a_handler_failing_twice_runs_three_times_spaced_by_the_delays(
        broker, containers):
    config = broker.config
    calls = Calls()
    policy = Retry(attempts=3, delay=0.3, multiplier=2, jitter=0)
    containers(flaky_service(calls, {'x': 2}, policy),
               config).start()
    dispatch = event_dispatcher(config)
    dispatch('src', 'happened', 'x')
    got = calls.wait_for(3)
    assert [(payload, attempt) for payload, attempt, _ in got] == [
        ('x', 1), ('x', 2), ('x', 3)]
    first, second, third = (at for _, _, at in got)
    assert 0.3 <= second - first < 0.3 + 5
    assert 0.6 <= third - second < 0.6 + 5
    assert _get(config, QUEUE + '.dead-letters') is None


def test_a_long_delay_does_not_hold_up_a_short_one(broker, containers):
    config = broker.config
    calls = Calls()
    policy = Retry(attempts=2, delay=0.1, jitter=0)

    class Picky:
        name = 'flaky'
        attempt = RetryAttempt()

        @event_handler('src', 'happened', retry=policy)
        def handle(self, payload):
            calls.add(payload, self.attempt)
            if self.attempt == 1:
                raise Backoff(30 if payload == 'slow' else 0.2)

    containers(Picky, config).start()
    dispatch = event_dispatcher(config)
    dispatch('src', 'happened', 'slow')
    calls.wait_for(1)
    dispatch('src', 'happened', 'quick')
    got = calls.wait_for(3)
    assert [(payload, attempt) for payload, attempt, _ in got] == [
        ('slow', 1), ('quick', 1), ('quick', 2)]


def test_an_always_failing_handler_ends_with_one_dead_letter(
        broker, containers):
    config = broker.config
    calls = Calls()
    policy = Retry(attempts=3, delay=0.1, jitter=0)
    containers(flaky_service(calls, {'doomed': 99}, policy),
               config).start()
    dispatch = event_dispatcher(config)
    dispatch('src', 'happened', 'doomed')
    calls.wait_for(3)
    deadline = time.monotonic() + WAIT
    letter = None
    while letter is None and time.monotonic() < deadline:
        letter = _get(config, QUEUE + '.dead-letters')
    assert letter is not None, 'no dead letter'
    properties, body = letter
    assert body == b'"doomed"'
    headers = properties.headers
    assert set(DEAD_LETTER_HEADERS) <= set(headers)
    assert headers[ATTEMPT_HEADER] == 3
    assert headers[EXCEPTION_HEADER] == 'builtins.ValueError'
    assert headers['x-threadko-exception-message'] == 'attempt 3 fails'
    assert headers['x-threadko-original-exchange'] == 'src.events'
    assert headers['x-threadko-original-routing-key'] == 'happened'
    assert headers['x-threadko-first-failure'] <= \
        headers['x-threadko-last-failure']
    assert _get(config, QUEUE + '.dead-letters') is None  # just one
    assert len(calls.calls) == 3


def test_expected_exceptions_are_not_retried(broker, containers):
    config = broker.config
    calls = Calls()

    class Strict:
        name = 'flaky'
        attempt = RetryAttempt()

        @event_handler('src', 'happened', expected_exceptions=KeyError,
                       retry=Retry(attempts=3, delay=0.1))
        def handle(self, payload):
            calls.add(payload, self.attempt)
            if payload == 'bad':
                raise KeyError(payload)

    containers(Strict, config).start()
    dispatch = event_dispatcher(config)
    dispatch('src', 'happened', 'bad')
    dispatch('src', 'happened', 'next')
    got = calls.wait_for(2)
    assert [(payload, attempt) for payload, attempt, _ in got] == [
        ('bad', 1), ('next', 1)]


def test_a_retry_waiting_on_the_broker_survives_a_restart_of_the_service(
        broker, containers):
    config = broker.config
    calls = Calls()
    policy = Retry(attempts=2, delay=1.0, jitter=0)
    service = flaky_service(calls, {'x': 1}, policy)
    first = containers(service, config)
    first.start()
    event_dispatcher(config)('src', 'happened', 'x')
    calls.wait_for(1)
    first.stop()  # the retry waits in its wait queue meanwhile
    containers(service, config).start()
    got = calls.wait_for(2)
    assert [(payload, attempt) for payload, attempt, _ in got] == [
        ('x', 1), ('x', 2)]


@pytest.mark.rabbit
def test_the_config_default_retries_consume_handlers_too(
        rabbit_config, rabbit_manager, containers):
    from threadko.amqp.entities import Queue
    from threadko.messaging import consume
    calls = Calls()

    class Worker:
        name = 'worker'
        attempt = RetryAttempt()

        @consume(Queue('jobs'))
        def handle(self, payload):
            calls.add(payload, self.attempt)
            if self.attempt == 1:
                raise IOError('database restarting')

    config = dict(rabbit_config, HANDLER_RETRY={'attempts': 2, 'delay': 0.1})
    containers(Worker, config).start()
    rabbit_manager.publish(rabbit_config['vhost'], '', 'jobs', ['job-1'])
    got = calls.wait_for(2)
    assert [(payload, attempt) for payload, attempt, _ in got] == [
        (['job-1'], 1), (['job-1'], 2)]


@pytest.mark.rabbit
def test_an_undecodable_message_goes_to_the_dead_letters(
        rabbit_config, rabbit_manager, containers):
    from threadko.amqp.entities import Queue
    from threadko.messaging import consume

    class Worker:
        name = 'worker'

        @consume(Queue('jobs'), retry=True)
        def handle(self, payload):
            raise AssertionError('never called')

    containers(Worker, rabbit_config).start()
    rabbit_manager.publish(rabbit_config['vhost'], '', 'jobs', b'{not json',
                           properties={'content_type': 'application/json'})
    deadline = time.monotonic() + WAIT
    letter = None
    while letter is None and time.monotonic() < deadline:
        letter = _get(rabbit_config, 'jobs.dead-letters')
    assert letter is not None, 'no dead letter'
    properties, body = letter
    assert body == b'{not json'
    assert 'Decode' in properties.headers[EXCEPTION_HEADER]


def test_retry_bookkeeping_is_not_context_data(broker, containers):
    from threadko.extensions import DependencyProvider
    seen = Calls()

    class ContextData(DependencyProvider):
        def get_dependency(self, worker_ctx):
            return worker_ctx.data

    class Flaky:
        name = 'flaky'
        attempt = RetryAttempt()
        context = ContextData()

        @event_handler('src', 'happened', retry=Retry(delay=0.1))
        def handle(self, payload):
            seen.add(sorted(self.context), self.attempt)
            if self.attempt == 1:
                raise ValueError('once')

    containers(Flaky, broker.config).start()
    event_dispatcher(broker.config)('src', 'happened', 'x')
    (first, _, _), (second, _, _) = seen.wait_for(2)
    assert second == first  # nothing of x-death or x-threadko-* added
    assert not [key for key in second if key.startswith('x-')]
