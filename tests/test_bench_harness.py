"""``python -m bench`` measures every AMQP scenario end to end on RabbitMQ
(tiny counts, threadko and the raw pika floor), the websocket scenarios
on threadko (the shared load generator against it), and threadko with
metrics and tracing on beside threadko in rpc_seq and http; the Nameko
peers need their own virtualenv and are left to scripts/bench."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_harness():
    """bench/harness.py, without leaving the peers' directory on
    ``sys.path`` (it puts it there for its own imports)."""
    spec = importlib.util.spec_from_file_location(
        'bench_harness', os.path.join(REPO_ROOT, 'bench', 'harness.py'))
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def _quick(rabbit_config, output, *arguments):
    """``python -m bench --quick`` with ``arguments``; its results."""
    done = subprocess.run(
        [sys.executable, '-m', 'bench', '--quick', '--no-docs',
         '--uri', rabbit_config['AMQP_URI'], '--output', str(output)]
        + list(arguments),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(output.read_text())


def test_observed_calls_are_read_from_the_metrics_text():
    harness = _load_harness()
    text = (
        '# HELP threadko_entrypoint_calls_total Workers run\n'
        '# TYPE threadko_entrypoint_calls_total counter\n'
        'threadko_entrypoint_calls_total{service="bench_echo",'
        'entrypoint="rpc",method="echo",outcome="success"} 2200.0\n'
        'threadko_entrypoint_calls_total{service="bench_echo",'
        'entrypoint="rpc",method="echo",outcome="error"} 1.0\n'
        'threadko_entrypoint_calls_created{service="bench_echo",'
        'entrypoint="rpc",method="echo",outcome="success"} 1.7e9\n')

    assert harness.calls_counted(text) == 2201
    assert harness.calls_counted('# no metrics\n') is None
    assert harness.calls_counted(
        'threadko_http_requests_total{status="200"} 5.0\n') is None


@pytest.mark.rabbit
@pytest.mark.timeout(180)
def test_quick_run_records_every_scenario_and_target(rabbit_config, tmp_path):
    results = _quick(
        rabbit_config, tmp_path / 'results.json',
        '--targets', 'threadko,raw_pika',
        '--scenarios',
        'rpc_seq,rpc_par,rpc_scaleout,events,footprint,ws_rpc,ws_fanout',
        '--ws-subscribers', '40', '--ws-few', '4', '--ws-broadcasts', '2')

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


@pytest.mark.rabbit
@pytest.mark.timeout(180)
def test_quick_run_measures_threadko_observed_beside_threadko(
        rabbit_config, tmp_path):
    results = _quick(rabbit_config, tmp_path / 'results.json',
                     '--targets', 'threadko,threadko_observed',
                     '--scenarios', 'rpc_seq,http')

    assert results['errors'] == []
    assert results['machine']['opentelemetry_sdk']
    rpc_seq = results['scenarios']['rpc_seq']['targets']
    assert sorted(rpc_seq) == ['threadko', 'threadko_observed']
    plain, = rpc_seq['threadko']['runs']
    assert 'server_spans' not in plain and 'entrypoint_calls' not in plain
    observed, = rpc_seq['threadko_observed']['runs']
    assert observed['calls'] == 50 and observed['calls_per_s'] > 0
    made = 50 + 5  # and the warm-up calls (--quick: 5)
    # /metrics counted every call, and a span was exported for each, by
    # the service (SERVER) and by the client (CLIENT)
    assert observed['entrypoint_calls'] > made
    assert observed['server_span_kinds']['SERVER'] > made
    assert observed['client_span_kinds']['CLIENT'] > made

    http = results['scenarios']['http']['targets']
    observed, = http['threadko_observed']['runs']
    assert observed['requests_per_s'] > 0 and observed['errors'] == 0
    assert observed['entrypoint_calls'] >= observed['requests'] > 0
    assert observed['server_span_kinds']['SERVER'] >= observed['requests']
    assert 'client_spans' not in observed  # wrk is not traced
