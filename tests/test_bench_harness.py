"""``python -m bench`` measures every AMQP scenario end to end on RabbitMQ
(tiny counts, threadko and the raw pika floor), and the websocket scenarios
on threadko (the shared load generator against it); the Nameko peers need
their own virtualenv and are left to scripts/bench."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.rabbit, pytest.mark.timeout(180)]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_records_every_scenario_and_target(rabbit_config, tmp_path):
    output = tmp_path / 'results.json'
    done = subprocess.run(
        [sys.executable, '-m', 'bench', '--quick', '--no-docs',
         '--uri', rabbit_config['AMQP_URI'],
         '--targets', 'threadko,raw_pika',
         '--scenarios',
         'rpc_seq,rpc_par,rpc_scaleout,events,footprint,ws_rpc,ws_fanout',
         '--ws-subscribers', '40', '--ws-few', '4', '--ws-broadcasts', '2',
         '--output', str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr

    results = json.loads(output.read_text())
    assert results['errors'] == []
    assert results['machine']['rabbitmq']
    scenarios = results['scenarios']
    assert sorted(scenarios) == ['events', 'footprint', 'rpc_par',
                                 'rpc_scaleout', 'rpc_seq', 'ws_fanout',
                                 'ws_rpc']
    for name, metric in [('rpc_seq', 'calls_per_s'),
                         ('rpc_par', 'calls_per_s'),
                         ('events', 'events_per_s'),
                         ('footprint', 'startup_s')]:
        for target in ('threadko', 'raw_pika'):
            runs = scenarios[name]['targets'][target]['runs']
            assert len(runs) == 1 and runs[0][metric] > 0, (name, target)
    assert scenarios['rpc_seq']['targets']['threadko']['runs'][0][
        'calls'] == 50
    assert scenarios['events']['targets']['threadko']['runs'][0][
        'events'] == 100
    assert scenarios['footprint']['targets']['threadko']['runs'][0][
        'rss_mib'] > 1

    # scale-out: threadko with 1, 2 and 4 service processes (no raw pika)
    assert list(scenarios['rpc_scaleout']['targets']) == ['threadko']
    scaleout, = scenarios['rpc_scaleout']['targets']['threadko']['runs']
    for instances in (1, 2, 4):
        assert scaleout['calls_per_s_x{}'.format(instances)] > 0
        shares = scaleout['server_cpu_shares_x{}'.format(instances)]
        assert len(shares) == instances and min(shares) > 0
    assert scaleout['scaling'] > 0

    # websockets: threadko only (raw pika has no websocket server)
    assert list(scenarios['ws_rpc']['targets']) == ['threadko']
    ws_rpc, = scenarios['ws_rpc']['targets']['threadko']['runs']
    assert ws_rpc['calls_per_s'] > 0 and ws_rpc['connections'] == 32
    assert ws_rpc['p99_ms'] >= ws_rpc['p50_ms'] > 0
    fanout, = scenarios['ws_fanout']['targets']['threadko']['runs']
    assert (fanout['subscribers'], fanout['few']) == (40, 4)
    assert len(fanout['broadcasts']) == 2
    assert fanout['fanout_ms'] >= fanout['first_event_ms'] > 0
    # the worker pool is bounded: no thread per websocket
    assert fanout['threads_many'] == fanout['threads_few'] > 1
    assert fanout['rss_many_mib'] > 1
    assert results['options']['ws_subscribers'] == 40
