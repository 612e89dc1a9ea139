"""Health probes and broker metrics of a real ``threadko run`` process with
``METRICS_ADDRESS`` set, as an orchestrator sees them: not ready while the
broker is down (and live: the process recovers by itself), ready again once
it reconnected; not ready during a graceful stop, until the server goes
with the process."""

import json
import signal

import pytest

from support import WAIT, http_fetch, poll

from threadko.standalone.events import event_dispatcher
from threadko.testing.utils import find_free_port

SERVICES = '''
import os
import threading

from threadko.events import event_handler
from threadko.rpc import rpc


class Probed:
    name = 'probed'

    @rpc
    def ping(self):
        return 'pong'

    @event_handler('probes', 'hold')
    def hold(self, release_path):
        os.write(2, b'holding\\n')
        # the test creates the file when the worker may finish
        while not os.path.exists(release_path):
            threading.Event().wait(0.05)
'''

RECONNECT_WITHIN = 30  # seconds, with the consumer's back-off


def probe(port, which):
    reply = http_fetch(port, 'GET', '/health/' + which)
    return reply.status, json.loads(reply.body)


def consumer_metrics(port):
    from prometheus_client.parser import text_string_to_metric_families

    text = http_fetch(port, 'GET', '/metrics').text
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get('service') == 'probed'
            and sample.labels.get('connection') == 'consumer'}


@pytest.fixture
def probed(service_process):
    """A ``threadko run --metrics ADDRESS --tracing`` process of the Probed
    service (no OpenTelemetry SDK: spans go nowhere), and the port of its
    metrics and health probes."""
    port = find_free_port()
    process = service_process(
        SERVICES, 'services:Probed',
        args=('--metrics', '127.0.0.1:{}'.format(port), '--tracing'))
    return process, port


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_probes_across_a_broker_outage(probed, rabbitmqctl):
    _, port = probed
    assert probe(port, 'ready') == (
        200, {'status': 'ready', 'services': {'probed': 'running'}})
    assert consumer_metrics(port) == {
        'threadko_broker_connection_up': 1,
        'threadko_broker_reconnects_total': 0}

    rabbitmqctl.stop_app()
    poll(lambda: probe(port, 'ready')[0] == 503, 'not ready', timeout=WAIT)
    assert probe(port, 'ready') == (
        503, {'status': 'not ready',
              'services': {'probed': 'reconnecting'}})
    assert probe(port, 'live') == (
        200, {'status': 'live', 'services': {'probed': 'reconnecting'}})
    assert consumer_metrics(port)['threadko_broker_connection_up'] == 0

    rabbitmqctl.start_app()
    poll(lambda: probe(port, 'ready')[0] == 200, 'ready again',
         timeout=RECONNECT_WITHIN)
    assert probe(port, 'ready') == (
        200, {'status': 'ready', 'services': {'probed': 'running'}})
    assert consumer_metrics(port) == {
        'threadko_broker_connection_up': 1,
        'threadko_broker_reconnects_total': 1}


def test_probes_during_a_graceful_stop(probed, rabbit_config, tmp_path):
    process, port = probed
    release = tmp_path / 'release'
    event_dispatcher(rabbit_config)('probes', 'hold', str(release))
    process.wait_for_line('holding')

    process.send_signal(signal.SIGTERM)
    process.wait_for_line('stopping services gracefully')
    poll(lambda: probe(port, 'ready')[0] == 503, 'not ready')
    # the worker holds the stop: the server answers meanwhile
    assert probe(port, 'ready') == (
        503, {'status': 'not ready', 'services': {'probed': 'stopping'}})
    assert probe(port, 'live') == (
        200, {'status': 'live', 'services': {'probed': 'stopping'}})

    release.touch()
    assert process.wait() == 0
    with pytest.raises(ConnectionRefusedError):
        http_fetch(port, 'GET', '/health/live')
