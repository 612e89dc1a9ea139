"""OpenTelemetry tracing (config ``TRACING``) as an operator sees it: the
spans the SDK exports, on RabbitMQ and real HTTP.

The SDK's tracer provider is installed once per process
(:func:`tracing_support.collector`); each test gets the collector cleared
and waits for the spans it expects. The services are in
:mod:`traced_services`: ``gateway`` (HTTP) -> ``orders`` (RPC) ->
``stock`` (RPC), and ``orders`` dispatches ``order_placed`` to ``emails``.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from opentelemetry import trace

from threadko.exceptions import RemoteError, RpcTimeout, UnknownService
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

import tracing_support
from support import WAIT, child_env, http_fetch
from traced_services import (
    SECRET, Emails, Faulty, Gateway, Orders, Sockets, Stock, TickLog,
    Ticking, Vault,
)
from tracing_support import (
    children, everything_exported, exception_events, one, render,
)

HERE = os.path.dirname(os.path.abspath(__file__))
UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
HTTP_ROUTE = '/orders/<int:customer_id>'
HTTP_SPAN = 'POST ' + HTTP_ROUTE


def call_id_of(service, method):
    return re.compile(r'^{}\.{}\.{}$'.format(service, method, UUID))


@pytest.fixture
def spans():
    """The process's span collector, cleared."""
    return tracing_support.collector()


@pytest.fixture
def traced_config(rabbit_config, web_config):
    return dict(rabbit_config, TRACING=True, **web_config)


@pytest.fixture
def shop(runner_factory, traced_config, spans):
    Emails.sent.clear()
    runner = runner_factory(traced_config, Gateway, Orders, Stock, Emails)
    runner.start()
    return runner


def place_order(port, customer_id=7, item='teapot', headers=None):
    reply = http_fetch(port, 'POST', '/orders/{}'.format(customer_id),
                       body=item.encode(), headers=headers)
    assert reply.status == 200, reply
    assert json.loads(reply.body) == {
        'customer_id': customer_id, 'reserved': 'reserved ' + item}


def order_trace(spans):
    """The seven spans of one order, once all are exported."""
    records = spans.wait_for_trace(
        7, lambda record: record['name'] == HTTP_SPAN, 'an order\'s trace')
    assert len(records) == 7, render(records)
    return records


# -- one trace across services ------------------------------------------------

def test_http_rpc_rpc_and_event_make_one_trace(shop, spans, web_config_port):
    place_order(web_config_port)
    records = order_trace(spans)

    http_span = one(records, HTTP_SPAN, 'SERVER')
    place_call = one(records, 'orders/place', 'CLIENT')
    place = one(records, 'orders/place', 'SERVER')
    reserve_call = one(records, 'stock/reserve', 'CLIENT')
    reserve = one(records, 'stock/reserve', 'SERVER')
    publish = one(records, 'publish orders.events', 'PRODUCER')
    handle = one(records, 'process orders.events', 'CONSUMER')

    # the links: HTTP -> RPC -> RPC, and the event under its publish
    assert http_span['parent_id'] is None
    assert place_call['parent_id'] == http_span['span_id']
    assert place['parent_id'] == place_call['span_id']
    assert place['remote_parent']  # it came over RabbitMQ
    assert reserve_call['parent_id'] == place['span_id']
    assert reserve['parent_id'] == reserve_call['span_id']
    assert publish['parent_id'] == place['span_id']
    assert handle['parent_id'] == publish['span_id']
    assert all(record['status'] == 'UNSET' for record in records)

    # HTTP, per OpenTelemetry's conventions
    attributes = http_span['attributes']
    assert attributes['http.request.method'] == 'POST'
    assert attributes['http.route'] == HTTP_ROUTE
    assert attributes['http.response.status_code'] == 200
    assert attributes['url.path'] == '/orders/7'
    assert attributes['url.scheme'] == 'http'
    assert attributes['server.port'] == web_config_port
    assert attributes['client.address'] == '127.0.0.1'
    assert attributes['threadko.service'] == 'gateway'
    assert attributes['threadko.entrypoint.kind'] == 'http'
    gateway_call_id = attributes['threadko.call_id']
    assert call_id_of('gateway', 'place').match(gateway_call_id)
    assert attributes['threadko.call_id_stack'] == [gateway_call_id]

    # RPC: both ends name the method; the request's correlation id ties
    # them; the server knows the call id stack
    for record in (place_call, place):
        attributes = record['attributes']
        assert attributes['rpc.system'] == 'nameko'
        assert attributes['rpc.service'] == 'orders'
        assert attributes['rpc.method'] == 'place'
        assert attributes['messaging.system'] == 'rabbitmq'
        assert attributes['messaging.destination.name'] == 'nameko-rpc'
        assert attributes[
            'messaging.rabbitmq.destination.routing_key'] == 'orders.place'
    assert re.match(UUID, place_call['attributes'][
        'messaging.message.conversation_id'])
    assert place['attributes']['messaging.message.conversation_id'] == \
        place_call['attributes']['messaging.message.conversation_id']
    place_call_id = place['attributes']['threadko.call_id']
    assert call_id_of('orders', 'place').match(place_call_id)
    assert place['attributes']['threadko.call_id_stack'] == [
        gateway_call_id, place_call_id]
    assert place['attributes']['threadko.entrypoint.method'] == 'place'
    assert len(reserve['attributes']['threadko.call_id_stack']) == 3

    # the event: published to orders.events, processed from its queue
    attributes = publish['attributes']
    assert attributes['messaging.system'] == 'rabbitmq'
    assert attributes['messaging.operation.type'] == 'send'
    assert attributes['messaging.destination.name'] == 'orders.events'
    assert attributes[
        'messaging.rabbitmq.destination.routing_key'] == 'order_placed'
    attributes = handle['attributes']
    assert attributes['messaging.operation.type'] == 'process'
    assert attributes['messaging.destination.name'] == 'orders.events'
    assert attributes[
        'messaging.rabbitmq.destination.routing_key'] == 'order_placed'
    assert attributes['messaging.destination.subscription.name'] == \
        'evt-orders-order_placed--emails.on_order_placed'
    assert attributes['threadko.service'] == 'emails'
    assert attributes['threadko.entrypoint.kind'] == 'event_handler'
    assert attributes['threadko.call_id_stack'][:2] == [
        gateway_call_id, place_call_id]


