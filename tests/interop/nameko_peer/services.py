"""Nameko 2.14 services for the threadko interoperability tests.

Run by ``serve.py`` with the Nameko virtualenv's python (never imports
threadko). Each service is picked by its name from :data:`SERVICES`.

``nameko_echo`` -- the RPC peer
    ``echo(*args, **kwargs)`` returns ``{"args": [...], "kwargs": {...}}``;
    ``raise_value_error(*args)`` raises ``ValueError(*args)``;
    ``unicode(text)`` returns ``{"received": text, "length": len(text),
    "sent": UNICODE_SAMPLE}``;
    ``context()`` returns the worker's ``{"data": <context data without the
    call stack>, "call_id": ..., "call_id_stack": [...]}``;
    ``call_threadko(method, *args, **kwargs)`` calls
    ``threadko_echo.<method>`` through an ``RpcProxy`` and returns
    ``{"call_id_stack": <this worker's stack>, "result": <its result>}``;
    ``wait_for_release(tag, timeout=10)`` blocks until a ``release(tag)``
    worker has sent its reply (a gate opened in ``worker_teardown``), then
    returns ``{"released": tag}``; ``release(tag)`` returns ``tag``.

``echo_svc`` -- the service a threadko service replaces on a live broker
    ``echo(value)`` returns ``{"impl": "nameko", "value": value}``.

``nameko_source`` -- an event source and publisher
    ``dispatch(event_type, data)`` dispatches an event from
    ``nameko_source`` (exchange ``nameko_source.events``) and returns the
    worker's call id stack; ``publish(body, routing_key="nameko_consume",
    headers=None)`` publishes with a Nameko ``Publisher`` to the direct
    exchange ``interop_messages``, also returning the call id stack.

``nameko_listener`` -- records what it receives from threadko
    Handlers of event type ``ping`` from source ``threadko_source``: one
    ``SERVICE_POOL`` (``on_ping_pool``), one ``BROADCAST`` with the stable
    identifier ``nameko-peer`` and reliable delivery
    (``on_ping_broadcast``), one ``SINGLETON`` (``on_ping_singleton``); and
    an ``@consume`` of queue ``nameko_consume`` (bound to the direct
    exchange ``interop_messages`` with key ``nameko_consume``). Each
    delivery is recorded as ``{"kind": "event" | "message", "handler":
    <method name>, "body": <event data or message body>, "context_data":
    <worker context data, i.e. the decoded headers>, "call_id_stack":
    [...]}``.
    ``received(kind=None, handler=None)`` returns the records (of that
    kind, of that handler method) so far; ``wait_for(n, timeout=5,
    kind=None, handler=None)`` blocks until at least ``n`` such records
    arrived or ``timeout`` seconds passed, and returns them. (Under
    ``max_workers: 1`` a blocking ``wait_for`` holds the only worker slot,
    so no handler runs meanwhile: poll ``received`` instead.)
"""

from collections import defaultdict

import eventlet
from eventlet.event import Event
from kombu import Exchange, Queue
from nameko.events import (
    BROADCAST, SERVICE_POOL, SINGLETON, EventDispatcher, EventHandler,
)
from nameko.extensions import DependencyProvider
from nameko.messaging import Publisher, consume
from nameko.rpc import RpcProxy, rpc

#: the string ``unicode()`` sends back: accents, CJK, an emoji (astral plane)
UNICODE_SAMPLE = u'Gr\u00fc\u00dfe, \u4e16\u754c \U0001F40D \u00e9\u00e8'
#: the threadko service ``nameko_echo.call_threadko`` calls
THREADKO_ECHO = 'threadko_echo'
#: the event source whose ``ping`` events nameko_listener handles
THREADKO_SOURCE = 'threadko_source'
BROADCAST_ID = 'nameko-peer'

MESSAGES_EXCHANGE = Exchange('interop_messages', type='direct', durable=True)
CONSUME_QUEUE = Queue(
    'nameko_consume', exchange=MESSAGES_EXCHANGE, routing_key='nameko_consume')


