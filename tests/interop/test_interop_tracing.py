"""Tracing next to real Nameko 2.14.1 processes on RabbitMQ.

threadko with ``TRACING`` puts W3C trace context (``traceparent``, and
``tracestate``/``baggage`` when there are any) in the headers of every
request, event and message it sends. Nameko services receiving them must
work exactly as before: same results, same errors, same deliveries, same
call id stacks, nothing in their logs. One thing differs, and it is
Nameko's own rule: a Nameko 2 worker turns *every* message header into
context data (``nameko.`` stripped, other names kept), so its
``worker_ctx.data`` shows a ``traceparent`` key, which it forwards as
``nameko.traceparent`` on its own calls. threadko reads that forwarded
header when there is no plain one, so a trace goes on through a Nameko
service into the threadko services it calls.

And a threadko service called by Nameko (no trace context) starts a new
trace.
"""

import os
import re
import sys

import pytest

from threadko.events import EventDispatcher, event_handler
from threadko.exceptions import RemoteError
from threadko.messaging import Exchange, Publisher
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

from interop_support import STANDALONE_CALL_ID, Worker, call_id_of

sys.path.insert(0, os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'observability'))
import tracing_support  # noqa: E402
from tracing_support import children, one, render  # noqa: E402

WAIT = 10  # seconds any single call may take
NESTED = {'list': [1, 2.5, None, True, 'x'], 'deep': {'a': {'b': []}}}
MESSAGES_EXCHANGE = Exchange('interop_messages', type='direct', durable=True)


def is_traceparent_of(value, record):
    """Whether ``value`` is the ``traceparent`` of ``record``'s span (any
    trace flags: sampled, random...)."""
    return re.match(r'^00-{}-{}-[0-9a-f]{{2}}$'.format(
        record['trace_id'], record['span_id']), value) is not None


@pytest.fixture
def spans():
    return tracing_support.collector()


@pytest.fixture
def traced_config(rabbit_config):
    return dict(rabbit_config, TRACING=True)


def assert_untroubled(nameko, failed_workers=0):
    """The Nameko process is still running and has logged no error but
    those of ``failed_workers`` workers whose method raised."""
    assert nameko.proc.poll() is None, nameko.describe()
    log = nameko.log_path.read_text(errors='replace')
    errors = [line for line in log.splitlines() if ' ERROR ' in line]
    assert len(errors) == log.count('Traceback') == failed_workers, \
        nameko.describe()
    assert all('error handling worker' in line for line in errors), \
        nameko.describe()


def calls(proxy):
    """The same calls of nameko_echo, traced or not: their outcomes."""
    echoed = proxy.nameko_echo.echo(NESTED, key='v')
    context = proxy.nameko_echo.context()
    with pytest.raises(RemoteError) as raised:
        proxy.nameko_echo.raise_value_error('bad', 3)
    return echoed, context, (raised.value.exc_type, raised.value.value)


# -- threadko -> Nameko -------------------------------------------------------

def test_nameko_service_answers_traced_calls_as_untraced_ones(
        nameko_services, rabbit_config, traced_config, spans):
    nameko = nameko_services('nameko_echo')
    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as plain:
        untraced = calls(plain)
    with ClusterRpcProxy(traced_config, timeout=WAIT) as traced_proxy:
        traced = calls(traced_proxy)

    (echoed, context, error), (plain_echoed, plain_context, plain_error) = \
        traced, untraced
    assert echoed == plain_echoed == {'args': [NESTED],
                                      'kwargs': {'key': 'v'}}
    assert error == plain_error
    assert error[0] == 'ValueError'
    # the same call id stacks: the standalone client's id, then the worker
    for seen in (context, plain_context):
        proxy_id, own_id = seen['call_id_stack']
        assert STANDALONE_CALL_ID.match(proxy_id)
        assert own_id == seen['call_id']
        assert call_id_of('nameko_echo', 'context').match(own_id)
    assert_untroubled(nameko, failed_workers=2)  # raise_value_error

    records = spans.wait_for(
        lambda records: records if len(records) >= 3 else None,
        'the three traced calls')
    assert len(records) == 3, render(records)
    # Nameko's own rule: every header is context data; the traceparent it
    # got is the client span's
    context_call = one(records, 'nameko_echo/context', 'CLIENT')
    assert plain_context['data'] == {}
    assert list(context['data']) == ['traceparent']
    assert is_traceparent_of(context['data']['traceparent'], context_call)
    # each call a trace of its own, ended by the reply; a remote error
    # makes an error span
    assert all(r['parent_id'] is None for r in records)
    assert one(records, 'nameko_echo/echo')['status'] == 'UNSET'
    failed = one(records, 'nameko_echo/raise_value_error')
    assert failed['status'] == 'ERROR'
    assert failed['attributes']['error.type'] == 'ValueError'


class TracedSource:
    """Sends nameko_listener an event and a message from a traced
    worker."""

    name = 'threadko_source'

    dispatch = EventDispatcher()
    publish = Publisher(exchange=MESSAGES_EXCHANGE)
    worker = Worker()

    @rpc
    def send(self, data):
        self.dispatch('ping', data)
        self.publish(data, routing_key='nameko_consume')
        return list(self.worker.call_id_stack)


