"""Turn one results file of ``scripts/bench`` (``bench/harness.py``) into
the committed page ``docs/benchmarks.md`` and its chart
``docs/_static/benchmarks.png``.

    python -m bench.report RESULTS.json [--md PATH] [--png PATH]

Medians are taken here, per metric over each target's runs. A scenario or
a target without runs is shown as "not measured", and a target of the
issue that cannot be checked for want of numbers as "n/a".
"""

import argparse
import json
import os
import statistics
import sys
from typing import NamedTuple, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MD = os.path.join(REPO_ROOT, 'docs', 'benchmarks.md')
DEFAULT_PNG = os.path.join(REPO_ROOT, 'docs', '_static', 'benchmarks.png')

OBSERVED = 'threadko_observed'  # threadko with metrics and tracing on
TARGET_NAMES = {
    'threadko': 'threadko',
    OBSERVED: 'threadko observed',
    'nameko': 'Nameko',
    'raw_pika': 'raw pika',
    'waitress': 'bare waitress',
}
OPTION_PREFIX = 'option:'  # an `against` naming a run option, not a target

NOT_MEASURED = 'not measured'
MET, NOT_MET = '\N{WHITE HEAVY CHECK MARK}', '\N{CROSS MARK}'
LOWER_MARK = '\N{DOWNWARDS ARROW}'


class Metric(NamedTuple):
    """One number of a run, as a column of the page."""
    key: str
    label: str
    lower_is_better: bool = False
    summary: str = 'median'  # or 'sum' (over the runs)


class Ratio(NamedTuple):
    """A ratio column: ``metric`` of each row over ``against``'s (a target,
    or ``option:<name>`` for a run option)."""
    metric: str
    against: str
    label: str


class Scenario(NamedTuple):
    """How one scenario of the results file is shown."""
    key: str
    title: str
    targets: Tuple[str, ...]  # the expected targets, in the order shown
    metrics: Tuple[Metric, ...]
    ratios: Tuple[Ratio, ...] = ()
    #: metrics that get a panel of the chart; a tuple of metrics shares
    #: one panel, a group of bars per target
    chart: Tuple = ()
    #: a line under the table, formatted with the run's options
    note: str = ''


CALLS = Metric('calls_per_s', 'calls/s')
P50 = Metric('p50_ms', 'p50 ms', lower_is_better=True)
P99 = Metric('p99_ms', 'p99 ms', lower_is_better=True)
AMQP_TARGETS = ('threadko', 'nameko', 'raw_pika')
WS_TARGETS = ('threadko', 'nameko')
DB_METRICS = (Metric('concurrency', 'concurrency'),
              Metric('wall_s', 'wall s', lower_is_better=True))
DB_RATIOS = (Ratio('concurrency', OPTION_PREFIX + 'max_workers',
                   'concurrency / max_workers'),)
SCALEOUT_INSTANCES = (1, 2, 4)  # bench/harness.py's


def _per_instances(key, label):
    """An rpc_scaleout metric with each number of service processes
    (``calls_per_s_x4``, as bench/harness.py names it)."""
    return tuple(Metric('{}_x{}'.format(key, n), '{} \u00d7{}'.format(
        label, n)) for n in SCALEOUT_INSTANCES)


SCALEOUT_CALLS = _per_instances('calls_per_s', 'calls/s')
#: the mean share of one core per service process, and the client's
SCALEOUT_CPU = (_per_instances('server_cpu_share', 'CPU/process')
                + _per_instances('client_cpu_share', 'client CPU'))