class Worker(DependencyProvider):
    """Injects the worker context itself."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


def describe(worker_ctx):
    return {
        'data': dict(worker_ctx.data),
        'call_id': worker_ctx.call_id,
        'call_id_stack': list(worker_ctx.call_id_stack),
    }


class Gates(DependencyProvider):
    """``self.gates.wait(tag, timeout)`` blocks until a worker that called
    ``self.gates.open_after_reply(tag)`` has finished, i.e. after its RPC
    reply was published (teardown runs after the reply)."""

    def setup(self):
        self.events = defaultdict(Event)
        self.to_open = defaultdict(list)

    def worker_teardown(self, worker_ctx):
        for tag in self.to_open.pop(worker_ctx, ()):
            if not self.events[tag].ready():
                self.events[tag].send(True)

    def get_dependency(self, worker_ctx):
        gates = self

        class Handle(object):
            def wait(self, tag, timeout):
                with eventlet.Timeout(timeout, False):
                    gates.events[tag].wait()
                    return True
                return False

            def open_after_reply(self, tag):
                gates.to_open[worker_ctx].append(tag)

        return Handle()


class NamekoEcho(object):
    name = 'nameko_echo'

    worker = Worker()
    gates = Gates()
    threadko_echo = RpcProxy(THREADKO_ECHO)

    @rpc
    def echo(self, *args, **kwargs):
        return {'args': list(args), 'kwargs': kwargs}

    @rpc
    def raise_value_error(self, *args):
        raise ValueError(*args)

    @rpc
    def unicode(self, text):
        return {'received': text, 'length': len(text), 'sent': UNICODE_SAMPLE}

    @rpc
    def context(self):
        return describe(self.worker)

    @rpc
    def call_threadko(self, method, *args, **kwargs):
        result = getattr(self.threadko_echo, method)(*args, **kwargs)
        return {'call_id_stack': list(self.worker.call_id_stack),
                'result': result}

    @rpc
    def wait_for_release(self, tag, timeout=10):
        if not self.gates.wait(tag, timeout):
            raise RuntimeError('gate {!r} was not opened'.format(tag))
        return {'released': tag}

    @rpc
    def release(self, tag):
        self.gates.open_after_reply(tag)
        return tag


class EchoSvc(object):
    name = 'echo_svc'

    @rpc
    def echo(self, value):
        return {'impl': 'nameko', 'value': value}


class NamekoSource(object):
    name = 'nameko_source'

    worker = Worker()
    dispatcher = EventDispatcher()
    publisher = Publisher(exchange=MESSAGES_EXCHANGE)

    @rpc
    def dispatch(self, event_type, data):
        self.dispatcher(event_type, data)
        return list(self.worker.call_id_stack)

    @rpc
    def publish(self, body, routing_key='nameko_consume', headers=None):
        self.publisher(body, routing_key=routing_key, headers=headers or {})
        return list(self.worker.call_id_stack)


class Journal(object):
    """Records that ``wait_for`` can block on (eventlet Event, no
    polling)."""

    def __init__(self):
        self.items = []
        self._changed = Event()

    def add(self, item):
        self.items.append(item)
        changed, self._changed = self._changed, Event()
        changed.send(True)

    def select(self, kind=None, handler=None):
        return [item for item in self.items
                if (kind is None or item['kind'] == kind)
                and (handler is None or item['handler'] == handler)]

    def wait_for(self, count, timeout, kind=None, handler=None):
        with eventlet.Timeout(timeout, False):
            while len(self.select(kind, handler)) < count:
                self._changed.wait()
        return self.select(kind, handler)


JOURNAL = Journal()


class StableBroadcastHandler(EventHandler):
    """A BROADCAST handler whose queue survives restarts (needed for
    reliable delivery)."""

    @property
    def broadcast_identifier(self):
        return BROADCAST_ID


def record(kind, worker_ctx, body):
    JOURNAL.add({
        'kind': kind,
        'handler': worker_ctx.entrypoint.method_name,
        'body': body,
        'context_data': dict(worker_ctx.data),
        'call_id_stack': list(worker_ctx.call_id_stack),
    })


class NamekoListener(object):
    name = 'nameko_listener'

    worker = Worker()

    @EventHandler.decorator(THREADKO_SOURCE, 'ping', handler_type=SERVICE_POOL)
    def on_ping_pool(self, data):
        record('event', self.worker, data)

    @StableBroadcastHandler.decorator(
        THREADKO_SOURCE, 'ping', handler_type=BROADCAST,
        reliable_delivery=True)
    def on_ping_broadcast(self, data):
        record('event', self.worker, data)

    @EventHandler.decorator(THREADKO_SOURCE, 'ping', handler_type=SINGLETON)
    def on_ping_singleton(self, data):
        record('event', self.worker, data)

    @consume(CONSUME_QUEUE)
    def on_message(self, body):
        record('message', self.worker, body)

    @rpc
    def received(self, kind=None, handler=None):
        return JOURNAL.select(kind, handler)

    @rpc
    def wait_for(self, n, timeout=5, kind=None, handler=None):
        return JOURNAL.wait_for(n, timeout, kind, handler)


SERVICES = {
    cls.name: cls
    for cls in (NamekoEcho, EchoSvc, NamekoSource, NamekoListener)
}
