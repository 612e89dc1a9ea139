"""Retries with back-off and dead letters for ``@event_handler`` and
``@consume``, on the broker.

A handler opts in with ``retry=Retry(...)`` (or ``retry=True`` for the
defaults, or the ``HANDLER_RETRY`` config key). When its worker raises an
exception the policy retries, the message does not wait in a worker: a
copy goes to a *wait queue* of the handler's queue, ``<queue>.retry.<ms>``,
whose messages all expire after the same delay (``x-message-ttl``) and are
then dead-lettered by RabbitMQ straight back to the handler's queue
through the default exchange. One wait queue per delay, so a long delay
never holds up a short one behind it (a per-message TTL only expires at
the head of a queue); delays are rounded to two significant digits to
bound their number, and unused wait queues expire. The copy is confirmed
before the original is acked, so a message is never lost between the two
(at worst it is handled once more).

After the last attempt the message goes to the handler's *dead-letter
queue*, ``<queue>.dead-letters``, with headers that say why (see
:data:`DEAD_LETTER_HEADERS`).

A handler sees its attempt number through the :class:`RetryAttempt`
dependency, and can ask for a retry after a delay of its choice by raising
:class:`Backoff`.
"""

import random
import time

import pika

from threadko.amqp.entities import Queue
from threadko.constants import HANDLER_RETRY_CONFIG_KEY
from threadko.exceptions import ConfigurationError
from threadko.extensions import DependencyProvider

# headers a retried message carries (the attempts so far, and where it was
# first published: its later rounds come back through the default exchange)
ATTEMPT_HEADER = 'x-threadko-attempt'
FIRST_FAILURE_HEADER = 'x-threadko-first-failure'
EXCHANGE_HEADER = 'x-threadko-original-exchange'
ROUTING_KEY_HEADER = 'x-threadko-original-routing-key'
# and a dead letter, besides
EXCEPTION_HEADER = 'x-threadko-exception'
EXCEPTION_MESSAGE_HEADER = 'x-threadko-exception-message'
LAST_FAILURE_HEADER = 'x-threadko-last-failure'

#: the headers of a dead letter
DEAD_LETTER_HEADERS = (
    EXCEPTION_HEADER, EXCEPTION_MESSAGE_HEADER, ATTEMPT_HEADER,
    FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, EXCHANGE_HEADER,
    ROUTING_KEY_HEADER)

#: the headers of the retry bookkeeping, threadko's and RabbitMQ's (which
#: dead-lettering from a wait queue adds): not context data
RETRY_HEADERS = frozenset(DEAD_LETTER_HEADERS + (
    'x-death', 'x-first-death-reason', 'x-first-death-queue',
    'x-first-death-exchange'))

# an unused wait queue goes away this long after its delay
WAIT_QUEUE_SPARE_MS = 60000
MAX_EXCEPTION_MESSAGE = 1000  # characters of str(exc) kept in a header


class Backoff(Exception):
    """Raise it in a handler to be retried after ``delay`` seconds (the
    policy's maximum attempts still apply), whatever exceptions the policy
    retries."""

    def __init__(self, delay):
        super().__init__('retry in {} s'.format(delay))
        self.delay = delay


class Retry:
    """A handler's retry policy.

    :param on: the exception types that are retried (a type or tuple), or
        a predicate ``fn(exc) -> bool``; default: every ``Exception``
    :param attempts: how many times the handler runs at most, the first
        included (``attempts=3``: two retries)
    :param delay: seconds before the first retry
    :param multiplier: each further retry waits this much longer
    :param max_delay: the cap of a retry's delay, in seconds
    :param jitter: a random share (0.1: up to 10%) added to each delay, so
        that retries of messages that failed together spread out
    :param retry_expected: retry the entrypoint's ``expected_exceptions``
        too (by default they are the handler saying the message is bad,
        and are not retried)
    """

    def __init__(self, on=Exception, attempts=3, delay=1.0, multiplier=2.0,
                 max_delay=300.0, jitter=0.1, retry_expected=False):
        if attempts < 1:
            raise ConfigurationError(
                'Retry(attempts={!r}): a handler runs at least once'.format(
                    attempts))
        if delay < 0 or max_delay < 0 or multiplier < 1 or jitter < 0:
            raise ConfigurationError(
                'Retry: delays must be positive, the multiplier at least 1 '
                'and the jitter not negative')
        self.on = on
        self.attempts = attempts
        self.delay = delay
        self.multiplier = multiplier
        self.max_delay = max_delay
        self.jitter = jitter
        self.retry_expected = retry_expected

    @classmethod
    def from_option(cls, option, config):
        """The policy for a handler's ``retry=`` argument: a
        :class:`Retry`, True (the defaults), False (none) or None (the
        ``HANDLER_RETRY`` config key, a dict of arguments)."""
        if option is None:
            option = config.get(HANDLER_RETRY_CONFIG_KEY)
            if option is None:
                return None
            if not isinstance(option, dict):
                raise ConfigurationError(
                    '{} must be a mapping of Retry arguments, e.g. '
                    '{{attempts: 5, delay: 2}}'.format(
                        HANDLER_RETRY_CONFIG_KEY))
            return cls(**option)
        if option is True:
            return cls()
        if option is False:
            return None
        if isinstance(option, cls):
            return option
        raise ConfigurationError(
            'retry= takes a Retry, True or False, not {!r}'.format(option))

    def retries(self, exc, expected_exceptions=()):
        """Whether ``exc`` is retried (attempts aside)."""
        if isinstance(exc, Backoff):
            return True
        if expected_exceptions and isinstance(exc, expected_exceptions) \
                and not self.retry_expected:
            return False
        if isinstance(self.on, type) or isinstance(self.on, tuple):
            return isinstance(exc, self.on)
        return bool(self.on(exc))

    def delay_before(self, attempt, exc=None):
        """Seconds to wait before attempt ``attempt + 1``, after attempt
        ``attempt`` (1-based) failed with ``exc``."""
        if isinstance(exc, Backoff):
            return max(0.0, float(exc.delay))
        delay = min(self.delay * self.multiplier ** (attempt - 1),
                    self.max_delay)
        return delay * (1 + random.uniform(0, self.jitter))


