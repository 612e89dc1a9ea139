"""A long-running Nameko 2.14 client, driven by JSON lines on stdin.

    python driver.py --amqp-uri URI [--timeout SECONDS] [--config JSON]

It keeps one ``nameko.standalone.rpc.ClusterRpcProxy`` open, prints
``READY`` once it is started, then answers each request line
``{"id": <any>, "op": <name>, ...}`` with one line ``{"id": <same>,
"result": <value>}`` or ``{"id": <same>, "error": {...}}`` on stdout. The
process is not monkey-patched: a plain program using Nameko's standalone
clients. It exits 0 on stdin EOF or op ``stop``. Logs go to stderr.

Ops:

``call`` -- ``service``, ``method``, ``args`` (list), ``kwargs`` (object),
    optional ``context_data``: the call's result. With ``context_data`` the
    call goes through a new ``ClusterRpcProxy(config, context_data=...)``.
``call_async`` -- ``calls`` (list of ``{service, method, args, kwargs}``):
    every request is published first, then the replies are collected in
    reverse order; the result is a list, in request order, of ``{"result":
    ...}`` or ``{"error": ...}``.
``dispatch`` -- ``source``, ``event_type``, ``data``, optional ``options``
    (publisher options): ``nameko.standalone.events.event_dispatcher``.
``publish`` -- ``body``, ``routing_key``, optional ``exchange`` and ``queue``
    (``{"name", "type", "durable", ...}`` / ``{"name", "routing_key",
    "durable", ...}``; declared before publishing), ``headers``,
    ``serializer`` (default json): a plain kombu publish.
``get`` -- ``queue``, optional ``timeout`` (seconds to wait for a message,
    default 0): one message taken off the queue (acked) as ``{"body",
    "headers", "content_type", "content_encoding", "routing_key",
    "exchange", "properties"}``, or ``null`` if none arrived.

Errors are ``{"class": <class the Nameko client raised>, "module": ...,
"exc_type": <remote type for RemoteError, else the class name>, "value":
..., "exc_path": "<module>.<class>", "exc_args": [...], "str": str(exc)}``.
"""

import argparse
import base64
import json
import logging
import socket
import sys
import time

from kombu import Connection, Exchange, Queue
from nameko.exceptions import safe_for_serialization
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy


def describe_error(exc):
    cls = type(exc)
    return {
        'class': cls.__name__,
        'module': cls.__module__,
        'exc_type': getattr(exc, 'exc_type', None) or cls.__name__,
        'value': getattr(exc, 'value', None) or str(exc),
        'exc_path': '{}.{}'.format(cls.__module__, cls.__name__),
        'exc_args': safe_for_serialization(exc.args),
        'str': str(exc),
    }


def jsonable(value):
    """Best effort for header tables (datetimes, bytes, ...)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {'bytes_b64': base64.b64encode(value).decode('ascii')}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class Driver(object):

    def __init__(self, config, timeout):
        self.config = config
        self.timeout = timeout
        self.client = ClusterRpcProxy(config, timeout=timeout)
        self.proxy = None

    def start(self):
        self.proxy = self.client.start()

    def stop(self):
        self.client.stop()

    def op_call(self, service, method, args=(), kwargs=None,
                context_data=None):
        if context_data is None:
            return getattr(self.proxy[service], method)(
                *args, **(kwargs or {}))
        with ClusterRpcProxy(self.config, context_data=context_data,
                             timeout=self.timeout) as proxy:
            return getattr(proxy[service], method)(*args, **(kwargs or {}))

    def op_call_async(self, calls):
        replies = [
            getattr(self.proxy[c['service']], c['method']).call_async(
                *c.get('args', ()), **c.get('kwargs', {}))
            for c in calls]
        results = [None] * len(replies)
        for index in reversed(range(len(replies))):
            try:
                results[index] = {'result': replies[index].result()}
            except Exception as exc:
                results[index] = {'error': describe_error(exc)}
        return results

    def op_dispatch(self, source, event_type, data, options=None):
        dispatch = event_dispatcher(self.config, **(options or {}))
        dispatch(source, event_type, data)

    def op_publish(self, body, routing_key, exchange=None, queue=None,
                   headers=None, serializer='json'):
        declare = []
        kombu_exchange = ''
        if exchange is not None:
            kombu_exchange = Exchange(**exchange)
            declare.append(kombu_exchange)
        if queue is not None:
            declare.append(Queue(exchange=kombu_exchange or None, **queue))
        with Connection(self.config['AMQP_URI']) as connection:
            producer = connection.Producer(serializer=serializer)
            producer.publish(
                body, exchange=kombu_exchange, routing_key=routing_key,
                headers=headers or {}, declare=declare, retry=True)

    def op_get(self, queue, timeout=0):
        with Connection(self.config['AMQP_URI']) as connection:
            channel = connection.default_channel
            message = channel.basic_get(queue=queue, no_ack=True)
            if message is None and timeout:
                message = self._wait_for_message(connection, queue, timeout)
            if message is None:
                return None
            return self._describe_message(message)

    def _wait_for_message(self, connection, queue, timeout):
        channel = connection.default_channel
        got = []

        def on_message(message):
            channel.basic_ack(message.delivery_tag)
            got.append(message)

        channel.basic_qos(0, 1, False)
        tag = channel.basic_consume(queue=queue, callback=on_message)
        deadline = time.monotonic() + timeout
        while not got:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                connection.drain_events(timeout=remaining)
            except socket.timeout:
                break
        channel.basic_cancel(tag)
        return got[0] if got else None

    @staticmethod
    def _describe_message(message):
        props = dict(message.properties)
        headers = props.pop('application_headers', None) or {}
        content_type = props.get('content_type')
        encoding = props.get('content_encoding') or 'utf-8'
        body = message.body  # py-amqp decodes it when it knows the encoding
        if content_type == 'application/json':
            if isinstance(body, bytes):
                body = body.decode(encoding)
            body = json.loads(body)
        elif isinstance(body, bytes):
            try:
                body = body.decode(encoding)
            except (UnicodeDecodeError, LookupError):
                body = {'bytes_b64': base64.b64encode(body).decode('ascii')}
        info = message.delivery_info
        return {
            'body': body,
            'headers': jsonable(headers),
            'content_type': content_type,
            'content_encoding': props.get('content_encoding'),
            'routing_key': info.get('routing_key'),
            'exchange': info.get('exchange'),
            'properties': jsonable(props),
        }


def respond(response):
    sys.stdout.write(json.dumps(response) + '\n')
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--amqp-uri', required=True)
    parser.add_argument('--timeout', type=float, default=10,
                        help='RPC reply timeout in seconds')
    parser.add_argument('--config', default='{}',
                        help='extra config keys, as a JSON object')
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format='%(asctime)s %(name)s %(levelname)s %(message)s')
    config = dict(json.loads(args.config), AMQP_URI=args.amqp_uri)

    driver = Driver(config, args.timeout)
    driver.start()
    sys.stdout.write('READY\n')
    sys.stdout.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            request_id = request.pop('id', None)
            op = request.pop('op')
            if op == 'stop':
                respond({'id': request_id, 'result': None})
                break
            try:
                handler = getattr(driver, 'op_' + op)
                response = {'id': request_id, 'result': handler(**request)}
            except Exception as exc:
                logging.getLogger('driver').info(
                    'op %s raised', op, exc_info=True)
                response = {'id': request_id, 'error': describe_error(exc)}
            respond(response)
    finally:
        driver.stop()


if __name__ == '__main__':
    main()