def test_an_http_request_continues_the_trace_its_headers_carry(
        shop, spans, web_config_port):
    trace_id, parent_id = 'ab' * 16, 'cd' * 8
    place_order(web_config_port, headers={
        'traceparent': '00-{}-{}-01'.format(trace_id, parent_id),
        'tracestate': 'vendor=value', 'baggage': 'tenant=acme'})
    records = order_trace(spans)
    http_span = one(records, HTTP_SPAN)
    assert http_span['trace_id'] == trace_id
    assert http_span['parent_id'] == parent_id
    assert http_span['remote_parent']

    # the context went on in the event's AMQP headers, tracestate and
    # baggage too (threadko, like Nameko, also hands every header to the
    # worker as context data)
    [sent] = Emails.sent.wait_for(1)
    publish = one(records, 'publish orders.events')
    assert sent['data']['traceparent'] == '00-{}-{}-01'.format(
        trace_id, publish['span_id'])
    assert sent['data']['tracestate'] == 'vendor=value'
    assert sent['data']['baggage'] == 'tenant=acme'


def test_a_timer_starts_a_trace_of_its_own(
        runner_factory, traced_config, spans):
    TickLog.ticks.clear()
    runner_factory(traced_config, TickLog).start()
    runner_factory(traced_config, Ticking).start()  # ticks at once
    TickLog.ticks.wait_for(1)
    records = spans.wait_for_trace(
        3, lambda record: record['name'] == 'ticking.tick', 'the tick')
    tick = one(records, 'ticking.tick', 'INTERNAL')
    assert tick['parent_id'] is None
    assert tick['attributes']['threadko.entrypoint.kind'] == 'timer'
    publish = one(records, 'publish ticking.events', 'PRODUCER')
    assert publish['parent_id'] == tick['span_id']
    handled = one(records, 'process ticking.events', 'CONSUMER')
    assert handled['parent_id'] == publish['span_id']


# -- standalone clients -------------------------------------------------------

def test_standalone_rpc_client_starts_or_continues_a_trace(
        runner_factory, traced_config, spans):
    runner = runner_factory(traced_config, Stock)
    runner.start()
    tracer = trace.get_tracer('tests')
    with ClusterRpcProxy(traced_config) as proxy:
        assert proxy.stock.reserve('alone') == 'reserved alone'
        with tracer.start_as_current_span('nightly job') as job:
            assert proxy.stock.reserve('in a job') == 'reserved in a job'
    job_id = '{:016x}'.format(job.get_span_context().span_id)

    def both(records):
        pairs = [(call, children(records, call))
                 for call in records if call['kind'] == 'CLIENT']
        if len(pairs) == 2 and all(len(served) == 1 for _, served in pairs):
            return pairs
        return None

    pairs = spans.wait_for(both, 'two calls, each served')
    by_parent = {call['parent_id']: (call, served)
                 for call, served in pairs}
    # outside any span: a new trace; inside one: a child of it
    assert set(by_parent) == {None, job_id}
    for call, [served] in by_parent.values():
        assert call['name'] == served['name'] == 'stock/reserve'
        assert served['kind'] == 'SERVER'
        assert served['trace_id'] == call['trace_id']
    assert by_parent[job_id][0]['trace_id'] == '{:032x}'.format(
        job.get_span_context().trace_id)
    assert by_parent[None][0]['trace_id'] != by_parent[job_id][0][
        'trace_id']


