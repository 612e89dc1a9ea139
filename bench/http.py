"""HTTP throughput and latency of threadko's ``@http`` (not a test).

Usage::

    .venv/bin/python bench/http.py [--seconds 5] [--rounds 3]
                                   [--connections 32] [--tuned-workers N]
                                   [--loadgen auto|wrk|python]
                                   [--install-wrk] [--json PATH]

A hello-world ``GET /hello`` (13-byte ``text/plain`` body) is served by,
each in its own process (the load generator never shares their GIL):

- ``threadko``: ``threadko run`` of a service with one
  ``@http('GET', '/hello')`` method, default config (``max_workers`` 10,
  so 12 waitress threads);
- ``waitress``: a bare waitress + werkzeug app (``Request``, a ``Map``
  with one ``Rule``, ``Response``) run by ``waitress.serve`` with the same
  thread count;
- ``threadko-tuned`` and ``waitress-tuned``: the same with
  ``max_workers`` = ``--tuned-workers`` (default: one per connection) and
  threads = that + 2 (skipped with ``--tuned-workers 0``).

All servers start first; then each round measures every target in turn
(A, B, A', B', then again), each for a 1 s warm-up and ``--seconds`` of
load from ``--connections`` keep-alive connections. The table shows the
median over the rounds of requests/s, p50 and p99 latency, and the
server's CPU time per request (Linux), and the ratio threadko / waitress.
The full results go to a JSON file under ``bench/results/``.

The load generator is ``wrk`` when installed (``--install-wrk`` runs
``apt-get install -y wrk`` first), else a Python one: one process per core,
each driving its share of the connections from a selector loop. Load
generator and servers share the machine's cores.
"""

import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
if __name__ in ('__main__', '__mp_main__'):
    # run as a script, this directory comes first on sys.path, where this
    # file (http.py) would hide the standard library's ``http`` package
    sys.path[:] = [entry for entry in sys.path
                   if os.path.realpath(entry or os.curdir) != HERE]
    sys.path.insert(0, os.path.dirname(HERE))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from threadko.web.handlers import http  # noqa: E402
from bench.peers.waitress_peer import hello_app  # noqa: E402

PATH = '/hello'
BODY = 'Hello, world!'
SERVICE_MODULE = 'threadko_bench_http'  # this file, as threadko run sees it
RESULTS_DIR = os.path.join(HERE, 'results')
WARM_UP_SECONDS = 1
DEFAULT_MAX_WORKERS = 10  # threadko's default
SPARE_THREADS = 2  # threadko's WEB_SERVER_THREADS = max_workers + 2


class BenchHello:
    name = 'bench_hello'

    @http('GET', PATH)
    def hello(self, request):
        return BODY


def serve_bare(port, threads):
    """``--serve-waitress``: the bare app, in this process, until SIGTERM."""
    import waitress
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    waitress.serve(hello_app(), host='127.0.0.1', port=port, threads=threads,
                   clear_untrusted_proxy_headers=False)


# -- server processes --------------------------------------------------

