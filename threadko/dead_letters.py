"""Dead letters: what ``threadko dead-letters`` does, as functions.

A handler with retries (:mod:`threadko.retry`) sends the messages it gave
up on to ``<queue>.dead-letters``. AMQP has no random access to a queue,
so every operation here takes the queue's messages with ``basic_get``
(unacked), looks at them, acks the ones it is done with and gives the
others back in their order. Each message is known by a short id: a hash of
its body and of the dead-letter headers, stable while it stays in the
queue.
"""

import hashlib
from collections import namedtuple
from datetime import datetime, timezone

import pika
import pika.exceptions

from threadko.amqp.connection import CONNECTION_ERRORS, Connector
from threadko.exceptions import CommandError
from threadko import retry

DEAD_LETTERS_SUFFIX = '.dead-letters'
PREVIEW = 60  # characters of a payload shown by list

#: one dead letter: ``id``, the pika ``properties`` and the ``body``
Letter = namedtuple('Letter', 'id properties body')

# what a dead letter's id covers
_ID_HEADERS = tuple(sorted(retry.DEAD_LETTER_HEADERS))


def dead_letter_queue_name(name):
    """``name`` itself if it names a dead-letter queue, else the
    dead-letter queue of the handler queue ``name``."""
    return name if name.endswith(DEAD_LETTERS_SUFFIX) \
        else name + DEAD_LETTERS_SUFFIX


def letter_id(properties, body):
    """A short id of a dead letter (stable while it is in the queue)."""
    headers = properties.headers or {}
    digest = hashlib.sha1(body)
    for key in _ID_HEADERS:
        digest.update(repr((key, headers.get(key))).encode())
    return digest.hexdigest()[:10]


def summary(letter):
    """One line about ``letter``: id, last failure time, exception and a
    preview of the payload."""
    headers = letter.properties.headers or {}
    when = headers.get(retry.LAST_FAILURE_HEADER)
    when = (datetime.fromtimestamp(float(when), timezone.utc)
            .strftime('%Y-%m-%d %H:%M:%S') if when is not None else '?')
    exception = headers.get(retry.EXCEPTION_HEADER, '?')
    message = headers.get(retry.EXCEPTION_MESSAGE_HEADER) or ''
    preview = letter.body.decode('utf-8', 'replace')
    if len(preview) > PREVIEW:
        preview = preview[:PREVIEW - 1] + '…'
    return '{}  {}  {}: {}  {}'.format(
        letter.id, when, exception.rsplit('.', 1)[-1], message, preview)


class DeadLetterQueue:
    """The dead letters of one handler queue, on the broker of
    ``config``; use as a context manager (it holds a connection)."""

    def __init__(self, config, name):
        self.name = dead_letter_queue_name(name)
        self.connector = Connector(config, heartbeat=0)
        if self.connector.is_memory:
            raise CommandError(
                'The embedded memory:// broker lives inside one process: '
                'point --broker (or AMQP_URI) at the RabbitMQ the services '
                'use')
        self.connection = None

    def __enter__(self):
        try:
            self.connection = self.connector.connect()
        except CONNECTION_ERRORS as exc:
            problem = self.connector.explain_connection_error(exc)
            raise CommandError('Cannot connect to the broker at {}: {}'
                               .format(self.connector.safe_uri,
                                       problem or exc))
        return self

    def __exit__(self, *exc_info):
        if self.connection is not None and self.connection.is_open:
            self.connection.close()

    def _channel(self):
        channel = self.connection.channel()
        try:
            channel.queue_declare(self.name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            raise CommandError(
                'There is no queue {!r} on this vhost: nothing was '
                'dead-lettered there yet, or the name is wrong (give the '
                "handler's queue, e.g. evt-orders-placed--billing.charge, "
                'or its dead-letter queue)'.format(self.name))
        return channel

    def _take_all(self, channel):
        """Every message of the queue, unacked: ``[(tag, Letter)]``."""
        taken = []
        while True:
            method, properties, body = channel.basic_get(self.name)
            if method is None:
                return taken
            taken.append((method.delivery_tag,
                          Letter(letter_id(properties, body), properties,
                                 body)))

    def letters(self):
        """The dead letters, oldest first (they stay in the queue)."""
        channel = self._channel()
        try:
            return [letter for _, letter in self._take_all(channel)]
        finally:
            channel.close()  # gives them back, in their order

    def show(self, letter_id_):
        for letter in self.letters():
            if letter.id == letter_id_:
                return letter
        raise CommandError('No dead letter {} in {}'.format(
            letter_id_, self.name))

    def replay(self, ids=None):
        """Publish the letters (those of ``ids``, or all) again to their
        original exchange and routing key, confirmed, then remove them;
        return the replayed letters. They start again at attempt 1."""
        channel = self._channel()
        publisher = self.connection.channel()
        publisher.confirm_delivery()
        taken = self._take_all(channel)
        chosen = [(tag, letter) for tag, letter in taken
                  if ids is None or letter.id in ids]
        unknown = set(ids or ()) - {letter.id for _, letter in taken}
        if unknown:
            channel.close()
            raise CommandError('No dead letter {} in {}'.format(
                ', '.join(sorted(unknown)), self.name))
        for tag, letter in chosen:
            headers = letter.properties.headers or {}
            properties = retry.copy_properties(
                letter.properties,
                retry.without_retry_headers(letter.properties.headers))
            publisher.basic_publish(
                headers.get(retry.EXCHANGE_HEADER, ''),
                headers.get(retry.ROUTING_KEY_HEADER, ''),
                letter.body, properties)
            channel.basic_ack(tag)  # only once the broker confirmed it
        channel.close()
        publisher.close()
        return [letter for _, letter in chosen]

    def purge(self):
        """Delete every dead letter; return how many there were."""
        channel = self._channel()
        try:
            return channel.queue_purge(self.name).method.message_count
        finally:
            channel.close()