def test_standalone_event_dispatcher_starts_or_continues_a_trace(
        runner_factory, traced_config, spans):
    Emails.sent.clear()
    runner = runner_factory(traced_config, Emails)
    runner.start()
    tracer = trace.get_tracer('tests')
    dispatch = event_dispatcher(traced_config)
    try:
        dispatch('orders', 'order_placed', {'n': 1})
        with tracer.start_as_current_span('import job') as job:
            dispatch('orders', 'order_placed', {'n': 2})
    finally:
        dispatch.close()
    Emails.sent.wait_for(2)
    job_id = '{:016x}'.format(job.get_span_context().span_id)

    def both(records):
        pairs = [(publish, children(records, publish))
                 for publish in records if publish['kind'] == 'PRODUCER']
        if len(pairs) == 2 and all(len(handled) == 1
                                   for _, handled in pairs):
            return pairs
        return None

    pairs = spans.wait_for(both, 'two events, each handled')
    by_parent = {publish['parent_id']: (publish, handled)
                 for publish, handled in pairs}
    assert set(by_parent) == {None, job_id}
    for publish, [handled] in by_parent.values():
        assert publish['name'] == 'publish orders.events'
        assert handled['name'] == 'process orders.events'
        assert handled['kind'] == 'CONSUMER'
        assert handled['trace_id'] == publish['trace_id']


# -- errors -------------------------------------------------------------------

@pytest.fixture
def faulty(runner_factory, traced_config, spans):
    Faulty.release.clear()
    Faulty.handled.clear()
    runner = runner_factory(traced_config, Faulty)
    runner.start()
    yield runner
    Faulty.release.set()


def served_by(spans, method, what):
    """The CLIENT span of a call of ``faulty.<method>`` and the SERVER
    span under it, once both are exported."""
    name = 'faulty/' + method

    def pair(records):
        for call in records:
            if call['name'] == name and call['kind'] == 'CLIENT':
                served = children(records, call)
                if served:
                    return call, served[0]
        return None

    return spans.wait_for(pair, what)


def test_an_expected_exception_is_recorded_without_error_status(
        faulty, traced_config, spans):
    with ClusterRpcProxy(traced_config) as proxy:
        with pytest.raises(RemoteError, match='not today'):
            proxy.faulty.refuse()
    call, served = served_by(spans, 'refuse', 'the refused call')

    # the service: part of its contract, like a 4xx
    assert served['status'] == 'UNSET'
    assert served['attributes']['error.type'] == 'traced_services.Refused'
    [event] = exception_events(served)
    assert event['exception.message'] == 'not today'
    assert 'Refused' in event['exception.type']
    assert 'Traceback' in event['exception.stacktrace']

    # the caller: the call failed
    assert call['status'] == 'ERROR'
    assert call['description'] == 'Refused: not today'
    assert call['attributes']['error.type'] == 'traced_services.Refused'
    assert exception_events(call) == [{
        'exception.type': 'traced_services.Refused',
        'exception.message': 'not today'}]


def test_an_unexpected_exception_is_an_error_at_both_ends(
        faulty, traced_config, spans):
    with ClusterRpcProxy(traced_config) as proxy:
        with pytest.raises(RemoteError, match='out of order'):
            proxy.faulty.fail()
    call, served = served_by(spans, 'fail', 'the failed call')
    assert served['status'] == 'ERROR'
    assert served['description'] == 'Broken: out of order'
    assert served['attributes']['error.type'] == 'traced_services.Broken'
    assert exception_events(served)[0]['exception.message'] == \
        'out of order'
    assert call['status'] == 'ERROR'
    assert call['attributes']['error.type'] == 'traced_services.Broken'