SCENARIOS = (
    Scenario('rpc_seq', 'RPC, sequential calls',
             ('threadko', OBSERVED, 'nameko', 'raw_pika'),
             (CALLS, P50, P99),
             (Ratio('calls_per_s', 'raw_pika', '\u00d7 raw pika'),
              Ratio('calls_per_s', 'nameko', '\u00d7 Nameko')),
             ('calls_per_s',)),
    Scenario('rpc_par', 'RPC, calls in parallel', AMQP_TARGETS,
             (CALLS,),
             (Ratio('calls_per_s', 'raw_pika', '\u00d7 raw pika'),
              Ratio('calls_per_s', 'nameko', '\u00d7 Nameko')),
             ('calls_per_s',)),
    Scenario('rpc_scaleout', 'RPC, scale-out over service processes',
             ('threadko', 'nameko'),
             SCALEOUT_CALLS + (Metric('scaling', '\u00d74 / \u00d71'),)
             + SCALEOUT_CPU,
             (Ratio('calls_per_s_x4', 'nameko',
                    'calls/s \u00d74 \u00d7 Nameko'),),
             (tuple(metric.key for metric in SCALEOUT_CALLS),),
             note='\u00d7N: N processes of the service on its one queue, '
                  '{scaleout_in_flight} calls in flight. CPU/process: '
                  'the mean share of one core per service process; client '
                  "CPU: the one client process's."),
    Scenario('events', 'Events', AMQP_TARGETS,
             (Metric('events_per_s', 'events/s'),),
             (Ratio('events_per_s', 'raw_pika', '\u00d7 raw pika'),
              Ratio('events_per_s', 'nameko', '\u00d7 Nameko')),
             ('events_per_s',)),
    Scenario('http', 'HTTP', ('threadko', OBSERVED, 'nameko', 'waitress'),
             (Metric('requests_per_s', 'req/s'), P50, P99,
              Metric('errors', 'errors', lower_is_better=True,
                     summary='sum')),
             (Ratio('requests_per_s', 'waitress', 'req/s \u00d7 waitress'),
              Ratio('requests_per_s', 'nameko', 'req/s \u00d7 Nameko'),
              Ratio('p99_ms', 'nameko', 'p99 \u00d7 Nameko')),
             ('requests_per_s', 'p99_ms')),
    Scenario('blocking_db_mysql', 'Blocking database calls: MySQLdb',
             ('threadko', 'nameko'), DB_METRICS, DB_RATIOS,
             ('concurrency',)),
    Scenario('blocking_db_postgres', 'Blocking database calls: psycopg2',
             ('threadko', 'nameko'), DB_METRICS, DB_RATIOS,
             ('concurrency',)),
    Scenario('sqlalchemy_db', 'SQLAlchemy sessions on MariaDB',
             ('threadko', 'nameko'), (CALLS, P50, P99),
             (Ratio('calls_per_s', 'nameko', '\u00d7 Nameko'),),
             ('calls_per_s',)),
    Scenario('footprint', 'Footprint', AMQP_TARGETS,
             (Metric('rss_mib', 'RSS MiB', lower_is_better=True),
              Metric('startup_s', 'start-up s', lower_is_better=True)),
             (), ('rss_mib', 'startup_s')),
    Scenario('ws_rpc', 'Websocket RPC', WS_TARGETS,
             (CALLS, P50, P99,
              Metric('server_cpu_ms_per_call', 'server CPU ms/call',
                     lower_is_better=True)),
             (Ratio('calls_per_s', 'nameko', '\u00d7 Nameko'),),
             ('calls_per_s',),
             note='{ws_connections} websockets, one call in flight on each.'),
    Scenario('ws_fanout', 'Websocket fan-out', WS_TARGETS,
             (Metric('fanout_ms', 'fan-out ms', lower_is_better=True),
              Metric('first_event_ms', 'first event ms',
                     lower_is_better=True),
              Metric('threads_few', 'threads (few)', lower_is_better=True),
              Metric('threads_many', 'threads (all)', lower_is_better=True),
              Metric('rss_few_mib', 'RSS MiB (few)', lower_is_better=True),
              Metric('rss_many_mib', 'RSS MiB (all)', lower_is_better=True)),
             (Ratio('fanout_ms', 'nameko', 'fan-out \u00d7 Nameko'),),
             ('fanout_ms', 'rss_many_mib', ('threads_few', 'threads_many')),
             note='few: {ws_few} subscribed websockets; all: '
                  '{ws_subscribers}. Fan-out: to the last of the '
                  '{ws_subscribers}, the median of {ws_broadcasts} '
                  'broadcasts per run.'),
)
SCENARIO_BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}

#: the overhead of metrics and tracing: these metrics of each scenario,
#: threadko observed against threadko
OVERHEAD = (
    ('rpc_seq', ('calls_per_s', 'p50_ms', 'p99_ms')),
    ('http', ('requests_per_s', 'p50_ms', 'p99_ms')),
)
#: what proves that the observed target's metrics and tracing were on
#: (its runs' fields, filled in by bench/harness.py)
OVERHEAD_PROOF = (
    Metric('entrypoint_calls', 'calls counted at /metrics'),
    Metric('server_spans', 'spans: server'),
    Metric('client_spans', 'spans: client'),
)
#: the most the observed target may be slower: the issue's 10%
OVERHEAD_THROUGHPUT, OVERHEAD_LATENCY = 0.9, 1.1


class Target(NamedTuple):
    """A target of the issue: ``target``'s median ``metric`` in
    ``scenario`` over ``against``'s (a target, or ``option:<name>``) must be
    ``direction`` (``'>='`` or ``'<='``) ``required``. With
    ``against_metric``, the reference is that metric of ``against``
    (``threads_many`` over ``threads_few`` of one target, say)."""
    scenario: str
    metric: str
    target: str
    against: str
    required: float
    direction: str
    against_metric: Optional[str] = None


