"""``python -m bench``: threadko, Nameko 2.14.1 and raw pika side by side.

Every scenario runs each target in turn, round after round (the order
rotates each round), so drift on the machine hits all targets alike. Each
measurement starts the target's server process (a peer in
``bench/peers/``), runs its client process, and stops the server: clients
and servers never share a process or a GIL with the harness. The Nameko
peers run in their own virtualenv (Nameko 2.14.1, eventlet, the database
drivers), built on first use.

Results go to ``bench/results/bench-<time>.json``; unless ``--no-docs``,
``docs/benchmarks.md`` and its chart are generated from them
(:mod:`bench.report`). ``scripts/bench`` installs what this needs (RabbitMQ,
MariaDB, PostgreSQL, wrk, SQLAlchemy) and then runs it. See
``bench/README.md``.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from urllib.parse import quote

import pika

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / 'peers'
RESULTS_DIR = BENCH_DIR / 'results'
sys.path.insert(0, str(PEERS_DIR))
sys.path.insert(0, str(REPO_ROOT / 'scripts'))

from common import (  # noqa: E402
    EVENT_TYPE, SOURCE_SERVICE, SQLALCHEMY_CODE, SQLALCHEMY_ROWS)
import nameko_venv  # noqa: E402

DEFAULT_URI = 'amqp://guest:guest@localhost'
NAMEKO_BENCH_PINS = nameko_venv.NAMEKO_BENCH_PINS
NAMEKO_BENCH_VENV = REPO_ROOT / '.nameko-bench-venv'

SCENARIOS = ('rpc_seq', 'rpc_par', 'rpc_scaleout', 'events', 'http',
             'blocking_db', 'sqlalchemy_db', 'footprint', 'ws_rpc',
             'ws_fanout')
AMQP_TARGETS = ('threadko', 'nameko', 'raw_pika')
#: threadko with metrics (METRICS_ADDRESS) and tracing (TRACING, spans to
#: the OpenTelemetry SDK) on, beside the default threadko: rpc_seq and http
OBSERVED = 'threadko_observed'
RPC_SEQ_TARGETS = ('threadko', OBSERVED, 'nameko', 'raw_pika')
SCALEOUT_TARGETS = ('threadko', 'nameko')
#: rpc_scaleout: the service processes on the queue, one measurement each
SCALEOUT_INSTANCES = (1, 2, 4)
HTTP_TARGETS = ('threadko', OBSERVED, 'nameko', 'waitress')
DB_TARGETS = ('threadko', 'nameko')
WS_TARGETS = ('threadko', 'nameko')
#: the websocket load generator (both targets'): threadko's virtualenv
WS_LOADGEN = 'ws_client.py'
PEER_FILES = {
    'threadko': 'threadko_peer.py',
    OBSERVED: 'threadko_peer.py',  # with --observe
    'nameko': 'nameko_peer.py',
    'raw_pika': 'raw_pika_peer.py',
    'waitress': 'waitress_peer.py',
}
EVENT_QUEUE = 'evt-{}-{}--bench_counter.handle'.format(
    SOURCE_SERVICE, EVENT_TYPE)

START_TIMEOUT = 60  # seconds for a server to say READY
STOP_TIMEOUT = 30  # seconds for a server to exit after SIGTERM
HTTP_WARM_UP = 1  # seconds of load before each measured HTTP run
WS_WARM_UP = 1  # seconds of ws_rpc load before each measured run
THREADKO_WEB_THREADS = 12  # threadko's default: max_workers (10) + 2
#: the observed server's counter of entrypoint calls, read from /metrics
OBSERVED_CALLS_METRIC = 'threadko_entrypoint_calls_total'
OBSERVED_SCRAPE_TIMEOUT = 10  # seconds for /metrics to count every call


class BenchError(Exception):
    """A target could not be measured; the run goes on without it."""


# -- processes ---------------------------------------------------------------

class Peer:
    """One server or client process of a target, with its log."""

    def __init__(self, label, argv, workdir, env=None):
        self.label = label
        self.log_path = Path(workdir) / (label + '.log')
        self._log = open(self.log_path, 'wb')
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(arg) for arg in argv], cwd=str(PEERS_DIR), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._log, start_new_session=True)
        self._buffer = b''

    def read_line(self, timeout):
        """The next line of stdout; BenchError if none comes in time."""
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout
        while b'\n' not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError('{} said nothing for {}s{}'.format(
                    self.label, timeout, self.log_tail()))
            if select.select([stdout], [], [], remaining)[0]:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise BenchError('{} exited with status {}{}'.format(
                        self.label, self.process.wait(), self.log_tail()))
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b'\n')
        return line.decode().strip()

    def expect(self, word, timeout):
        line = self.read_line(timeout)
        if line != word:
            raise BenchError('{} said {!r}, not {}{}'.format(
                self.label, line, word, self.log_tail()))

    def result(self, timeout):
        """The client's JSON result line, then its exit."""
        line = self.read_line(timeout)
        try:
            result = json.loads(line)
        except ValueError:
            raise BenchError('{} printed {!r}{}'.format(
                self.label, line, self.log_tail()))
        self.stop(timeout=STOP_TIMEOUT, signum=None)
        return result

    def rss_mib(self):
        with open('/proc/{}/status'.format(self.process.pid)) as status:
            kib = re.search(r'^VmRSS:\s+(\d+) kB', status.read(), re.M)
        return int(kib.group(1)) / 1024

    def cpu_seconds(self):
        with open('/proc/{}/stat'.format(self.process.pid)) as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')

    def stop(self, timeout=STOP_TIMEOUT, signum=signal.SIGTERM):
        """Signal (unless ``signum`` is None: wait for it to exit by
        itself), wait, kill after ``timeout``."""
        if self.process.poll() is None and signum is not None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self._log.close()

    def log_tail(self, lines=25):
        try:
            with open(self.log_path, errors='replace') as log:
                tail = log.readlines()[-lines:]
        except OSError:
            return ''
        return ('\n--- last lines of {}:\n'.format(self.log_path)
                + ''.join(tail)) if tail else ''