def test_a_timed_out_call_ends_its_span_with_the_timeout(
        faulty, traced_config, spans):
    with ClusterRpcProxy(traced_config, timeout=0.5) as proxy:
        with pytest.raises(RpcTimeout):
            proxy.faulty.slow()
        call = spans.wait_for(
            lambda records: [r for r in records if r['kind'] == 'CLIENT'],
            'the timed out call')[0]
        assert call['name'] == 'faulty/slow'
        assert call['status'] == 'ERROR'
        assert call['attributes']['error.type'] == \
            'threadko.exceptions.RpcTimeout'
        assert 'RpcTimeout' in exception_events(call)[0]['exception.type']

        # the late reply changes nothing: the span was exported once, as
        # it was; the client goes on
        Faulty.release.set()
        assert proxy.faulty.slow() is True
    calls = spans.wait_for(
        lambda records: [r for r in records if r['kind'] == 'CLIENT'][1:]
        and records, 'the second call')
    assert [r for r in calls if r['span_id'] == call['span_id']] == [call]


def test_a_call_to_an_unknown_service_ends_its_span(
        rabbit_config, spans):
    config = dict(rabbit_config, TRACING=True)
    with ClusterRpcProxy(config) as proxy:
        with pytest.raises(UnknownService):
            proxy.nobody.anything()
    [call] = spans.wait_for(lambda records: records, 'the failed call')
    assert call['name'] == 'nobody/anything'
    assert call['kind'] == 'CLIENT'
    assert call['status'] == 'ERROR'
    assert call['attributes']['error.type'] == \
        'threadko.exceptions.UnknownService'


def test_http_spans_take_their_status_from_the_response(
        faulty, spans, web_config_port):
    assert http_fetch(web_config_port, 'GET', '/refused').status == 400
    assert http_fetch(web_config_port, 'GET', '/broken').status == 500
    assert http_fetch(web_config_port, 'GET', '/nowhere').status == 404
    records = spans.wait_for(
        lambda records: records if len(records) >= 3 else None,
        'three requests')
    refused = one(records, 'GET /refused', 'SERVER')
    broken = one(records, 'GET /broken', 'SERVER')
    nowhere = one(records, 'GET', 'SERVER')  # no route: just the method

    assert refused['status'] == 'UNSET'  # an expected exception: a 400
    assert refused['attributes']['http.response.status_code'] == 400
    assert exception_events(refused)[0]['exception.message'] == \
        'not today'

    assert broken['status'] == 'ERROR'
    assert broken['attributes']['http.response.status_code'] == 500
    assert broken['attributes']['error.type'] == '500'
    assert exception_events(broken)[0]['exception.message'] == \
        'out of order'

    assert nowhere['status'] == 'UNSET'
    assert nowhere['attributes']['http.response.status_code'] == 404
    assert 'http.route' not in nowhere['attributes']
    assert 'threadko.service' not in nowhere['attributes']  # no worker


def test_a_failing_event_handler_is_an_error(
        faulty, traced_config, spans):
    dispatch = event_dispatcher(traced_config)
    try:
        dispatch('faulty_source', 'boom', {'n': 1})
    finally:
        dispatch.close()
    records = spans.wait_for(
        lambda records: records if len(records) >= 2 else None,
        'the publish and the failed handler')
    handled = one(records, 'process faulty_source.events', 'CONSUMER')
    assert handled['parent_id'] == one(
        records, 'publish faulty_source.events')['span_id']
    assert handled['status'] == 'ERROR'
    assert handled['attributes']['error.type'] == 'traced_services.Broken'


# -- secrets ------------------------------------------------------------------

@pytest.mark.parametrize('call_args', [True, False],
                         ids=['call-args-recorded', 'call-args-off'])
def test_a_sensitive_argument_reaches_no_exporter(
        runner_factory, traced_config, spans, web_config_port, call_args):
    Vault.rotated.clear()
    config = dict(traced_config, TRACING_CALL_ARGS=call_args)
    runner = runner_factory(config, Vault)
    runner.start()
    reply = http_fetch(
        web_config_port, 'POST', '/login',
        body=json.dumps({'username': 'ada', 'password': SECRET}).encode())
    assert reply.status == 200
    assert json.loads(reply.body) == {'user': 'ada', 'ok': True}
    assert Vault.rotated.wait_for(1) == ['ada']
    records = spans.wait_for_trace(
        5, lambda record: record['name'] == 'POST /login', 'the login')
    # HTTP server, RPC client and server, publish, event handler... all
    # of the request's spans, one trace
    assert {(r['name'], r['kind']) for r in records} >= {
        ('POST /login', 'SERVER'), ('vault/login', 'CLIENT'),
        ('vault/login', 'SERVER'), ('publish vault.events', 'PRODUCER'),
        ('process vault.events', 'CONSUMER')}, render(records)

    assert SECRET not in everything_exported(spans.records)

    login = one(records, 'vault/login', 'SERVER')
    rotated = one(records, 'process vault.events', 'CONSUMER')
    if call_args:
        assert json.loads(login['attributes']['threadko.call_args']) == {
            'username': 'ada', 'password': '********'}
        assert json.loads(rotated['attributes']['threadko.call_args']) == {
            'event': {'user': 'ada', 'password': '********'}}
        # the HTTP worker's request object is not an argument to record
        http_span = one(records, 'POST /login')
        assert json.loads(
            http_span['attributes']['threadko.call_args']) == {
                'request': None}
    else:
        assert not [r for r in records
                    if 'threadko.call_args' in r['attributes']]