def wait_ms(seconds):
    """A delay in ms, rounded to two significant digits (at least 1 ms)."""
    ms = max(1, int(round(seconds * 1000)))
    digits = len(str(ms))
    if digits > 2:
        scale = 10 ** (digits - 2)
        ms = int(round(ms / scale)) * scale
    return ms


def without_retry_headers(headers):
    """``headers`` (or context data) without :data:`RETRY_HEADERS`."""
    return {key: value for key, value in (headers or {}).items()
            if key not in RETRY_HEADERS}


def copy_properties(properties, headers):
    """``properties`` of a message with ``headers`` instead of its own, for
    a copy published again (persistent unless it said otherwise; no
    ``expiration``, and no ``user_id``, which the broker checks against
    the publishing user)."""
    return pika.BasicProperties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers or None,
        delivery_mode=properties.delivery_mode or 2,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to, message_id=properties.message_id,
        timestamp=properties.timestamp or int(time.time()),
        type=properties.type, app_id=properties.app_id)


def wait_queue(queue_name, ms):
    """The wait queue of ``queue_name`` for a delay of ``ms``: its messages
    expire after ``ms`` and go back to ``queue_name``. Declared with every
    publish: an ``x-expires`` queue that is only published to expires."""
    queue = Queue(
        '{}.retry.{}'.format(queue_name, ms), durable=True,
        queue_arguments={
            'x-message-ttl': ms,
            'x-dead-letter-exchange': '',
            'x-dead-letter-routing-key': queue_name,
            'x-expires': ms + WAIT_QUEUE_SPARE_MS,
        })
    queue.declare_every_time = True
    return queue


def dead_letter_queue(queue_name):
    """The durable queue where ``queue_name``'s handler's messages go after
    their last attempt."""
    queue = Queue('{}.dead-letters'.format(queue_name), durable=True)
    queue.declare_every_time = True  # not remembered per connection
    return queue


def attempt_of(message):
    """How many times ``message`` was handled before (0 the first time)."""
    headers = message.properties.headers or {}
    try:
        return int(headers.get(ATTEMPT_HEADER, 0))
    except (TypeError, ValueError):
        return 0


def retry_headers(message, attempt, exc, now=None):
    """The headers of the copy of ``message`` after attempt ``attempt``
    failed with ``exc``: the original ones, plus where it came from and
    the failure's details."""
    now = time.time() if now is None else now
    headers = dict(message.properties.headers or {})
    headers.setdefault(EXCHANGE_HEADER, message.method.exchange)
    headers.setdefault(ROUTING_KEY_HEADER, message.routing_key)
    headers.setdefault(FIRST_FAILURE_HEADER, now)
    headers[ATTEMPT_HEADER] = attempt
    headers[LAST_FAILURE_HEADER] = now
    headers[EXCEPTION_HEADER] = '{}.{}'.format(
        type(exc).__module__, type(exc).__qualname__)
    headers[EXCEPTION_MESSAGE_HEADER] = str(exc)[:MAX_EXCEPTION_MESSAGE]
    return headers


class RetryAttempt(DependencyProvider):
    """Injects the attempt number of the message a handler is handling:
    1 the first time, 2 on the first retry, and so on (1 for entrypoints
    without retries)."""

    def get_dependency(self, worker_ctx):
        return worker_ctx.attempt