@contextlib.contextmanager
def running(peer):
    """Stop ``peer`` on the way out, whatever happened."""
    try:
        yield peer
    finally:
        if peer.process.returncode is None:
            peer.stop()


# -- the run -----------------------------------------------------------------

class Bench:
    """One run of the harness: its options, processes and results."""

    def __init__(self, args, workdir):
        self.args = args
        self.workdir = Path(workdir)
        self.pythons = {
            'threadko': sys.executable,
            OBSERVED: sys.executable,
            'raw_pika': sys.executable,
            'waitress': sys.executable,
        }
        self.scenarios = {}
        self.errors = []
        self.machine = {}
        self._counter = 0
        self._sweeps = 0  # rpc_scaleout measurements so far

    # processes

    def _argv(self, target, role, scenario, *extra):
        argv = [self.pythons[target], PEER_FILES[target], role, scenario,
                '--uri', self.args.uri] + list(extra)
        if target == OBSERVED:
            argv.append('--observe')
        return argv

    def _label(self, target, role, scenario):
        self._counter += 1
        return '{:03d}-{}-{}-{}'.format(self._counter, scenario, target, role)

    def server(self, target, scenario, *extra):
        """The ``serve`` peer, once it says READY. The observed target's
        server serves its metrics on a free port: ``peer.metrics_url``."""
        metrics_url = None
        if target == OBSERVED:
            address = '127.0.0.1:{}'.format(free_port())
            metrics_url = 'http://{}/metrics'.format(address)
            extra += ('--metrics-address', address)
        peer = Peer(self._label(target, 'server', scenario),
                    self._argv(target, 'serve', scenario, *extra),
                    self.workdir)
        peer.metrics_url = metrics_url
        try:
            peer.expect('READY', START_TIMEOUT)
        except BaseException:
            peer.stop()
            raise
        return peer

    def client(self, target, scenario, *extra):
        return Peer(self._label(target, 'client', scenario),
                    self._argv(target, 'client', scenario, *extra),
                    self.workdir)

    def client_result(self, target, scenario, *extra, timeout=300):
        with running(self.client(target, scenario, *extra)) as client:
            return client.result(timeout)

    # rounds

    def measure(self, scenario, targets, measure_one, key=None):
        """Run ``measure_one(target)`` for each target, ``--rounds`` times,
        rotating the order each round; record the runs under ``key``."""
        key = key or scenario
        targets = [t for t in targets if t in self.args.targets]
        entry = self.scenarios.setdefault(key, {'targets': {}})
        for target in targets:
            entry['targets'].setdefault(target, {'runs': []})
        for number in range(self.args.rounds):
            for target in rotated(targets, number):
                try:
                    result = measure_one(target)
                except BenchError as exc:
                    self.errors.append({'scenario': key, 'target': target,
                                        'round': number + 1,
                                        'error': str(exc)})
                    print('  {:<22} {:<17} round {}: FAILED: {}'.format(
                        key, target, number + 1,
                        str(exc).splitlines()[0]), flush=True)
                    continue
                entry['targets'][target]['runs'].append(result)
                print('  {:<22} {:<17} round {}: {}'.format(
                    key, target, number + 1, _brief(result)), flush=True)

    # scenarios

    def rpc_seq(self, target):
        with running(self.server(target, 'rpc_seq')) as server:
            result = self.client_result(
                target, 'rpc_seq', '--calls', self.args.calls,
                '--warmup', self.args.warmup)
            if target == OBSERVED:
                if not result.get('client_spans'):
                    raise BenchError('the observed client exported no '
                                     'spans: was tracing on?')
                # and the first call that answered, at least
                self.observed(server, result,
                              self.args.warmup + result['calls'] + 1)
            return result

    def rpc_par(self, target):
        with running(self.server(target, 'rpc_par')):
            return self.client_result(
                target, 'rpc_par', '--duration', self.args.duration,
                '--in-flight', self.args.in_flight)

    def rpc_scaleout(self, target):
        """rpc_par's client against each number of service processes in
        :data:`SCALEOUT_INSTANCES`, in an order that rotates from one
        measurement to the next; calls/s at the most over calls/s at one
        process is ``scaling``."""
        self._sweeps += 1
        run = {'in_flight': self.args.scaleout_in_flight}
        for instances in rotated(SCALEOUT_INSTANCES, self._sweeps - 1):
            run.update(self._scaleout(target, instances))
        run['scaling'] = (
            run[scaleout_key('calls_per_s', SCALEOUT_INSTANCES[-1])]
            / run[scaleout_key('calls_per_s', SCALEOUT_INSTANCES[0])])
        return run

    def _scaleout(self, target, instances):
        """``instances`` server processes of rpc_par's service (one queue)
        and rpc_par's client with ``--scaleout-in-flight`` calls: its
        calls/s and CPU share, and the servers' CPU time from just before
        the client started until it exited, over the client's measured
        time (the mean share of one core per process, and each
        process's), keyed by ``instances``."""
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(running(
                self.server(target, 'rpc_par'))) for _ in range(instances)]
            before = [server.cpu_seconds() for server in servers]
            result = self.client_result(
                target, 'rpc_par', '--duration', self.args.duration,
                '--in-flight', self.args.scaleout_in_flight)
            used = [server.cpu_seconds() - start
                    for server, start in zip(servers, before)]
        seconds = result['calls'] / result['calls_per_s']
        return {
            scaleout_key('calls_per_s', instances): result['calls_per_s'],
            scaleout_key('client_cpu_share', instances):
                result['client_cpu_share'],
            scaleout_key('server_cpu_share', instances):
                sum(used) / seconds / instances,
            scaleout_key('server_cpu_shares', instances):
                [cpu / seconds for cpu in used],
        }

    def events(self, target):
        purge_queue(self.args.uri, EVENT_QUEUE)
        seen_file = self.workdir / 'seen-{}'.format(self._counter)
        n = self.args.events
        with running(self.server(target, 'events', '--expect', n,
                                 '--seen-file', seen_file)):
            sent = self.client_result(target, 'events', '--events', n)
            deadline = time.monotonic() + 60 + n / 50
            while not seen_file.exists():
                if time.monotonic() > deadline:
                    raise BenchError('the handler did not see all {} events'
                                     .format(n))
                time.sleep(0.01)  # the harness polls; it is not timed
            seconds = float(seen_file.read_text()) - sent['start']
        return {'events': n, 'seconds': seconds, 'events_per_s': n / seconds,
                'publish_seconds': sent['published'] - sent['start']}

    def http(self, target):
        port = free_port()
        address = '127.0.0.1:{}'.format(port)
        with running(self.server(target, 'http', '--web-address',
                                 address)) as server:
            url = _Url('http://{}/hello'.format(address))
            self.loadgen.run(url, HTTP_WARM_UP)
            result = self.loadgen.run(url, self.args.http_seconds)
            if target == OBSERVED:
                self.observed(server, result, result['requests'])
            return result

    def observed(self, server, result, calls):
        """After a measured run of the observed target: the proof that
        metrics and tracing were on, added to ``result``. Scrapes the
        server's ``/metrics`` until :data:`OBSERVED_CALLS_METRIC` counts
        at least ``calls`` (``entrypoint_calls``), then stops the server
        and reads the spans it exported (``server_spans``, and
        ``server_span_kinds``). BenchError if either is missing."""
        deadline = time.monotonic() + OBSERVED_SCRAPE_TIMEOUT
        while True:
            counted = scrape_calls(server.metrics_url)
            if counted is not None and counted >= calls:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    '{} at {} counts {} entrypoint calls, not the {} '
                    'made'.format(OBSERVED_CALLS_METRIC, server.metrics_url,
                                  'no' if counted is None else counted,
                                  calls))
            time.sleep(0.1)  # the last workers are finishing; not timed
        result['entrypoint_calls'] = counted
        server.process.send_signal(signal.SIGTERM)
        try:
            spans = json.loads(server.read_line(STOP_TIMEOUT))
        except ValueError:
            raise BenchError('the observed server did not report its '
                             'spans' + server.log_tail())
        server.stop(signum=None)
        if not spans.get('server_spans'):
            raise BenchError('the observed server exported no spans: was '
                             'tracing on?')
        result.update(spans)

    def blocking_db(self, database, target):
        dsn = json.dumps(database.dsn)
        with running(self.server(target, 'blocking_db', '--db', database.kind,
                                 '--db-dsn', dsn)):
            return self.client_result(
                target, 'blocking_db', '--concurrency', self.args.concurrency)

    def sqlalchemy_db(self, db_url, target):
        with running(self.server(target, 'sqlalchemy_db',
                                 '--db-url', db_url)):
            return self.client_result(
                target, 'sqlalchemy_db', '--duration', self.args.duration,
                '--in-flight', self.args.in_flight)

    def ws_rpc(self, target):
        return self._websocket(
            target, 'ws_rpc', '--connections', self.args.ws_connections,
            '--warmup-s', WS_WARM_UP, '--duration', self.args.duration)

    def ws_fanout(self, target):
        return self._websocket(
            target, 'ws_fanout', '--subscribers', self.args.ws_subscribers,
            '--few', self.args.ws_few, '--broadcasts', self.args.ws_broadcasts,
            '--warmup-s', WS_WARM_UP)

    def _websocket(self, target, scenario, *extra):
        """The target's websocket service, and the load generator shared
        by all targets (one process, threadko's virtualenv) against it; the
        load generator reads the server's threads, RSS and CPU time from
        /proc."""
        port = free_port()
        address = '127.0.0.1:{}'.format(port)
        with running(self.server(target, scenario,
                                 '--web-address', address)) as server:
            argv = [self.pythons['threadko'], WS_LOADGEN, scenario,
                    '--port', port, '--server-pid', server.process.pid]
            loadgen = Peer(self._label(target, 'loadgen', scenario),
                           argv + list(extra), self.workdir)
            with running(loadgen):
                return loadgen.result(300)

    def footprint(self, target):
        """From starting the service to its first answer, then its RSS."""
        with running(self.client(target, 'footprint')) as client:
            client.expect('POLLING', START_TIMEOUT)
            start = time.monotonic()
            argv = self._run_command(target)
            server = Peer(self._label(target, 'run', 'footprint'), argv,
                          self.workdir)
            with running(server):
                answered = client.result(START_TIMEOUT)['first_answer']
                return {'startup_s': answered - start,
                        'rss_mib': server.rss_mib()}

    def _run_command(self, target):
        """The real ``run`` command a user types, for the echo service."""
        if target == 'threadko':
            return [self.pythons['threadko'], '-m', 'threadko', 'run',
                    '--broker', self.args.uri, 'threadko_peer:Echo']
        if target == 'nameko':
            nameko = Path(self.pythons['nameko']).with_name('nameko')
            return [nameko, 'run', '--broker', self.args.uri,
                    'nameko_peer:Echo']
        return self._argv(target, 'serve', 'footprint')

    # the whole run

    def prepare(self):
        wanted = set(self.args.targets)
        if 'nameko' in wanted:
            print('Nameko virtualenv: {}'.format(self.args.nameko_venv),
                  flush=True)
            self.pythons['nameko'] = str(nameko_venv.ensure_venv(
                Path(self.args.nameko_venv), NAMEKO_BENCH_PINS))
        if 'http' in self.args.scenarios:
            import bench.http
            self.loadgen = bench.http.choose_load_generator(
                argparse.Namespace(
                    install_wrk=False, loadgen=self.args.loadgen,
                    connections=self.args.connections, wrk_threads=1,
                    processes=os.cpu_count() or 1),
                str(self.workdir))
        self.machine = describe_machine(self)

    def run(self):
        self.prepare()
        for scenario in self.args.scenarios:
            print('{}:'.format(scenario), flush=True)
            started = time.monotonic()
            try:
                if scenario == 'http':
                    self.measure('http', HTTP_TARGETS, self.http)
                elif scenario == 'rpc_seq':
                    self.measure(scenario, RPC_SEQ_TARGETS, self.rpc_seq)
                elif scenario == 'blocking_db':
                    self.run_blocking_db()
                elif scenario == 'sqlalchemy_db':
                    self.run_sqlalchemy_db()
                elif scenario == 'rpc_scaleout':
                    self.measure(scenario, SCALEOUT_TARGETS,
                                 self.rpc_scaleout)
                elif scenario in ('ws_rpc', 'ws_fanout'):
                    self.measure(scenario, WS_TARGETS,
                                 getattr(self, scenario))
                else:
                    self.measure(scenario, AMQP_TARGETS,
                                 getattr(self, scenario))
            except Exception as exc:  # e.g. a database that would not start
                self.errors.append({'scenario': scenario, 'target': None,
                                    'round': None, 'error': repr(exc)})
                print('  {} FAILED: {!r}'.format(scenario, exc), flush=True)
            print('  ({:.0f} s)'.format(time.monotonic() - started),
                  flush=True)

    def run_blocking_db(self):
        from bench import databases
        databases.ensure_installed()
        for server_cls in (databases.MariaDB, databases.PostgreSQL):
            with server_cls(str(self.workdir / server_cls.__name__)) as db:
                self._record_version(db)
                self.measure(
                    'blocking_db', DB_TARGETS,
                    lambda target: self.blocking_db(db, target),
                    key='blocking_db_' + db.kind)

    def run_sqlalchemy_db(self):
        from bench import databases
        databases.ensure_installed()
        # a server of its own: blocking_db's is gone by now
        workdir = self.workdir / 'MariaDB-sqlalchemy'
        with databases.MariaDB(str(workdir)) as db:
            self._record_version(db)
            db_url = sqlalchemy_url(db.dsn)
            create_sqlalchemy_table(db_url)
            self.measure('sqlalchemy_db', DB_TARGETS,
                         lambda target: self.sqlalchemy_db(db_url, target))

    def _record_version(self, db):
        """The server's version, under the key bench/report.py shows
        (``mariadb``, ``postgresql``), without the name it starts with."""
        key = {'mysql': 'mariadb', 'postgres': 'postgresql'}[db.kind]
        self.machine[key] = db.version.split()[-1]

    def results(self, started, finished):
        return {
            'started': started, 'finished': finished,
            'command': ' '.join(['python -m bench'] + sys.argv[1:]),
            'machine': self.machine,
            'options': {
                'rounds': self.args.rounds, 'calls': self.args.calls,
                'warmup': self.args.warmup,
                'in_flight': self.args.in_flight,
                'scaleout_in_flight': self.args.scaleout_in_flight,
                'scaleout_instances': list(SCALEOUT_INSTANCES),
                'duration': self.args.duration, 'events': self.args.events,
                'connections': self.args.connections,
                'http_seconds': self.args.http_seconds,
                'concurrency': self.args.concurrency,
                'max_workers': 10,
                'web_threads': THREADKO_WEB_THREADS,
                'ws_connections': self.args.ws_connections,
                'ws_subscribers': self.args.ws_subscribers,
                'ws_few': self.args.ws_few,
                'ws_broadcasts': self.args.ws_broadcasts,
            },
            'scenarios': self.scenarios,
            'errors': self.errors,
        }


