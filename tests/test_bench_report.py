"""bench/report.py turns a results file of scripts/bench into the page
docs/benchmarks.md and its chart: the issue's targets checked against the
medians, one table per scenario, "n/a" where something was not measured."""

import copy
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, 'bench', 'sample-results.json')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _load_report():
    spec = importlib.util.spec_from_file_location(
        'bench_report', os.path.join(ROOT, 'bench', 'report.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


@pytest.fixture
def results():
    with open(SAMPLE, encoding='utf-8') as file:
        return json.load(file)


def _target_row(page, label):
    rows = [line for line in page.splitlines()
            if line.startswith('| ' + label + ' |')]
    assert len(rows) == 1, (label, rows)
    return [cell.strip() for cell in rows[0].strip('|').split(' | ')]


def _checked(results, scenario, against, metric=None):
    for row in report.check_targets(results):
        if (row['scenario'], row['against']) == (scenario, against) and (
                metric is None or row['metric'] == metric):
            return row
    raise AssertionError('no target {} / {}'.format(scenario, against))


def test_targets_are_checked_against_the_medians_of_the_runs(results):
    rpc_seq = _checked(results, 'rpc_seq', 'nameko')
    assert rpc_seq['value'] == 1012.4  # median of 1012.4, 1087.9, 968.2
    assert rpc_seq['reference'] == 612.3
    assert rpc_seq['ratio'] == pytest.approx(1012.4 / 612.3)
    assert rpc_seq['met'] is True

    assert _checked(results, 'events', 'nameko')['met'] is False
    assert _checked(results, 'http', 'waitress')['met'] is False
    p99 = _checked(results, 'http', 'nameko', 'p99_ms')
    assert p99['direction'] == '<='
    assert p99['reference'] == pytest.approx((61.2 + 58.7) / 2)  # two runs
    assert p99['met'] is True
    assert len(report.check_targets(results)) == len(report.TARGETS)


def test_blocking_db_target_is_a_share_of_max_workers(results):
    assert _checked(results, 'blocking_db_mysql',
                    'option:max_workers')['met'] is True

    results['options']['max_workers'] = 20
    row = _checked(results, 'blocking_db_mysql', 'option:max_workers')
    assert row['ratio'] == pytest.approx(9.61 / 20)
    assert row['met'] is False


def test_websocket_targets_rpc_fanout_and_flat_threads(results):
    rpc = _checked(results, 'ws_rpc', 'nameko')
    assert rpc['value'] == 2674.4  # median of 3265.7, 1758.1, 2674.4
    assert rpc['reference'] == 2809.6
    assert (rpc['required'], rpc['direction']) == (2.0, '>=')
    assert rpc['met'] is False

    fanout = _checked(results, 'ws_fanout', 'nameko')
    assert (fanout['metric'], fanout['direction']) == ('fanout_ms', '<=')
    assert fanout['ratio'] == pytest.approx(74.5 / 45.9)
    assert fanout['met'] is False

    # flat: threadko's threads with 2,000 websockets over its own with 10
    flat = _checked(results, 'ws_fanout', 'threadko')
    assert (flat['metric'], flat['against_metric']) == (
        'threads_many', 'threads_few')
    assert (flat['value'], flat['reference'], flat['met']) == (25, 25, True)
    runs = results['scenarios']['ws_fanout']['targets']['threadko']['runs']
    for run in runs:
        run['threads_many'] = 35  # ten threads more with more sockets
    assert _checked(results, 'ws_fanout', 'threadko')['met'] is False


def test_the_websocket_rows_and_tables(results):
    page = report.markdown(results)

    assert _target_row(page, '`ws_rpc` calls/s: threadko / Nameko')[2:] == [
        '0.95×', '≥ 2×', '❌']
    assert _target_row(page, '`ws_fanout` fan-out ms: threadko / Nameko')[
        2:] == ['1.62×', '≤ 1×', '❌']
    assert _target_row(
        page, '`ws_fanout` threadko: threads (all) / threads (few)') == [
        '`ws_fanout` threadko: threads (all) / threads (few)',
        'threads (all) 25 · threads (few) 25', '1.00×', '≤ 1×', '✅']
    fanout = page.split('### Websocket fan-out (`ws_fanout`)')[1]
    assert '| threadko | 3 | 74.5 | 9.10 | 25 | 25 | 37.1 | 56.2 | 1.62× |' \
        in fanout
    assert '| Nameko | 3 | 45.9 | 1.10 | 1 | 1 | 50.3 | 126 | — |' in fanout
    assert 'few: 10 subscribed websockets; all: 2000.' in fanout
    assert '**ws_fanout.**' in page.split('## How it was measured')[1]


def _scaleout_run(calls, server_cpu, client_cpu):
    """An rpc_scaleout run: calls/s and CPU shares with 1, 2 and 4
    service processes."""
    run = {'in_flight': 64, 'scaling': calls[2] / calls[0]}
    for instances, *values in zip((1, 2, 4), calls, server_cpu, client_cpu):
        for name, value in zip(('calls_per_s', 'server_cpu_share',
                                'client_cpu_share'), values):
            run['{}_x{}'.format(name, instances)] = value
    return run


def test_the_scale_out_table_and_panel(results, tmp_path):
    results['options']['scaleout_in_flight'] = 64
    results['scenarios']['rpc_scaleout'] = {'targets': {
        'threadko': {'runs': [
            _scaleout_run((1400.0, 2200.0, 2300.0), (0.9, 0.6, 0.3),
                          (0.8, 0.95, 1.0)),
            _scaleout_run((1500.0, 2100.0, 2400.0), (0.95, 0.55, 0.3),
                          (0.8, 0.9, 1.0)),
            _scaleout_run((1300.0, 2000.0, 2200.0), (0.85, 0.5, 0.25),
                          (0.7, 0.9, 0.9))]},
        'nameko': {'runs': [
            _scaleout_run((400.0, 600.0, 800.0), (1.0, 0.9, 0.6),
                          (0.5, 0.7, 0.9))]}}}

    page = report.markdown(results)

    section = page.split('### RPC, scale-out over service processes '
                         '(`rpc_scaleout`)')[1].split('###')[0]
    assert ('| target | runs | calls/s \u00d71 | calls/s \u00d72 | '
            'calls/s \u00d74 | \u00d74 / \u00d71 | CPU/process \u00d71 |'
            ) in section
    # medians per column: the scaling is the median of the runs' ratios
    assert ('| threadko | 3 | 1,400 | 2,100 | 2,300 | 1.64 | 0.90 | 0.55 '
            '| 0.30 | 0.80 | 0.90 | 1.00 | 2.88\u00d7 |') in section
    assert ('| Nameko | 1 | 400 | 600 | 800 | 2.00 | 1.00 | 0.90 | 0.60 '
            '| 0.50 | 0.70 | 0.90 | \u2014 |') in section
    assert '64 calls in flight' in section
    assert '**rpc_scaleout.**' in page.split('## How it was measured')[1]

    pytest.importorskip('matplotlib')
    report.chart(results, tmp_path / 'chart.png')
    assert (tmp_path / 'chart.png').read_bytes().startswith(PNG_SIGNATURE)


def test_the_targets_table_marks_what_is_met_and_what_is_not(results):
    page = report.markdown(results)

    assert _target_row(page, '`rpc_seq` calls/s: threadko / Nameko') == [
        '`rpc_seq` calls/s: threadko / Nameko', 'threadko 1,012 · Nameko 612',
        '1.65×', '≥ 1.5×', '✅']
    events = _target_row(page, '`events` events/s: threadko / Nameko')
    assert events[2:] == ['2.82×', '≥ 3×', '❌']
    http = _target_row(page, '`http` req/s: threadko / bare waitress')
    assert http[2:] == ['0.79×', '≥ 0.9×', '❌']
    p99 = _target_row(page, '`http` p99 ms: threadko / Nameko')
    assert p99[2:] == ['0.78×', '≤ 1×', '✅']
    assert '11 of 18 targets met.' in page


def test_observability_overhead_targets_are_10_percent(results):
    rows = [row for row in report.check_targets(results)
            if row['target'] == 'threadko_observed']
    assert [(row['scenario'], row['metric'], row['against'],
             row['direction'], row['required'], row['met'])
            for row in rows] == [
        ('rpc_seq', 'calls_per_s', 'threadko', '>=', 0.9, True),
        ('rpc_seq', 'p50_ms', 'threadko', '<=', 1.1, True),
        ('http', 'requests_per_s', 'threadko', '>=', 0.9, False),
        ('http', 'p50_ms', 'threadko', '<=', 1.1, False)]
    # medians of 941.0, 1002.6, 905.3 and of 1012.4, 1087.9, 968.2
    assert rows[0]['ratio'] == pytest.approx(941.0 / 1012.4)
    assert rows[2]['ratio'] == pytest.approx(1702.3 / 1939.2)

    page = report.markdown(results)

    assert _target_row(
        page, '`rpc_seq` calls/s: threadko observed / threadko') == [
        '`rpc_seq` calls/s: threadko observed / threadko',
        'threadko observed 941 \u00b7 threadko 1,012', '0.93\u00d7',
        '\u2265 0.9\u00d7', '\u2705']
    assert _target_row(page, '`http` p50 ms: threadko observed / threadko')[
        2:] == ['1.13\u00d7', '\u2264 1.1\u00d7', '\u274c']


def test_the_overhead_table_and_its_proof(results):
    page = report.markdown(results)

    overhead = page.split('### Overhead of metrics and tracing '
                          '(`threadko_observed`)')[1].split('###')[0]
    assert '| `rpc_seq` | calls/s | 1,012 | 941 | 0.93\u00d7 | ' \
        '\u22127.1% |' in overhead
    assert '| `rpc_seq` | p50 ms \u2193 | 0.92 | 0.99 | 1.08\u00d7 | ' \
        '+7.6% |' in overhead
    assert '| `http` | req/s | 1,939 | 1,702 | 0.88\u00d7 | ' \
        '\u221212.2% |' in overhead
    # the observed server counted every call and exported a span each
    assert '| `rpc_seq` | 3 | 2,201 | 2,201 | 2,201 |' in overhead
    assert '| `http` | 3 | 10,240 | 10,240 | \u2014 |' in overhead
    # the observed target is a row of both scenarios' tables
    rpc_seq = page.split('### RPC, sequential calls (`rpc_seq`)')[1]
    assert '| threadko observed | 3 | 941 | 0.99 | 2.45 |' in (
        rpc_seq.split('###')[0])
    assert 'OpenTelemetry SDK 1.45.2' in page
    assert '**threadko observed.**' in page.split(
        '## How it was measured')[1]

    # not run: every cell says so, and the targets are n/a
    for key in ('rpc_seq', 'http'):
        del results['scenarios'][key]['targets']['threadko_observed']
    page = report.markdown(results)
    assert '| `http` | req/s | 1,939 | n/a | n/a | n/a |' in page
    assert '| threadko observed | not measured |' in page
    assert _target_row(page, '`http` req/s: threadko observed / threadko')[
        -1] == 'n/a (not measured)'


def test_the_page_has_its_sections_in_order(results):
    page = report.markdown(results)

    marks = ['# Benchmarks', 'Generated by `scripts/bench` on 2026-11-23',
             'python -m bench.report <json>', 'AMD EPYC 7B13',
             '## Targets', '### RPC, sequential calls (`rpc_seq`)',
             '### Footprint (`footprint`)',
             '### Overhead of metrics and tracing',
             '![Benchmark medians per scenario](_static/benchmarks.png)',
             '## How it was measured']
    positions = [page.index(mark) for mark in marks]
    assert positions == sorted(positions)
    assert '| threadko | 3 | 1,939 | 14.3 | 46.6 | 0 | 0.79× | 1.58× |' in (
        page)
    assert '| Nameko | 2 | 1,225 |' in page  # a failed run is left out
    assert 'wrk: 37 socket errors' in page


def test_the_page_links_nothing_outside_docs(results):
    """The page is part of the Sphinx docs, which fail on a link to a file
    outside docs/; the committed page must be what the generator writes."""
    page = report.markdown(results)

    assert '](../' not in page
    assert '`bench/README.md` in the repository' in page
    with open(report.DEFAULT_MD, encoding='utf-8') as committed:
        assert '](../' not in committed.read()


def test_a_missing_scenario_or_target_is_not_measured(results):
    del results['scenarios']['events']
    results['scenarios']['rpc_par']['targets']['raw_pika']['runs'] = []
    del results['scenarios']['footprint']['targets']['nameko']

    page = report.markdown(results)

    events = _target_row(page, '`events` events/s: threadko / Nameko')
    assert events[1:] == ['threadko n/a · Nameko n/a', 'n/a', '≥ 3×',
                          'n/a (not measured)']
    rpc_par = _target_row(page, '`rpc_par` calls/s: threadko / raw pika')
    assert rpc_par[-1] == 'n/a (not measured)'
    assert _checked(results, 'events', 'nameko')['met'] is None
    events_section = page.split('### Events (`events`)')[1]
    assert events_section.split('###')[0].strip() == (
        'Not measured in this run.')
    assert '| raw pika | not measured | n/a | — | n/a |' in page
    assert '| Nameko | not measured | n/a | n/a |' in page


def test_an_empty_results_file_still_renders():
    page = report.markdown({})

    assert '0 of 18 targets met.' in page
    assert page.count('Not measured in this run.') == len(report.SCENARIOS)
    overhead = page.split('### Overhead of metrics and tracing')[1]
    assert '| `rpc_seq` | calls/s | n/a | n/a | n/a | n/a |' in overhead
    assert '| `http` | not measured | n/a | n/a | \u2014 |' in overhead


def test_render_writes_the_page_and_a_deterministic_png(results, tmp_path):
    pytest.importorskip('matplotlib')
    md_path = tmp_path / 'docs' / 'benchmarks.md'
    png_path = tmp_path / 'docs' / '_static' / 'benchmarks.png'

    report.render(results, md_path, png_path)
    first = png_path.read_bytes()
    report.render(copy.deepcopy(results), md_path, png_path)

    assert first.startswith(PNG_SIGNATURE)
    assert png_path.read_bytes() == first
    page = md_path.read_text(encoding='utf-8')
    assert page == report.markdown(results)
    assert '](_static/benchmarks.png)' in page


def test_the_command_line_writes_where_it_is_told(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    md_path = tmp_path / 'page.md'
    png_path = tmp_path / 'img' / 'chart.png'

    status = report.main([SAMPLE, '--md', str(md_path),
                          '--png', str(png_path)])

    assert status == 0
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)
    assert '](img/chart.png)' in md_path.read_text(encoding='utf-8')
    assert 'NOT met' in capsys.readouterr().out


def test_without_matplotlib_render_says_how_to_install_it(
        results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
    md_path = tmp_path / 'benchmarks.md'

    with pytest.raises(report.MissingMatplotlib,
                       match=r'pip install -e \.\[bench\]'):
        report.render(results, md_path, tmp_path / 'benchmarks.png')
    assert not md_path.exists()
