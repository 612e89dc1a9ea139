"""One trace across two processes: ``gateway`` and ``orders`` run here,
``stock`` and ``emails`` in a child process (``threadko run`` with an SDK
of its own, set up by :mod:`traced_child`, printing its spans). The trace
context crosses the process boundary in the AMQP headers of the RPC
request and of the event.
"""

import json
import os
import signal
import sys

import pytest

import tracing_support
from support import BROKER_WAIT, ChildProcess, child_env, http_fetch
from traced_services import Gateway, Orders
from tracing_support import one, render

HERE = os.path.dirname(os.path.abspath(__file__))
HTTP_SPAN = 'POST /orders/<int:customer_id>'


@pytest.fixture
def spans():
    return tracing_support.collector()


@pytest.fixture
def child(rabbit_config):
    """``stock`` and ``emails`` served by ``threadko run`` with tracing."""
    process = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run',
         '--broker', rabbit_config['AMQP_URI'], '--define', 'TRACING=true',
         'traced_child:Stock', 'traced_child:Emails'],
        # the services module imports tests/support.py, as the tests do
        HERE, child_env(PYTHONPATH=os.path.dirname(HERE)), stream='both',
        timeout=BROKER_WAIT)
    try:
        process.wait_for_line('running services')
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 0, process.output
    finally:
        process.close()


def exported_by(child, name):
    """The record of the child's first span called ``name``."""
    line = child.wait_for_line('SPAN {}\t'.format(name))
    return json.loads(line.split('\t', 1)[1])


def test_one_trace_across_two_processes(
        child, runner_factory, rabbit_config, web_config, web_config_port,
        spans):
    runner = runner_factory(
        dict(rabbit_config, TRACING=True, **web_config), Gateway, Orders)
    runner.start()
    reply = http_fetch(web_config_port, 'POST', '/orders/3', body=b'kettle')
    assert reply.status == 200
    assert json.loads(reply.body) == {
        'customer_id': 3, 'reserved': 'reserved kettle'}

    # here: the request, the call to orders, orders' worker, its call to
    # stock and its event
    here = spans.wait_for_trace(
        5, lambda record: record['name'] == HTTP_SPAN, 'this side')
    http_span = one(here, HTTP_SPAN, 'SERVER')
    place = one(here, 'orders/place', 'SERVER')
    reserve_call = one(here, 'stock/reserve', 'CLIENT')
    publish = one(here, 'publish orders.events', 'PRODUCER')

    # there: stock's worker and emails' handler, children of the spans
    # that sent them their messages, in the same trace
    reserve = exported_by(child, 'stock/reserve')
    handled = exported_by(child, 'process orders.events')
    shown = render(here + [reserve, handled])
    assert reserve['kind'] == 'SERVER', shown
    assert reserve['trace_id'] == http_span['trace_id'], shown
    assert reserve['parent_id'] == reserve_call['span_id'], shown
    assert reserve['remote_parent']
    assert handled['kind'] == 'CONSUMER', shown
    assert handled['trace_id'] == http_span['trace_id'], shown
    assert handled['parent_id'] == publish['span_id'], shown

    # exported by the other process's SDK, with the call id stack going on
    assert reserve['resource']['service.name'] == 'threadko-child'
    assert http_span['resource']['service.name'] != 'threadko-child'
    assert reserve['attributes']['threadko.call_id_stack'][:2] == [
        http_span['attributes']['threadko.call_id'],
        place['attributes']['threadko.call_id']]
    assert handled['attributes']['threadko.service'] == 'emails'