TARGETS = (
    Target('rpc_seq', 'calls_per_s', 'threadko', 'nameko', 1.5, '>='),
    Target('rpc_seq', 'calls_per_s', 'threadko', 'raw_pika', 0.6, '>='),
    Target('rpc_par', 'calls_per_s', 'threadko', 'nameko', 3.0, '>='),
    Target('rpc_par', 'calls_per_s', 'threadko', 'raw_pika', 0.5, '>='),
    Target('events', 'events_per_s', 'threadko', 'nameko', 3.0, '>='),
    Target('events', 'events_per_s', 'threadko', 'raw_pika', 0.5, '>='),
    Target('http', 'requests_per_s', 'threadko', 'nameko', 1.0, '>='),
    Target('http', 'requests_per_s', 'threadko', 'waitress', 0.9, '>='),
    Target('http', 'p99_ms', 'threadko', 'nameko', 1.0, '<='),
    Target('blocking_db_mysql', 'concurrency', 'threadko',
           OPTION_PREFIX + 'max_workers', 0.9, '>='),
    Target('sqlalchemy_db', 'calls_per_s', 'threadko', 'nameko', 3.0, '>='),
    Target('ws_rpc', 'calls_per_s', 'threadko', 'nameko', 2.0, '>='),
    Target('ws_fanout', 'fanout_ms', 'threadko', 'nameko', 1.0, '<='),
    # threads flat: no more with all the websockets than with a few
    Target('ws_fanout', 'threads_many', 'threadko', 'threadko', 1.0, '<=',
           against_metric='threads_few'),
    # metrics and tracing on: at most 10% slower than off
    Target('rpc_seq', 'calls_per_s', OBSERVED, 'threadko',
           OVERHEAD_THROUGHPUT, '>='),
    Target('rpc_seq', 'p50_ms', OBSERVED, 'threadko', OVERHEAD_LATENCY,
           '<='),
    Target('http', 'requests_per_s', OBSERVED, 'threadko',
           OVERHEAD_THROUGHPUT, '>='),
    Target('http', 'p50_ms', OBSERVED, 'threadko', OVERHEAD_LATENCY, '<='),
)