class _Url:
    """What bench/http.py's load generators take: something with a url."""

    def __init__(self, url):
        self.url = url
        self.port = int(url.split(':')[2].split('/')[0])


def rotated(items, number):
    """``items`` (a sequence) starting ``number`` places on, wrapping
    round: the order of the ``number``-th round."""
    shift = number % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def scaleout_key(metric, instances):
    """The name of an rpc_scaleout run's ``metric`` with ``instances``
    service processes (``calls_per_s_x4``)."""
    return '{}_x{}'.format(metric, instances)


def _brief(result):
    shown = []
    for name in ('calls_per_s', 'events_per_s', 'requests_per_s', 'p50_ms',
                 'p99_ms', 'concurrency', 'wall_s', 'startup_s', 'rss_mib',
                 'fanout_ms', 'threads_few', 'threads_many', 'rss_many_mib',
                 'server_cpu_share', 'client_cpu_share', 'entrypoint_calls',
                 'server_spans', 'client_spans') + tuple(
                     scaleout_key('calls_per_s', instances)
                     for instances in SCALEOUT_INSTANCES) + ('scaling',):
        if name in result:
            shown.append('{} {:,{}}'.format(name, result[name], 'd' if (
                isinstance(result[name], int)) else '.2f'))
    return '  '.join(shown)