def test_nameko_handlers_handle_traced_events_and_messages(
        nameko_services, container_factory, traced_config, spans):
    nameko = nameko_services('nameko_listener')
    container = container_factory(TracedSource, traced_config)
    container.start()
    with ClusterRpcProxy(traced_config, timeout=WAIT) as client:
        stack = client.threadko_source.send(NESTED)
        events = client.nameko_listener.wait_for(3, WAIT, 'event')
        messages = client.nameko_listener.wait_for(1, WAIT, 'message')

    # the client's call, the worker, its two publishes (Nameko makes none)
    records = spans.wait_for_trace(
        4, lambda record: record['name'] == 'threadko_source/send',
        'the traced sends')
    send = one(records, 'threadko_source/send', 'SERVER')
    publish_event = one(records, 'publish threadko_source.events',
                        'PRODUCER')
    publish_message = one(records, 'publish interop_messages', 'PRODUCER')
    assert publish_event['parent_id'] == publish_message['parent_id'] == \
        send['span_id']

    # every handler got the data and the call id stack as without tracing;
    # the context data has the trace headers besides (Nameko's rule)
    assert sorted(record['handler'] for record in events) == [
        'on_ping_broadcast', 'on_ping_pool', 'on_ping_singleton']
    for record, publish in [(event, publish_event) for event in events] + [
            (messages[0], publish_message)]:
        assert record['body'] == NESTED
        assert record['call_id_stack'][:-1] == stack
        assert call_id_of('nameko_listener', record['handler']).match(
            record['call_id_stack'][-1])
        assert list(record['context_data']) == ['traceparent']
        assert is_traceparent_of(
            record['context_data']['traceparent'], publish)
    assert_untroubled(nameko)


# -- Nameko -> threadko -------------------------------------------------------

class ThreadkoEcho:
    name = 'threadko_echo'

    worker = Worker()
    nameko_echo = RpcProxy('nameko_echo')

    @rpc
    def echo(self, *args, **kwargs):
        return {'args': list(args), 'kwargs': kwargs}

    @rpc
    def call_nameko(self, method, *args, **kwargs):
        return getattr(self.nameko_echo, method)(*args, **kwargs)


def test_threadko_service_called_by_nameko_starts_a_new_trace(
        nameko_driver, container_factory, traced_config, spans):
    driver = nameko_driver(wait=False)
    container_factory(ThreadkoEcho, traced_config).start()
    driver.wait_ready()
    assert driver.call('threadko_echo', 'echo', [1], {'k': 'v'}) == {
        'args': [1], 'kwargs': {'k': 'v'}}

    [served] = spans.wait_for(lambda records: records, 'the served call')
    assert served['name'] == 'threadko_echo/echo'
    assert served['kind'] == 'SERVER'
    assert served['parent_id'] is None
    proxy_id, own_id = served['attributes']['threadko.call_id_stack']
    assert STANDALONE_CALL_ID.match(proxy_id)  # the Nameko client's
    assert own_id == served['attributes']['threadko.call_id']


def test_a_trace_goes_on_through_a_nameko_service(
        nameko_services, container_factory, traced_config, spans):
    nameko = nameko_services('nameko_echo', wait=False)
    container_factory(ThreadkoEcho, traced_config).start()
    nameko.wait_ready()
    # threadko client -> threadko_echo -> nameko_echo -> threadko_echo
    with ClusterRpcProxy(traced_config, timeout=WAIT) as client:
        outcome = client.threadko_echo.call_nameko(
            'call_threadko', 'echo', 'x')
    assert outcome['result'] == {'args': ['x'], 'kwargs': {}}

    records = spans.wait_for_trace(
        4, lambda record: record['name'] == 'threadko_echo/call_nameko',
        'the chain')
    assert len(records) == 4, render(records)
    first = one(records, 'threadko_echo/call_nameko', 'SERVER')
    [to_nameko] = children(records, first)
    assert (to_nameko['name'], to_nameko['kind']) == (
        'nameko_echo/call_threadko', 'CLIENT')
    # Nameko made no span; the worker it called is the child of the call
    # into Nameko
    last = one(records, 'threadko_echo/echo', 'SERVER')
    assert last['parent_id'] == to_nameko['span_id']
    assert last['trace_id'] == first['trace_id']
    # and the call id stack went through Nameko as ever
    assert call_id_of('nameko_echo', 'call_threadko').match(
        last['attributes']['threadko.call_id_stack'][-2])
    assert_untroubled(nameko)


def test_nameko_standalone_dispatcher_starts_a_trace_at_threadko(
        nameko_driver, container_factory, traced_config, spans):
    """The other direction of events: no trace context, a new trace."""
    received = []

    class Listener:
        name = 'threadko_listener'

        @event_handler('nameko_source', 'ping')
        def on_ping(self, data):
            received.append(data)

    container_factory(Listener, traced_config).start()
    driver = nameko_driver()
    driver.dispatch('nameko_source', 'ping', {'n': 1})
    [handled] = spans.wait_for(lambda records: records, 'the handled event')
    assert received == [{'n': 1}]
    assert handled['name'] == 'process nameko_source.events'
    assert handled['kind'] == 'CONSUMER'
    assert handled['parent_id'] is None


def test_standalone_dispatch_to_nameko_is_unaffected(
        nameko_services, traced_config, spans):
    nameko = nameko_services('nameko_listener')
    dispatch = event_dispatcher(traced_config)
    try:
        dispatch('threadko_source', 'ping', {'n': 2})
    finally:
        dispatch.close()
    with ClusterRpcProxy(traced_config, timeout=WAIT) as client:
        events = client.nameko_listener.wait_for(3, WAIT, 'event')
    [publish] = spans.wait_for(
        lambda records: [r for r in records if r['kind'] == 'PRODUCER'],
        'the publish')
    assert publish['parent_id'] is None
    for record in events:
        assert record['body'] == {'n': 2}
        assert list(record['context_data']) == ['traceparent']
        assert is_traceparent_of(
            record['context_data']['traceparent'], publish)
        assert len(record['call_id_stack']) == 1
    assert_untroubled(nameko)