HOW_MEASURED = (
    ('Targets',
     'threadko and Nameko 2.14.1 (under eventlet, in its own virtualenv) '
     'run the same service classes with their default config apart from '
     'the broker; raw pika is the simplest correct pika implementation of '
     'the same wire work (persistent messages, publisher confirms, ack '
     'after the reply); bare waitress is a waitress + werkzeug app with '
     "the {web_threads} threads of threadko's web server. Each "
     "measurement starts the target's server process and a separate "
     'client process; every round '
     'measures each target in turn, in a rotating order, {rounds} rounds. '
     'Tables show the median over the runs.'),
    ('rpc_seq',
     '{calls} calls of an echo method one after another from one client '
     'process, after {warmup} warm-up calls: calls/s over the whole '
     'batch, p50 and p99 of the per-call latency.'),
    ('rpc_par',
     'Calls to the echo method for {duration} s with {in_flight} in '
     "flight: threadko's client is {in_flight} threads sharing one "
     "ClusterRpcProxy, Nameko's one greenthread pipelining call_async "
     '(Nameko 2 proxies cannot be shared between greenthreads), raw '
     "pika's one thread pipelining by correlation id."),
    ('rpc_scaleout',
     "rpc_par's service and client, with 1, 2 and 4 processes of the "
     'service (the same peer, the same queue rpc-bench_echo, max_workers '
     '{max_workers} and prefetch 10 each) started before the client; the '
     'client keeps {scaleout_in_flight} calls in flight for {duration} s '
     'whatever the number of processes, more than 4 processes take at '
     'once (4 \u00d7 max_workers). One run measures the three counts one '
     'after another (the order rotates from run to run); \u00d74 / '
     "\u00d71 is the median of the runs' ratios. CPU/process is the "
     "service processes' CPU time (from /proc) from just before the "
     "client starts until it exits, over the client's measured time, "
     'divided by the number of processes: 1.00 is one core each; client '
     "CPU is the client process's own CPU time over its measured time. "
     "Broker, client and services share the machine's CPUs, so on a "
     'machine of few cores the curve flattens once they are all busy.'),
    ('events',
     '{events} events dispatched by one publisher to a service whose '
     'handler counts them: events/s from the first publish until the '
     'handler has seen the last event.'),
    ('http',
     'GET /hello (a 13-byte text/plain body) from {connections} keep-alive '
     'connections for {http_seconds} s after a warm-up; requests/s, p50 '
     'and p99 latency and errors as reported by the load generator.'),
    ('blocking_db_mysql, blocking_db_postgres',
     '{concurrency} RPC calls started at once on a service whose every '
     'call runs one query that sleeps 0.1 s in the database (SELECT '
     'SLEEP(0.1) through MySQLdb on MariaDB, SELECT pg_sleep(0.1) through '
     'psycopg2 on PostgreSQL). Concurrency is the database time asked for '
     '(calls \u00d7 0.1 s) over the wall time; with max_workers '
     '{max_workers} it can be at most {max_workers}. Only the MySQLdb '
     'scenario has a target.'),
    ('sqlalchemy_db',
     'Calls for {duration} s with {in_flight} in flight (as rpc_par, '
     'after 1 s of the same load) to a method that, through the '
     "framework's SQLAlchemy DatabaseSession (threadko.sqlalchemy; "
     'nameko-sqlalchemy 1.5.0 for Nameko), SELECTs one of 1,000 rows by a '
     'unique index, UPDATEs it and commits, on MariaDB through MySQLdb '
     '(the same server for both). calls/s, and p50 and p99 of the '
     "per-call latency. MySQLdb blocks the OS thread it runs on, so "
     "Nameko's workers, greenthreads of one thread, take turns in the "
     "database; threadko's run on threads of their own."),
    ('threadko observed',
     'The threadko target with metrics and tracing on, measured in '
     'rpc_seq and http in the same rounds as threadko (the rotating '
     'order): METRICS_ADDRESS set (Prometheus metrics and health probes on '
     'a port of its own) and TRACING true in the service and, for '
     "rpc_seq, in the standalone client (whose RPC calls are spans too). "
     "Spans go to OpenTelemetry's SDK, set up as the global tracer "
     'provider as an application would: a TracerProvider (every span '
     'sampled) with a BatchSpanProcessor handing the spans to an exporter '
     'that counts them and drops them. So the overhead measured is '
     "threadko's instrumentation and the SDK's work, not an exporter's "
     'network cost, nor a Prometheus server scraping during the run. '
     'After each measured run the harness scrapes /metrics (again, for up '
     'to 10 s, until the last workers have finished) and '
     'threadko_entrypoint_calls_total must count every call made; then the '
     'service (and the client) report the spans they exported. A run '
     'without either is a failed run. The targets: at most 10% slower, '
     'that is calls/s or req/s at least '
     + '{:g}'.format(OVERHEAD_THROUGHPUT)
     + " \u00d7 threadko's, and p50 latency at most "
     + '{:g}'.format(OVERHEAD_LATENCY) + ' \u00d7.'),
    ('footprint',
     "The echo service started with the framework's own run command (raw "
     "pika: its server process): start-up is the time from starting the "
     'process until its first RPC answer, RSS the resident memory of the '
     'service process after that answer. No target.'),
    ('ws_rpc, ws_fanout',
     'The same service class on both frameworks, with the websocket '
     '@rpc and WebSocketHubProvider of threadko.web.websocket and '
     "nameko.web.websocket (Nameko's runs on eventlet's websockets), on "
     "the framework's web server with its default config. The clients "
     'are one load generator process shared by both targets: every '
     'websocket a non-blocking socket on one selectors loop, the protocol '
     "done by wsproto; it also reads the server process's threads, RSS "
     'and CPU time from /proc.'),
    ('ws_rpc',
     '{ws_connections} websockets, each calling an echo method call after '
     'call (one call in flight per socket) for 1 s, then for {duration} s '
     'measured: calls/s, p50 and p99 latency, and the server\'s CPU time '
     'per call.'),
    ('ws_fanout',
     'First 1 s of echo calls from 32 websockets at once, which are then '
     'closed (so the server has made the worker threads it makes for '
     'calls: threadko up to max_workers, kept). Then one trigger '
     'websocket and {ws_few} websockets each subscribing (an @rpc call) '
     "to one hub channel: the server's threads and RSS; then more, up to "
     '{ws_subscribers} subscribed: threads and RSS again. Then '
     '{ws_broadcasts} times, a broadcast @rpc call on the trigger socket, '
     'timed from sending it until the last subscribed socket has read the '
     'whole event (parsed by wsproto after the clock stops); the table '
     'shows the median. Threads are flat when the count with all the '
     'websockets is no more than with a few.'),
)


class MissingMatplotlib(RuntimeError):
    """matplotlib, needed for the chart, is not installed."""


# numbers

def median(results, scenario, target, metric):
    """The median (or, for a ``summary='sum'`` metric, the total) of
    ``metric`` over ``target``'s runs in ``scenario``; None if no run
    has it."""
    runs = _runs(results, scenario, target)
    values = [run[metric] for run in runs
              if isinstance(run.get(metric), (int, float))]
    if not values:
        return None
    known = SCENARIO_BY_KEY.get(scenario)
    summary = {m.key: m.summary for m in known.metrics} if known else {}
    if summary.get(metric) == 'sum':
        return sum(values)
    return statistics.median(values)


def _runs(results, scenario, target):
    entry = (results.get('scenarios') or {}).get(scenario) or {}
    return ((entry.get('targets') or {}).get(target) or {}).get('runs') or []


def _reference(results, scenario, against, metric):
    if against.startswith(OPTION_PREFIX):
        value = (results.get('options') or {}).get(
            against[len(OPTION_PREFIX):])
        return value if isinstance(value, (int, float)) else None
    return median(results, scenario, against, metric)


