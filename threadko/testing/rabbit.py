"""Test helpers for a real RabbitMQ: a small client for its management HTTP
API (:class:`RabbitManager`) and :func:`get_message_from_queue`.

The management API is used by the pytest plugin to give each test its own
vhost, and by tests to look at the broker from outside (queues, bindings,
connections). Only the standard library is used for HTTP.
"""

import base64
import json
import queue
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from threadko.exceptions import ThreadkoException

#: seconds an HTTP request to the management API may take
REQUEST_TIMEOUT = 10


class RabbitManagerError(ThreadkoException):
    """A management API request failed.

    ``url`` is the request's URL (without credentials), ``status`` the HTTP
    status (``None`` when no response arrived) and ``body`` what the server
    said.
    """

    def __init__(self, message, url=None, status=None, body=None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body


class QueueEmpty(queue.Empty):
    """:func:`get_message_from_queue` found no message in time.

    A :class:`queue.Empty`, like the error Nameko's fixture raises."""


def _quote(segment):
    return urllib.parse.quote(segment, safe='')


class RabbitManager:
    """Client for the RabbitMQ management HTTP API.

    :param api_uri: e.g. ``"http://guest:guest@localhost:15672"``; the
        credentials are taken from the URI (a path prefix is kept).

    Vhost, queue and exchange names are percent-encoded in URLs, so the
    default vhost is simply ``"/"``. Every failure raises
    :class:`RabbitManagerError`.
    """

    def __init__(self, api_uri, timeout=REQUEST_TIMEOUT):
        parts = urllib.parse.urlsplit(api_uri)
        self.username = urllib.parse.unquote(parts.username or 'guest')
        password = urllib.parse.unquote(parts.password or 'guest')
        netloc = parts.hostname or 'localhost'
        if ':' in netloc:  # IPv6 literal
            netloc = '[{}]'.format(netloc)
        if parts.port:
            netloc = '{}:{}'.format(netloc, parts.port)
        #: the API's base URL, without credentials
        self.base_url = urllib.parse.urlunsplit(
            (parts.scheme or 'http', netloc, parts.path.rstrip('/') + '/api/',
             '', ''))
        token = base64.b64encode(
            '{}:{}'.format(self.username, password).encode('utf-8'))
        self._authorization = 'Basic ' + token.decode('ascii')
        self.timeout = timeout

    def __repr__(self):
        return '<RabbitManager {}>'.format(self.base_url)

    # -- HTTP ----------------------------------------------------------

    def _url(self, *segments):
        return self.base_url + '/'.join(_quote(s) for s in segments)

    def _request(self, method, segments, data=None, headers=None):
        url = self._url(*segments)
        request = urllib.request.Request(url, method=method)
        request.add_header('Authorization', self._authorization)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        body = None
        if data is not None:
            body = json.dumps(data).encode('utf-8')
            request.add_header('Content-Type', 'application/json')
        try:
            with urllib.request.urlopen(
                    request, body, timeout=self.timeout) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            said = exc.read().decode('utf-8', 'replace').strip()
            raise RabbitManagerError(
                '{} {} failed: HTTP {} {}{}'.format(
                    method, url, exc.code, exc.reason,
                    ': ' + said if said else ''),
                url=url, status=exc.code, body=said) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, 'reason', exc)
            raise RabbitManagerError(
                '{} {} failed: {}'.format(method, url, reason),
                url=url) from None
        if not content:
            return None
        return json.loads(content.decode('utf-8'))

    def _get(self, *segments):
        return self._request('GET', segments)

    # -- vhosts and permissions ----------------------------------------

    def get_vhosts(self):
        """All vhosts (dicts with at least ``name``)."""
        return self._get('vhosts')

    def create_vhost(self, vhost):
        """Create ``vhost`` (no error if it exists)."""
        self._request('PUT', ('vhosts', vhost))

    def delete_vhost(self, vhost):
        """Delete ``vhost``, with its queues, exchanges and connections.
        A missing vhost raises (``status`` 404)."""
        self._request('DELETE', ('vhosts', vhost))

    def set_vhost_permissions(self, vhost, username, configure='.*',
                              write='.*', read='.*'):
        """Set ``username``'s permission patterns on ``vhost``."""
        self._request(
            'PUT', ('permissions', vhost, username),
            {'configure': configure, 'write': write, 'read': read})

    # -- connections ---------------------------------------------------

    def get_connections(self, vhost=None):
        """Open client connections, all of them or ``vhost``'s.

        The API lists a new connection only after its next statistics
        round (a few seconds); see :meth:`wait_for_connections`.
        """
        if vhost is None:
            return self._get('connections')
        return self._get('vhosts', vhost, 'connections')

    def close_connection(self, name, reason='closed by the test suite'):
        """Force-close the connection called ``name`` (a name from
        :meth:`get_connections`); its client sees ``reason``."""
        self._request('DELETE', ('connections', name),
                      headers={'X-Reason': reason})

    def close_all_connections(self, vhost=None,
                              reason='closed by the test suite'):
        """Force-close every listed connection (of ``vhost``, if given)
        and return how many were closed. Connections that go away on
        their own meanwhile are skipped."""
        closed = 0
        for connection in self.get_connections(vhost):
            try:
                self.close_connection(connection['name'], reason)
            except RabbitManagerError as exc:
                if exc.status != 404:
                    raise
            else:
                closed += 1
        return closed

    def wait_for_connections(self, vhost, count, timeout=15, interval=0.2):
        """Poll until the API lists exactly ``count`` connections on
        ``vhost``; return them. Raises :class:`RabbitManagerError` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            connections = self.get_connections(vhost)
            if len(connections) == count:
                return connections
            if time.monotonic() >= deadline:
                raise RabbitManagerError(
                    'expected {} connection(s) on vhost {!r}, the API still '
                    'lists {} after {}s'.format(
                        count, vhost, len(connections), timeout))
            time.sleep(interval)

    # -- queues, exchanges, bindings -----------------------------------

    def get_queues(self, vhost):
        """The queues of ``vhost``."""
        return self._get('queues', vhost)

    def get_queue(self, vhost, name):
        """One queue's details (``messages``, ``consumers``, ...); a
        missing queue raises (``status`` 404)."""
        return self._get('queues', vhost, name)

    def get_exchanges(self, vhost):
        """The exchanges of ``vhost`` (the default one is named ``""``)."""
        return self._get('exchanges', vhost)

    def get_bindings(self, vhost):
        """All bindings in ``vhost``."""
        return self._get('bindings', vhost)

    def get_queue_bindings(self, vhost, queue):
        """The bindings of ``queue`` (including the default exchange's)."""
        return self._get('queues', vhost, queue, 'bindings')

    # -- messages ------------------------------------------------------

    def publish(self, vhost, exchange, routing_key, payload,
                properties=None):
        """Publish ``payload`` through the API and return whether it was
        routed to a queue.

        ``exchange`` ``""`` is the default exchange. A ``str`` payload is
        sent as is, ``bytes`` exactly, and anything else as JSON (with
        ``content_type`` ``application/json`` unless ``properties`` say
        otherwise). ``properties`` use the AMQP names (``content_type``,
        ``headers``, ``correlation_id``, ...).
        """
        properties = dict(properties or {})
        if isinstance(payload, bytes):
            body, encoding = base64.b64encode(payload).decode('ascii'), 'base64'
        elif isinstance(payload, str):
            body, encoding = payload, 'string'
        else:
            body, encoding = json.dumps(payload), 'string'
            properties.setdefault('content_type', 'application/json')
        result = self._request(
            'POST', ('exchanges', vhost, exchange or 'amq.default', 'publish'),
            {'properties': properties, 'routing_key': routing_key,
             'payload': body, 'payload_encoding': encoding})
        return result['routed']

    def get_messages(self, vhost, queue, count=1, requeue=False):
        """Take up to ``count`` messages from ``queue`` (acknowledged, or
        put back with ``requeue=True``). Each is a dict with ``payload``,
        ``payload_encoding`` (``"string"``, or ``"base64"`` for binary
        bodies), ``properties``, ``routing_key``, ``redelivered``, ..."""
        ackmode = 'ack_requeue_true' if requeue else 'ack_requeue_false'
        return self._request(
            'POST', ('queues', vhost, queue, 'get'),
            {'count': count, 'ackmode': ackmode, 'encoding': 'auto'})


@dataclass
class ReceivedMessage:
    """A message read by :func:`get_message_from_queue`."""

    #: the raw body
    body: bytes
    #: pika's ``BasicProperties``
    properties: object
    #: the AMQP headers (``{}`` when there are none)
    headers: dict = field(default_factory=dict)
    #: pika's ``Basic.GetOk`` (``routing_key``, ``exchange``, ``redelivered``)
    method: object = None

    @property
    def payload(self):
        """The JSON-decoded body when ``content_type`` is
        ``application/json``, else the raw body."""
        if self.properties.content_type == 'application/json':
            encoding = self.properties.content_encoding or 'utf-8'
            return json.loads(self.body.decode(encoding))
        return self.body


def get_message_from_queue(amqp_uri, queue_name, ack=True, block=True,
                           timeout=1, poll_interval=0.02):
    """Read one message from ``queue_name`` over a connection of its own.

    With ``ack=False`` the message is put back on the queue. With ``block``
    the queue is polled (``basic_get``) until a message arrives or
    ``timeout`` seconds pass; then, or at once without ``block``,
    :class:`QueueEmpty` is raised. A missing queue raises pika's
    ``ChannelClosedByBroker`` (404).
    """
    import pika

    if amqp_uri.startswith('pyamqp://'):
        amqp_uri = 'amqp://' + amqp_uri[len('pyamqp://'):]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = channel.basic_get(queue_name)
            if method is not None:
                break
            if not block or time.monotonic() >= deadline:
                raise QueueEmpty(
                    'no message on queue {!r} {}'.format(
                        queue_name,
                        'within {}s'.format(timeout) if block else 'now'))
            connection.sleep(poll_interval)
        if ack:
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
        return ReceivedMessage(
            body=body, properties=properties,
            headers=dict(properties.headers or {}), method=method)
    finally:
        if connection.is_open:
            connection.close()