# -- switched off -------------------------------------------------------------

def test_with_tracing_off_there_are_no_spans_and_no_trace_headers(
        runner_factory, rabbit_config, web_config, web_config_port, spans):
    Emails.sent.clear()
    runner = runner_factory(dict(rabbit_config, **web_config),
                            Gateway, Orders, Stock, Emails)
    runner.start()
    place_order(web_config_port)
    [sent] = Emails.sent.wait_for(1)
    assert 'traceparent' not in sent['data']
    runner.stop()  # every worker has finished
    assert not [r for r in spans.records
                if r['attributes'].get('threadko.service') in (
                    'gateway', 'orders', 'stock', 'emails')]


def run_python(code):
    result = subprocess.run(
        # traced_services imports tests/support.py, as the tests do
        [sys.executable, '-c', code],
        env=child_env(PYTHONPATH=os.path.dirname(HERE)), cwd=HERE,
        capture_output=True, text=True, timeout=WAIT * 3)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_opentelemetry_is_imported_only_once_tracing_is_on():
    output = run_python('''
import sys
import threadko, threadko.rpc, threadko.events, threadko.web.handlers
import threadko.standalone.rpc, threadko.standalone.events
from threadko.containers import ServiceContainer
from traced_services import Stock

def loaded():
    return sorted(m for m in sys.modules if m.startswith('opentelemetry'))

ServiceContainer(Stock, {'AMQP_URI': 'memory://'})
print(loaded())
ServiceContainer(Stock, {'AMQP_URI': 'memory://', 'TRACING': True})
print('opentelemetry.trace' in loaded())
''')
    assert output.split('\n')[:2] == ['[]', 'True']


def test_tracing_without_opentelemetry_is_a_configuration_error():
    output = run_python('''
import sys
sys.modules['opentelemetry'] = None  # as if not installed
from threadko.containers import ServiceContainer
from threadko.exceptions import ConfigurationError
from traced_services import Stock
try:
    ServiceContainer(Stock, {'AMQP_URI': 'memory://', 'TRACING': True})
except ConfigurationError as exc:
    print(exc)
''')
    assert 'TRACING needs opentelemetry.trace' in output
    assert 'pip install "threadko[tracing]"' in output


class BrokenPropagator:
    """A propagator that fails at everything."""

    fields = {'traceparent'}

    def inject(self, carrier, context=None, setter=None):
        raise RuntimeError('broken inject')

    def extract(self, carrier, context=None, getter=None):
        raise RuntimeError('broken extract')


def test_failing_tracing_never_fails_the_work(
        shop, spans, web_config_port, log_collector):
    from opentelemetry import propagate

    working = propagate.get_global_textmap()
    propagate.set_global_textmap(BrokenPropagator())
    try:
        place_order(web_config_port)
        [sent] = Emails.sent.wait_for(1)
    finally:
        propagate.set_global_textmap(working)
    assert sent['order'] == {'customer_id': 7, 'item': 'teapot'}
    warnings = [record.getMessage() for record in log_collector.records
                if record.name == 'threadko.observability.tracing']
    assert 'tracing failed in rpc_call; going on untraced' in warnings


def test_a_websocket_rpc_call_starts_a_trace(
        runner_factory, traced_config, spans, websocket):
    runner_factory(traced_config, Sockets, Stock).start()
    socket = websocket()
    assert socket.rpc('reserve', item='lamp') == 'reserved lamp'
    records = spans.wait_for_trace(
        3, lambda record: record['name'] == 'sockets/reserve', 'the call')
    served = one(records, 'sockets/reserve', 'SERVER')
    assert served['parent_id'] is None
    assert served['attributes']['rpc.method'] == 'reserve'
    assert served['attributes']['network.protocol.name'] == 'websocket'
    assert served['attributes']['threadko.entrypoint.kind'] == \
        'websocket_rpc'
    call = one(records, 'stock/reserve', 'CLIENT')
    assert call['parent_id'] == served['span_id']