def _ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def check_targets(results):
    """The issue's targets (:data:`TARGETS`) against ``results``.

    :param results: a parsed results file.
    :returns: one dict per target, in :data:`TARGETS` order: its fields
        (``scenario``, ``metric``, ``target``, ``against``, ``required``,
        ``direction``, ``against_metric``), ``value`` and ``reference``
        (the two medians, or
        the run option), ``ratio`` (``value / reference``) and ``met``
        (True, False, or None when a number is missing).
    """
    checked = []
    for target in TARGETS:
        value = median(results, target.scenario, target.target,
                       target.metric)
        reference = _reference(results, target.scenario, target.against,
                               target.against_metric or target.metric)
        ratio = _ratio(value, reference)
        if ratio is None:
            met = None
        elif target.direction == '>=':
            met = ratio >= target.required
        else:
            met = ratio <= target.required
        row = target._asdict()
        row.update(value=value, reference=reference, ratio=ratio, met=met)
        checked.append(row)
    return checked


# the page

def _num(value):
    if value is None:
        return 'n/a'
    if isinstance(value, int) and not isinstance(value, bool):
        return '{:,}'.format(value)
    if abs(value) >= 100:
        return '{:,.0f}'.format(value)
    if abs(value) >= 10:
        return '{:.1f}'.format(value)
    return '{:.2f}'.format(value)


def _times(ratio):
    return 'n/a' if ratio is None else '{:.2f}\u00d7'.format(ratio)


def _name(target):
    if target.startswith(OPTION_PREFIX):
        return '`{}`'.format(target[len(OPTION_PREFIX):])
    return TARGET_NAMES.get(target, target)


def _metric_label(scenario, metric):
    known = SCENARIO_BY_KEY.get(scenario)
    for candidate in known.metrics if known else ():
        if candidate.key == metric:
            return candidate.label
    return metric


def _cell(text):
    return ' '.join(str(text).split()).replace('|', '\\|')


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join('---' for _ in header) + '|']
    lines.extend('| ' + ' | '.join(_cell(c) for c in row) + ' |'
                 for row in rows)
    return lines


def _machine_lines(results):
    machine = results.get('machine') or {}
    options = results.get('options') or {}

    def have(*keys):
        return [machine[k] for k in keys if machine.get(k)]

    hardware = []
    if machine.get('cpus'):
        cpu = '{} CPUs'.format(machine['cpus'])
        if machine.get('cpu_model'):
            cpu += ' ({})'.format(machine['cpu_model'])
        hardware.append(cpu)
    if machine.get('memory_gib'):
        hardware.append('{} GiB memory'.format(machine['memory_gib']))
    if machine.get('python'):
        hardware.append('Python {}'.format(machine['python']))
    software = []
    for key, name in (('threadko', 'threadko'), ('nameko', 'Nameko'),
                      ('eventlet', 'eventlet'), ('kombu', 'kombu'),
                      ('pika', 'pika'), ('rabbitmq', 'RabbitMQ'),
                      ('waitress', 'waitress'), ('werkzeug', 'werkzeug'),
                      ('sqlalchemy', 'SQLAlchemy'),
                      ('nameko_sqlalchemy', 'nameko-sqlalchemy'),
                      ('mariadb', 'MariaDB'), ('postgresql', 'PostgreSQL'),
                      ('wsproto', 'wsproto'),
                      ('opentelemetry_sdk', 'OpenTelemetry SDK'),
                      ('prometheus_client', 'prometheus_client')):
        if machine.get(key):
            software.append('{} {}'.format(name, machine[key]))
    if machine.get('loadgen'):
        software.append('load generator {}'.format(machine['loadgen']))
    lines = ['- Machine: {}.'.format(', '.join(hardware) or 'not recorded'),
             '- Software: {}.'.format(', '.join(software) or 'not recorded')]
    run = []
    if results.get('command'):
        run.append('`{}`'.format(results['command']))
    if results.get('started'):
        run.append('from {} to {}'.format(
            results['started'], results.get('finished') or '?'))
    if options:
        run.append('options: ' + ', '.join(
            '{} {}'.format(key, options[key]) for key in options))
    if run:
        lines.append('- Run: {}.'.format('; '.join(run)))
    return lines