def sqlalchemy_url(dsn):
    """The SQLAlchemy URL (MySQLdb, through the unix socket) of a
    :class:`bench.databases.MariaDB` server's ``dsn``."""
    return ('mysql+mysqldb://{user}:{password}@localhost/{database}'
            '?unix_socket={socket}&charset=utf8mb4'.format(
                user=quote(dsn['user'], safe=''),
                password=quote(dsn['password'], safe=''),
                database=quote(dsn['database'], safe=''),
                socket=quote(dsn['unix_socket'], safe='/')))


def create_sqlalchemy_table(db_url):
    """Create the ``sqlalchemy_db`` table (the services' own model) with
    :data:`SQLALCHEMY_ROWS` rows, in the harness (so with threadko's
    SQLAlchemy), before any target runs."""
    import sqlalchemy
    from services import sqlalchemy_models

    base, item = sqlalchemy_models()
    engine = sqlalchemy.create_engine(db_url)
    try:
        base.metadata.drop_all(engine)
        base.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(item.__table__.insert(), [
                {'code': SQLALCHEMY_CODE.format(number), 'hits': 0}
                for number in range(SQLALCHEMY_ROWS)])
    finally:
        engine.dispose()


def scrape_calls(url):
    """The sum of :data:`OBSERVED_CALLS_METRIC` over its labels in the
    Prometheus text at ``url`` (parsed by prometheus_client's parser);
    None if the page has no such sample. BenchError if it cannot be
    read or parsed."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return calls_counted(text)
    except (OSError, ValueError) as exc:
        raise BenchError('cannot scrape {}: {!r}'.format(url, exc))


def calls_counted(text):
    """The sum of :data:`OBSERVED_CALLS_METRIC`'s samples in ``text``
    (Prometheus text), None if it has none."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [sample.value
              for family in text_string_to_metric_families(text)
              for sample in family.samples
              if sample.name == OBSERVED_CALLS_METRIC]
    return int(sum(values)) if values else None


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def purge_queue(uri, queue):
    """Empty ``queue`` if it exists (a failed earlier run may have left a
    backlog there that would be counted)."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return  # no such queue yet
        channel.queue_purge(queue)
    finally:
        if connection.is_open:
            connection.close()


def rabbitmq_version(uri):
    params = pika.URLParameters(uri)
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError as exc:
        raise SystemExit('no RabbitMQ answers at {} ({!r}); '
                         'scripts/bench starts one'.format(uri, exc))
    try:
        properties = connection._impl.server_properties
        return properties.get('version', b'?').decode() if isinstance(
            properties.get('version'), bytes) else str(
                properties.get('version', '?'))
    finally:
        connection.close()


def describe_machine(bench):
    cpu = platform.processor() or '?'
    memory_gib = None
    with contextlib.suppress(OSError, AttributeError):
        with open('/proc/cpuinfo') as info:
            cpu = re.search(r'^model name\s*:\s*(.*)$', info.read(),
                            re.M).group(1)
    with contextlib.suppress(OSError, AttributeError):
        with open('/proc/meminfo') as info:
            kib = int(re.search(r'^MemTotal:\s+(\d+)', info.read(),
                                re.M).group(1))
            memory_gib = round(kib / 1024 / 1024)
    machine = {
        'cpus': os.cpu_count(), 'cpu_model': cpu, 'memory_gib': memory_gib,
        'python': platform.python_version(),
        'rabbitmq': rabbitmq_version(bench.args.uri),
    }
    for dist in ('threadko', 'pika', 'waitress', 'werkzeug'):
        machine[dist] = dist_version(dist)
    if {'ws_rpc', 'ws_fanout'} & set(bench.args.scenarios):
        machine['wsproto'] = dist_version('wsproto')
    if 'sqlalchemy_db' in bench.args.scenarios:
        with contextlib.suppress(PackageNotFoundError):
            machine['sqlalchemy'] = dist_version('SQLAlchemy')
    if OBSERVED in bench.args.targets and {'rpc_seq', 'http'} & set(
            bench.args.scenarios):
        for dist in ('opentelemetry-sdk', 'prometheus_client'):
            with contextlib.suppress(PackageNotFoundError):
                machine[dist.replace('-', '_')] = dist_version(dist)
    if 'nameko' in bench.pythons:
        found = subprocess.run(
            [bench.pythons['nameko'], '-c',
             'from importlib.metadata import version as v; '
             'print(v("nameko"), v("eventlet"), v("kombu"), '
             'v("nameko-sqlalchemy"), v("SQLAlchemy"))'],
            stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        machine.update(nameko=found[0], eventlet=found[1], kombu=found[2])
        if 'sqlalchemy_db' in bench.args.scenarios:
            machine['nameko_sqlalchemy'] = '{} (SQLAlchemy {})'.format(
                found[3], found[4])
    loadgen = getattr(bench, 'loadgen', None)
    if loadgen is not None:
        machine['loadgen'] = '{} {}'.format(loadgen.name, loadgen.version)
    return machine


def write_results(results, path=None):
    RESULTS_DIR.mkdir(exist_ok=True)
    ignore = RESULTS_DIR / '.gitignore'
    if not ignore.exists():
        ignore.write_text('# bench results stay local; docs/benchmarks.md '
                          'records the published run\n*\n')
    if path is None:
        path = RESULTS_DIR / 'bench-{}.json'.format(
            time.strftime('%Y%m%d-%H%M%S'))
    path = Path(path)
    path.write_text(json.dumps(results, indent=2) + '\n')
    return path


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')


def _names(valid):
    def parse(text):
        names = [name.strip() for name in text.split(',') if name.strip()]
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise argparse.ArgumentTypeError('unknown: {} (choose from {})'
                                             .format(', '.join(unknown),
                                                     ', '.join(valid)))
        return names
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--uri', default=DEFAULT_URI)
    parser.add_argument('--scenarios', type=_names(SCENARIOS),
                        default=list(SCENARIOS),
                        help='comma-separated subset of: ' + ', '.join(
                            SCENARIOS))
    parser.add_argument('--targets', type=_names(
        sorted(set(AMQP_TARGETS + HTTP_TARGETS))),
        default=list(AMQP_TARGETS + (OBSERVED, 'waitress')))
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--calls', type=int, default=2000)
    parser.add_argument('--warmup', type=int, default=200)
    parser.add_argument('--duration', type=float, default=10)
    parser.add_argument('--in-flight', type=int, default=32)
    parser.add_argument('--scaleout-in-flight', type=int, default=64,
                        help='rpc_scaleout: calls in flight, whatever the '
                             'number of service processes (4 of them take '
                             '4 x max_workers = 40 at once)')
    parser.add_argument('--events', type=int, default=5000)
    parser.add_argument('--connections', type=int, default=32)
    parser.add_argument('--http-seconds', type=float, default=5)
    parser.add_argument('--loadgen', choices=('auto', 'wrk', 'python'),
                        default='auto')
    parser.add_argument('--concurrency', type=int, default=20)
    parser.add_argument('--ws-connections', type=int, default=32,
                        help='ws_rpc: websockets, each calling call after '
                             'call')
    parser.add_argument('--ws-subscribers', type=int, default=2000,
                        help='ws_fanout: subscribed websockets (--quick '
                             'keeps it)')
    parser.add_argument('--ws-few', type=int, default=10,
                        help='ws_fanout: the subscribed websockets of the '
                             'first thread count')
    parser.add_argument('--ws-broadcasts', type=int, default=5,
                        help='ws_fanout: broadcasts timed per run')
    parser.add_argument('--quick', action='store_true',
                        help='tiny counts and one round: checks that the '
                             'harness works, measures nothing')
    parser.add_argument('--nameko-venv', default=str(NAMEKO_BENCH_VENV))
    parser.add_argument('--output', help='results JSON path (default: '
                        'bench/results/bench-<time>.json)')
    parser.add_argument('--no-docs', action='store_true',
                        help='do not regenerate docs/benchmarks.md')
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.warmup = 1, 50, 5
        args.duration, args.events, args.http_seconds = 1, 100, 1
        args.concurrency = 4
    return args


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix='threadko-bench-')
    started = _now()
    try:
        bench = Bench(args, workdir)
        try:
            bench.run()
        except KeyboardInterrupt:
            print('interrupted: writing what was measured', flush=True)
        results = bench.results(started, _now())
        path = write_results(results, args.output)
        print('results: {}'.format(path), flush=True)
        if not args.no_docs:
            from bench import report
            report.render(results, REPO_ROOT / 'docs' / 'benchmarks.md',
                          REPO_ROOT / 'docs' / '_static' / 'benchmarks.png')
            print('wrote docs/benchmarks.md and docs/_static/benchmarks.png',
                  flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bench.errors else 0