class Target:
    """One server under test, in its own process."""

    def __init__(self, name, kind, threads, max_workers=None, tuned=False):
        self.name, self.kind = name, kind
        self.threads, self.max_workers = threads, max_workers
        self.tuned = tuned  # threadko: set max_workers, else keep defaults
        self.port = free_port()
        self.process = None
        self.log_path = None

    @property
    def url(self):
        return 'http://127.0.0.1:{}{}'.format(self.port, PATH)

    def start(self, workdir):
        if self.kind == 'threadko':
            command = [
                sys.executable, '-m', 'threadko', 'run',
                '-d', 'WEB_SERVER_ADDRESS=127.0.0.1:{}'.format(self.port),
                # threadko's default 10 s would only slow down our exit
                '-d', 'WEB_SERVER_STOP_TIMEOUT=2']
            if self.tuned:
                command += ['-d', 'max_workers={}'.format(self.max_workers)]
            command.append('{}:BenchHello'.format(SERVICE_MODULE))
        else:
            command = [sys.executable, os.path.abspath(__file__),
                       '--serve-waitress', str(self.port),
                       '--threads', str(self.threads)]
        self.log_path = os.path.join(workdir, self.name + '.log')
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [workdir, os.path.dirname(HERE)]
            + [p for p in [os.environ.get('PYTHONPATH')] if p]))
        with open(self.log_path, 'wb') as log:
            # a session of its own: a Ctrl-C meant for us does not reach
            # it, we stop it ourselves
            self.process = subprocess.Popen(
                command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    def wait_until_serving(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError('{} exited with status {}:\n{}'.format(
                    self.name, self.process.returncode, self.log_tail()))
            try:
                status, body = http_get('127.0.0.1', self.port, PATH)
                if status == 200 and body == BODY.encode():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError('{} is not answering on port {}:\n{}'
                                   .format(self.name, self.port,
                                           self.log_tail()))
            time.sleep(0.1)  # still starting

    def cpu_seconds(self):
        """user + system CPU time of the server process so far (Linux)."""
        try:
            with open('/proc/{}/stat'.format(self.process.pid)) as stat:
                fields = stat.read().rsplit(')', 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf(
                'SC_CLK_TCK')
        except (OSError, ValueError, IndexError):
            return None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors='replace') as log:
                return ''.join(log.readlines()[-lines:])
        except OSError:
            return ''

    def terminate(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def reap(self, deadline):
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent():
    # Linux: SIGTERM the server should this script die without cleaning up
    try:
        import ctypes
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


def stop_all(targets, timeout=15):
    for target in targets:
        target.terminate()
    deadline = time.monotonic() + timeout
    for target in targets:
        target.reap(deadline)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def http_get(host, port, path, timeout=5):
    """One GET on a fresh connection: ``(status, body)``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(host, port, path, close=True))
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    return int(head[9:12]), body


def request_bytes(host, port, path, close=False):
    return ('GET {} HTTP/1.1\r\nHost: {}:{}\r\n{}\r\n'.format(
        path, host, port, 'Connection: close\r\n' if close else '')).encode()


# -- load generators ---------------------------------------------------

WRK_SCRIPT = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'THREADKO_BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, ' ..
    '"p99_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
'''


class Wrk:
    name = 'wrk'

    def __init__(self, workdir, connections, threads):
        self.connections, self.threads = connections, threads
        self.script = os.path.join(workdir, 'report.lua')
        with open(self.script, 'w') as script:
            script.write(WRK_SCRIPT)
        version = subprocess.run(['wrk', '-v'], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True).stdout
        match = re.search(r'wrk (\S+)', version)
        self.version = match.group(1) if match else '?'

    def run(self, target, seconds):
        completed = subprocess.run(
            ['wrk', '-t', str(min(self.threads, self.connections)),
             '-c', str(self.connections), '-d', '{}s'.format(seconds),
             '--timeout', '10s', '-s', self.script, target.url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        match = re.search(r'^THREADKO_BENCH (.*)$', completed.stdout, re.M)
        if completed.returncode != 0 or match is None:
            raise RuntimeError('wrk failed:\n' + completed.stdout)
        report = json.loads(match.group(1))
        duration = report['duration_us'] / 1e6
        errors = sum(report['errors'].values())
        return {
            'requests': report['requests'],
            'requests_per_s': report['requests'] / duration,
            'p50_ms': report['p50_us'] / 1000,
            'p99_ms': report['p99_us'] / 1000,
            'errors': errors,
            'error_kinds': {k: v for k, v in report['errors'].items() if v},
        }


class PythonLoad:
    """Keep-alive GETs from ``processes`` processes, each driving its share
    of the connections from one selector loop (one request in flight per
    connection, like wrk)."""

    name = 'python'
    version = 'bench/http.py built-in'

    def __init__(self, connections, processes):
        self.connections = connections
        self.processes = max(1, min(processes, connections))
        self.context = multiprocessing.get_context(
            'fork' if 'fork' in multiprocessing.get_all_start_methods()
            else 'spawn')

    def run(self, target, seconds):
        shares = [self.connections // self.processes
                  + (1 if i < self.connections % self.processes else 0)
                  for i in range(self.processes)]
        barrier = self.context.Barrier(self.processes + 1)
        results = self.context.Queue()
        procs = [self.context.Process(
            target=_load_process, daemon=True,
            args=(target.port, share, seconds, barrier, results))
            for share in shares]
        try:
            for proc in procs:
                proc.start()
            try:
                barrier.wait(60)  # every connection is open
            except threading.BrokenBarrierError:
                pass  # a process failed: its report says why
            reports = [results.get(timeout=seconds + 60) for _ in procs]
            for proc in procs:
                proc.join(10)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        failed = [r['failed'] for r in reports if r.get('failed')]
        if failed:
            raise RuntimeError('load generator failed: ' + failed[0])
        latencies = sorted(t for r in reports for t in r['latencies'])
        errors = sum(r['errors'] for r in reports)
        return {
            'requests': len(latencies),
            'requests_per_s': len(latencies) / seconds,
            'p50_ms': percentile(latencies, 50) * 1000,
            'p99_ms': percentile(latencies, 99) * 1000,
            'errors': errors,
            'error_kinds': {'status or connection': errors} if errors else {},
        }


def _load_process(port, connections, seconds, barrier, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    report = {'latencies': [], 'errors': 0}
    try:
        _drive(port, connections, seconds, barrier, report)
    except Exception as exc:
        report['failed'] = '{}: {}'.format(type(exc).__name__, exc)
        barrier.abort()
    results.put(report)


_CONTENT_LENGTH = re.compile(rb'\r\ncontent-length:\s*(\d+)', re.I)
_CONNECTION_CLOSE = re.compile(rb'\r\nconnection:\s*close', re.I)


def _drive(port, connections, seconds, barrier, report):
    request = request_bytes('127.0.0.1', port, PATH)
    latencies = report['latencies']
    selector = selectors.DefaultSelector()
    clock = time.perf_counter

    def connect():
        sock = socket.create_connection(('127.0.0.1', port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {'sock': sock, 'buffer': bytearray(), 'sent': None}
        selector.register(sock, selectors.EVENT_READ, state)
        return state

    def send(state):
        state['sent'] = clock()
        state['sock'].sendall(request)

    def reconnect(state):
        report['errors'] += 1
        selector.unregister(state['sock'])
        state['sock'].close()
        send(connect())

    states = [connect() for _ in range(connections)]
    barrier.wait(60)
    end = clock() + seconds
    for state in states:
        send(state)
    while True:
        now = clock()
        if now >= end:
            break
        for key, _ in selector.select(end - now):
            state = key.data
            try:
                data = state['sock'].recv(65536)
            except OSError:
                data = b''
            if not data:
                reconnect(state)
                continue
            buffer = state['buffer']
            buffer += data
            head_end = buffer.find(b'\r\n\r\n')
            if head_end < 0:
                continue
            head = bytes(buffer[:head_end])
            length = _CONTENT_LENGTH.search(head)
            if length is None:
                raise RuntimeError('a response without Content-Length')
            total = head_end + 4 + int(length.group(1))
            if len(buffer) < total:
                continue
            done = clock()
            del buffer[:total]
            if head[9:12] == b'200':
                latencies.append(done - state['sent'])
            else:
                report['errors'] += 1
            if _CONNECTION_CLOSE.search(head):
                reconnect(state)
            elif done < end:
                send(state)
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()


def percentile(sorted_values, percent):
    if not sorted_values:
        return float('nan')
    index = max(0, int(round(len(sorted_values) * percent / 100.0)) - 1)
    return sorted_values[index]


def choose_load_generator(args, workdir):
    if args.install_wrk and shutil.which('wrk') is None:
        print('installing wrk: apt-get install -y wrk', flush=True)
        if subprocess.run(['apt-get', 'install', '-y', 'wrk']).returncode:
            sys.exit('apt-get install -y wrk failed (as root? after '
                     'apt-get update?); --loadgen python needs nothing')
    if args.loadgen == 'wrk' or (args.loadgen == 'auto'
                                 and shutil.which('wrk')):
        if shutil.which('wrk') is None:
            sys.exit('wrk is not installed (try --install-wrk, or '
                     '--loadgen python)')
        return Wrk(workdir, args.connections, args.wrk_threads)
    return PythonLoad(args.connections, args.processes)


# -- the run -----------------------------------------------------------

def make_targets(tuned_workers):
    threads = DEFAULT_MAX_WORKERS + SPARE_THREADS
    targets = [Target('threadko', 'threadko', threads, DEFAULT_MAX_WORKERS),
               Target('waitress', 'waitress', threads)]
    if tuned_workers:
        threads = tuned_workers + SPARE_THREADS
        targets += [
            Target('threadko-tuned', 'threadko', threads, tuned_workers,
                   tuned=True),
            Target('waitress-tuned', 'waitress', threads)]
    return targets


def measure(loadgen, target, seconds):
    loadgen.run(target, WARM_UP_SECONDS)
    cpu_before = target.cpu_seconds()
    result = loadgen.run(target, seconds)
    cpu_after = target.cpu_seconds()
    if cpu_before is not None and cpu_after is not None and result[
            'requests']:
        result['server_cpu_ms_per_request'] = (
            (cpu_after - cpu_before) * 1000 / result['requests'])
    return result


def summarise(targets, rounds):
    summary = {}
    for target in targets:
        runs = [r[target.name] for r in rounds]
        entry = {key: statistics.median(run[key] for run in runs)
                 for key in ('requests_per_s', 'p50_ms', 'p99_ms')}
        cpu = [run['server_cpu_ms_per_request'] for run in runs
               if 'server_cpu_ms_per_request' in run]
        if cpu:
            entry['server_cpu_ms_per_request'] = statistics.median(cpu)
        entry['errors'] = sum(run['errors'] for run in runs)
        summary[target.name] = entry
    return summary


def ratios(summary, rounds):
    found = {}
    for suffix in ('', '-tuned'):
        ours, theirs = 'threadko' + suffix, 'waitress' + suffix
        if ours in summary and theirs in summary:
            found[ours + ' / ' + theirs] = {
                'of_medians': (summary[ours]['requests_per_s']
                               / summary[theirs]['requests_per_s']),
                'per_round': [r[ours]['requests_per_s']
                              / r[theirs]['requests_per_s'] for r in rounds],
            }
    return found


def print_table(targets, summary, found, rounds_count):
    print()
    print('median of {} round(s)'.format(rounds_count))
    print('{:<16} {:>7} {:>7} {:>9} {:>9} {:>9} {:>12} {:>6}'.format(
        'target', 'workers', 'threads', 'req/s', 'p50 ms', 'p99 ms',
        'cpu ms/req', 'errors'))
    for target in targets:
        entry = summary[target.name]
        cpu = entry.get('server_cpu_ms_per_request')
        print('{:<16} {:>7} {:>7} {:>9,.0f} {:>9.2f} {:>9.2f} {:>12} {:>6}'
              .format(target.name, target.max_workers or '-',
                      target.threads, entry['requests_per_s'],
                      entry['p50_ms'], entry['p99_ms'],
                      '-' if cpu is None else '{:.3f}'.format(cpu),
                      entry['errors']))
    print()
    for name, ratio in found.items():
        print('{:<34} {:.2f}x  (per round: {}; target >= 0.9x: {})'.format(
            name, ratio['of_medians'],
            ', '.join('{:.2f}'.format(r) for r in ratio['per_round']),
            'met' if ratio['of_medians'] >= 0.9 else 'NOT met'))


def environment(loadgen, args):
    from importlib.metadata import version
    cpu = platform.processor() or '?'
    try:
        with open('/proc/cpuinfo') as info:
            cpu = re.search(r'^model name\s*:\s*(.*)$', info.read(),
                            re.M).group(1)
    except (OSError, AttributeError):
        pass
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        'python': platform.python_version(),
        'platform': platform.platform(),
        'cpu': cpu,
        'cores': os.cpu_count(),
        'waitress': version('waitress'),
        'werkzeug': version('werkzeug'),
        'load_generator': loadgen.name,
        'load_generator_version': loadgen.version,
        'connections': args.connections,
        'seconds': args.seconds,
        'warm_up_seconds': WARM_UP_SECONDS,
        'rounds': args.rounds,
    }


def write_json(path, data):
    if path is None:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        ignore = os.path.join(RESULTS_DIR, '.gitignore')
        if not os.path.exists(ignore):
            with open(ignore, 'w') as f:
                f.write('# generated by bench/http.py: results stay local\n'
                        '*\n')
        path = os.path.join(RESULTS_DIR, 'http-{}.json'.format(
            time.strftime('%Y%m%d-%H%M%S')))
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
        f.write('\n')
    return path


def run(args):
    workdir = tempfile.mkdtemp(prefix='threadko-bench-http-')
    targets = []
    try:
        os.symlink(os.path.abspath(__file__),
                   os.path.join(workdir, SERVICE_MODULE + '.py'))
        loadgen = choose_load_generator(args, workdir)
        targets = make_targets(args.tuned_workers)
        for target in targets:
            target.start(workdir)
        for target in targets:
            target.wait_until_serving()
        print('load generator: {} ({}), {} connections, {} s per '
              'measurement, {} round(s)'.format(
                  loadgen.name, loadgen.version, args.connections,
                  args.seconds, args.rounds), flush=True)

        rounds = []
        for number in range(1, args.rounds + 1):
            results = {}
            for target in targets:
                result = measure(loadgen, target, args.seconds)
                results[target.name] = result
                print('round {}  {:<16} {:>9,.0f} req/s  p50 {:6.2f} ms  '
                      'p99 {:7.2f} ms  errors {}'.format(
                          number, target.name, result['requests_per_s'],
                          result['p50_ms'], result['p99_ms'],
                          result['errors']), flush=True)
            rounds.append(results)
    finally:
        stop_all(targets)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(targets, rounds)
    found = ratios(summary, rounds)
    print_table(targets, summary, found, len(rounds))
    path = write_json(args.json, {
        'environment': environment(loadgen, args),
        'targets': {t.name: {'kind': t.kind, 'threads': t.threads,
                             'max_workers': t.max_workers} for t in targets},
        'summary': summary,
        'ratios': found,
        'rounds': rounds,
    })
    print('\nresults: {}'.format(os.path.relpath(path)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=int, default=5,
                        help='measurement length per target and round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--connections', type=int, default=32)
    parser.add_argument('--tuned-workers', type=int,
                        help='max_workers of the tuned pair (default: '
                             '--connections, a worker per connection; 0: '
                             'skip the pair)')
    parser.add_argument('--loadgen', choices=['auto', 'wrk', 'python'],
                        default='auto')
    parser.add_argument('--install-wrk', action='store_true',
                        help='apt-get install -y wrk if it is missing')
    parser.add_argument('--wrk-threads', type=int, default=1)
    parser.add_argument('--processes', type=int,
                        default=os.cpu_count() or 1,
                        help='Python load generator processes')
    parser.add_argument('--json', metavar='PATH',
                        help='where to write the results (default: '
                             'bench/results/http-<time>.json)')
    parser.add_argument('--serve-waitress', type=int, metavar='PORT',
                        help=argparse.SUPPRESS)
    parser.add_argument('--threads', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_waitress:
        return serve_bare(args.serve_waitress, args.threads)
    if args.tuned_workers is None:
        args.tuned_workers = args.connections
    # SIGTERM: clean up as for Ctrl-C
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        run(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == '__main__':
    main()