def _targets_section(results):
    checked = check_targets(results)
    rows = []
    for row in checked:
        label = _metric_label(row['scenario'], row['metric'])
        if row['against_metric']:  # two metrics of one target
            other = _metric_label(row['scenario'], row['against_metric'])
            name = '`{}` {}: {} / {}'.format(
                row['scenario'], _name(row['target']), label, other)
            measured = '{} {} \u00b7 {} {}'.format(
                label, _num(row['value']), other, _num(row['reference']))
        else:
            name = '`{}` {}: {} / {}'.format(
                row['scenario'], label, _name(row['target']),
                _name(row['against']))
            measured = '{} {} \u00b7 {} {}'.format(
                _name(row['target']), _num(row['value']),
                _name(row['against']), _num(row['reference']))
        required = '{} {:g}\u00d7'.format(
            '\u2265' if row['direction'] == '>=' else '\u2264',
            row['required'])
        met = {True: MET, False: NOT_MET}.get(
            row['met'], 'n/a ({})'.format(NOT_MEASURED))
        rows.append((name, measured, _times(row['ratio']), required, met))
    met_count = sum(1 for row in checked if row['met'])
    lines = ['## Targets', '',
             '{} of {} targets met. Ratios are of the medians.'.format(
                 met_count, len(TARGETS)), '']
    lines += _table(('target', 'measured', 'ratio', 'required', 'met'), rows)
    # plain text, not a link: the page is part of the Sphinx docs, which
    # cannot link to files outside docs/
    lines += ['', 'What limits the targets that are not met, and what was '
              'optimised: `bench/README.md` in the repository.']
    return lines


def _scenario_targets(results, scenario):
    present = list(((results.get('scenarios') or {}).get(scenario.key)
                    or {}).get('targets') or {})
    return list(scenario.targets) + sorted(
        t for t in present if t not in scenario.targets)


def _scenario_section(results, scenario):
    lines = ['### {} (`{}`)'.format(scenario.title, scenario.key), '']
    if scenario.key not in (results.get('scenarios') or {}):
        return lines + ['Not measured in this run.']
    header = ['target', 'runs'] + [
        m.label + (' ' + LOWER_MARK if m.lower_is_better else '')
        + (' (total)' if m.summary == 'sum' else '')
        for m in scenario.metrics] + [r.label for r in scenario.ratios]
    rows = []
    for target in _scenario_targets(results, scenario):
        runs = len(_runs(results, scenario.key, target))
        row = [_name(target), runs or NOT_MEASURED]
        row += [_num(median(results, scenario.key, target, m.key))
                for m in scenario.metrics]
        for ratio in scenario.ratios:
            if ratio.against == target:
                row.append('\u2014')
                continue
            row.append(_times(_ratio(
                median(results, scenario.key, target, ratio.metric),
                _reference(results, scenario.key, ratio.against,
                           ratio.metric))))
        rows.append(row)
    lines += _table(header, rows)
    if scenario.note:
        lines += ['', scenario.note.format_map(
            _Options(results.get('options') or {}))]
    return lines


def _overhead_section(results):
    """threadko observed against threadko, metric by metric, and what
    proves that its metrics and tracing were on."""
    lines = ['### Overhead of metrics and tracing (`{}`)'.format(OBSERVED),
             '',
             '{} against {}, measured in the same rounds: its median over '
             "threadko's; change is how much higher (+) or lower (\u2212) "
             'it is. The target: at most 10% slower.'.format(
                 _name(OBSERVED), _name('threadko')), '']
    rows = []
    for key, metrics in OVERHEAD:
        for metric in metrics:
            value = median(results, key, OBSERVED, metric)
            reference = median(results, key, 'threadko', metric)
            ratio = _ratio(value, reference)
            label = _metric_label(key, metric)
            lower = any(m.lower_is_better for m in SCENARIO_BY_KEY[
                key].metrics if m.key == metric)
            rows.append(('`{}`'.format(key),
                         label + (' ' + LOWER_MARK if lower else ''),
                         _num(reference), _num(value), _times(ratio),
                         _change(ratio)))
    lines += _table(('scenario', 'metric', _name('threadko'),
                     _name(OBSERVED), 'ratio', 'change'), rows)
    lines += ['', 'Proof that they were on: per run of {} (medians), the '
              'entrypoint calls its service counted at /metrics, and the '
              'spans the service and the client exported (the HTTP load '
              'generator is not traced).'.format(_name(OBSERVED)), '']
    rows = []
    for key, _ in OVERHEAD:
        row = ['`{}`'.format(key),
               len(_runs(results, key, OBSERVED)) or NOT_MEASURED]
        for metric in OVERHEAD_PROOF:
            value = median(results, key, OBSERVED, metric.key)
            row.append('\u2014' if value is None and key == 'http'
                       and metric.key == 'client_spans' else _num(value))
        rows.append(row)
    lines += _table(['scenario', 'runs'] + [
        metric.label for metric in OVERHEAD_PROOF], rows)
    return lines


def _change(ratio):
    if ratio is None:
        return 'n/a'
    change = (ratio - 1) * 100
    return '{}{:.1f}%'.format('+' if change >= 0 else '\u2212', abs(change))


def _other_scenarios_section(results, key):
    """A scenario this module does not know: every numeric field."""
    lines = ['### `{}`'.format(key), '']
    targets = sorted((results['scenarios'][key] or {}).get('targets') or {})
    metrics = sorted({name for target in targets
                      for run in _runs(results, key, target)
                      for name, value in run.items()
                      if isinstance(value, (int, float))})
    rows = [[_name(t), len(_runs(results, key, t)) or NOT_MEASURED]
            + [_num(median(results, key, t, m)) for m in metrics]
            for t in targets]
    return lines + _table(['target', 'runs'] + metrics, rows)


def _errors_section(results):
    errors = results.get('errors') or []
    if not errors:
        return []
    rows = [(e.get('scenario', '?'), _name(e.get('target', '?')),
             e.get('round', '?'), str(e.get('error', '')).strip())
            for e in errors]
    return (['### Failed runs', '',
             'These runs are left out of the medians above.', '']
            + _table(('scenario', 'target', 'round', 'error'), rows))


class _Options(dict):
    def __missing__(self, key):
        return '?'


def _how_measured_section(results):
    options = _Options(results.get('options') or {})
    lines = ['## How it was measured']
    for title, text in HOW_MEASURED:
        lines += ['', '**{}.** {}'.format(title, text.format_map(options))]
    return lines


def markdown(results, image_link='_static/benchmarks.png'):
    """The text of the page for ``results``, with the chart at
    ``image_link`` (relative to the page)."""
    started = results.get('started') or ''
    date = started[:10] or 'an unknown date'
    lines = [
        '# Benchmarks', '',
        'Generated by `scripts/bench` on {}: do not edit by hand; '
        'regenerate with `python -m bench.report <json>`.'.format(date), '',
    ]
    lines += _machine_lines(results)
    lines += [''] + _targets_section(results)
    lines += ['', '## Results', '',
              'Medians over the runs of each target. Columns marked {} are '
              'lower-is-better, all others higher-is-better; a ratio is '
              "the row's median over the named target's.".format(
                  LOWER_MARK)]
    for scenario in SCENARIOS:
        lines += [''] + _scenario_section(results, scenario)
    lines += [''] + _overhead_section(results)
    for key in (results.get('scenarios') or {}):
        if key not in SCENARIO_BY_KEY:
            lines += [''] + _other_scenarios_section(results, key)
    errors = _errors_section(results)
    if errors:
        lines += [''] + errors
    lines += ['', '## Chart', '',
              '![Benchmark medians per scenario]({})'.format(image_link),
              '']
    lines += _how_measured_section(results)
    return '\n'.join(lines) + '\n'


# the chart

COLOURS = {'threadko': '#2b6cb0', OBSERVED: '#63b3ed', 'nameko': '#dd6b20',
           'raw_pika': '#718096', 'waitress': '#718096'}
#: shorter names under the bars, where the table's would not fit
CHART_NAMES = {OBSERVED: 'threadko\nobserved'}
OTHER_COLOUR = '#38a169'


def _matplotlib():
    try:
        import matplotlib  # noqa: F401 (only to fail early and clearly)
    except ImportError:
        raise MissingMatplotlib(
            'the benchmark chart needs matplotlib: pip install -e .[bench]')
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    return Figure, FigureCanvasAgg


def chart(results, png_path):
    """Write the chart of ``results`` to ``png_path``: one bar panel per
    charted metric (or group of metrics) of each scenario, the medians
    labelled.

    :raises MissingMatplotlib: if matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    panels = []
    for scenario in SCENARIOS:
        for charted in scenario.chart:
            keys = (charted,) if isinstance(charted, str) else charted
            metrics = tuple(metric for key in keys
                            for metric in scenario.metrics
                            if metric.key == key)
            panels.append((scenario, metrics[0] if len(metrics) == 1
                           else metrics))
    columns = 3
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(12, 8 * rows / 3), dpi=100)  # 8 for 3 rows
    FigureCanvasAgg(figure)  # Agg, whatever pyplot's backend is
    date = (results.get('started') or '')[:10]
    figure.suptitle('threadko, Nameko 2.14.1 and raw pika: medians'
                    + (' ({})'.format(date) if date else ''), fontsize=13)
    for index, (scenario, metric) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        _panel(axes, results, scenario, metric)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(os.fspath(png_path), format='png', dpi=100,
                   metadata={'Software': None})


def _panel(axes, results, scenario, metric):
    if not isinstance(metric, Metric):  # a group of them
        return _grouped_panel(axes, results, scenario, metric)
    better = 'lower' if metric.lower_is_better else 'higher'
    axes.set_title('{}: {}\n({} is better)'.format(
        scenario.key, metric.label, better), fontsize=10)
    axes.tick_params(labelsize=9)
    if scenario.key not in (results.get('scenarios') or {}):
        _not_measured(axes)
        return
    targets = _scenario_targets(results, scenario)
    values = [median(results, scenario.key, t, metric.key) for t in targets]
    top = max([v for v in values if v is not None] or [1]) or 1
    for x, (target, value) in enumerate(zip(targets, values)):
        if value is None:
            axes.text(x, 0, 'n/a', ha='center', va='bottom', fontsize=9,
                      color='#718096')
            continue
        axes.bar(x, value, width=0.6,
                 color=COLOURS.get(target, OTHER_COLOUR))
        axes.text(x, value + top * 0.02, _num(value), ha='center',
                  va='bottom', fontsize=9)
    limit = top * 1.2
    if scenario.ratios and scenario.ratios[0].against.startswith(
            OPTION_PREFIX) and metric.key == scenario.ratios[0].metric:
        ceiling = _reference(results, scenario.key,
                             scenario.ratios[0].against, metric.key)
        if ceiling:
            axes.axhline(ceiling, color='#a0aec0', linestyle='--',
                         linewidth=1)
            axes.text(len(targets) - 0.5, ceiling, _name(
                scenario.ratios[0].against).strip('`') + ' ' + _num(ceiling),
                ha='right', va='bottom', fontsize=8, color='#4a5568')
            limit = max(limit, ceiling * 1.2)
    axes.set_ylim(0, limit)
    _target_axis(axes, targets)


def _grouped_panel(axes, results, scenario, metrics):
    """Several metrics of one scenario: a group of bars per target, the
    metrics told apart by shade."""
    axes.set_title('{}: {}\n(left to right in each group)'.format(
        scenario.key, ', '.join(metric.label for metric in metrics)),
        fontsize=10)
    axes.tick_params(labelsize=9)
    if scenario.key not in (results.get('scenarios') or {}):
        _not_measured(axes)
        return
    targets = _scenario_targets(results, scenario)
    width = 0.8 / len(metrics)
    values = {(t, m.key): median(results, scenario.key, t, m.key)
              for t in targets for m in metrics}
    top = max([v for v in values.values() if v is not None] or [1]) or 1
    for index, metric in enumerate(metrics):
        shade = 1.0 - 0.45 * index / max(1, len(metrics) - 1)
        for x, target in enumerate(targets):
            place = x - 0.4 + width * (index + 0.5)
            value = values[(target, metric.key)]
            if value is None:
                axes.text(place, 0, 'n/a', ha='center', va='bottom',
                          fontsize=8, color='#718096')
                continue
            axes.bar(place, value, width=width * 0.9, alpha=shade,
                     color=COLOURS.get(target, OTHER_COLOUR),
                     label=metric.label if x == 0 else None)
            axes.text(place, value + top * 0.02, _num(value), ha='center',
                      va='bottom', fontsize=8)
    axes.set_ylim(0, top * 1.35)
    axes.legend(fontsize=8, frameon=False, loc='upper right')
    _target_axis(axes, targets)


def _not_measured(axes):
    axes.text(0.5, 0.5, NOT_MEASURED, ha='center', va='center',
              transform=axes.transAxes, color='#718096')
    axes.set_xticks([])
    axes.set_yticks([])


def _target_axis(axes, targets):
    """The targets along the x axis, one slot each; no top or right
    frame."""
    axes.set_xlim(-0.6, len(targets) - 0.4)
    axes.set_xticks(range(len(targets)))
    axes.set_xticklabels([CHART_NAMES.get(t) or _name(t) for t in targets])
    for side in ('top', 'right'):
        axes.spines[side].set_visible(False)


# both

def render(results, md_path, png_path):
    """Write the page for ``results`` to ``md_path`` and its chart to
    ``png_path`` (directories are made as needed); the page links the
    chart by its path relative to the page.

    :param results: a parsed results file.
    :raises MissingMatplotlib: if matplotlib is not installed (checked
        before anything is written).
    """
    _matplotlib()
    md_path, png_path = os.fspath(md_path), os.fspath(png_path)
    link = os.path.relpath(os.path.abspath(png_path),
                           os.path.dirname(os.path.abspath(md_path)))
    for path in (md_path, png_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(md_path, 'w', encoding='utf-8') as page:
        page.write(markdown(results, link.replace(os.sep, '/')))
    chart(results, png_path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m bench.report',
        description='Write docs/benchmarks.md and its chart from a '
                    'results file of scripts/bench.')
    parser.add_argument('results', help='a bench/results/*.json file')
    parser.add_argument('--md', default=DEFAULT_MD,
                        help='the page (default: docs/benchmarks.md)')
    parser.add_argument('--png', default=DEFAULT_PNG,
                        help='the chart (default: '
                             'docs/_static/benchmarks.png)')
    args = parser.parse_args(argv)
    with open(args.results, encoding='utf-8') as file:
        results = json.load(file)
    try:
        render(results, args.md, args.png)
    except MissingMatplotlib as exc:
        print('error: {}'.format(exc), file=sys.stderr)
        return 2
    print('wrote {} and {}'.format(args.md, args.png))
    for row in check_targets(results):
        mark = {True: 'met', False: 'NOT met'}.get(row['met'], 'n/a')
        print('  {:<18} {:<15} {:<17} vs {:<20} {} {} {}: {}'.format(
            row['scenario'], row['metric'], row['target'], row['against'],
            _times(row['ratio']), row['direction'], row['required'], mark))
    return 0


if __name__ == '__main__':
    sys.exit(main())
