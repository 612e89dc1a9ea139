"""What every benchmark peer shares: names, payloads, arguments and the
measurements, so each target is timed by the same definition.

Standard library only: it is imported by the threadko peer, the Nameko
peer (in the Nameko virtualenv, under eventlet) and the raw pika peer.
"""

import argparse
import collections
import json
import os
import random
import statistics
import sys
import threading
import time

SERVICE = 'bench_echo'
SOURCE_SERVICE = 'bench_source'
EVENT_TYPE = 'bench_event'
PAYLOAD = 'payload'
HELLO = 'Hello, world!'
DB_SLEEP = 0.1  # seconds each blocking_db call spends in the database
SQLALCHEMY_ROWS = 1000  # rows of the sqlalchemy_db table; a call picks one
SQLALCHEMY_CODE = 'item-{:05d}'  # the code of row number n
SQLALCHEMY_WARM_UP = 1.0  # seconds of sqlalchemy_db load before measuring
WS_SERVICE = 'bench_ws'  # the ws_rpc and ws_fanout service
WS_ECHO = 'echo'  # its @rpc methods (websocket rpc)
WS_SUBSCRIBE = 'subscribe'
WS_BROADCAST = 'broadcast'
WS_CHANNEL = 'bench'  # the hub channel every ws_fanout socket subscribes to
WS_EVENT = 'bench_event'  # the event ws_fanout broadcasts

SCENARIOS = ('rpc_seq', 'rpc_par', 'events', 'http', 'blocking_db',
             'sqlalchemy_db', 'footprint', 'ws_rpc', 'ws_fanout')


def add_arguments(parser):
    """The command line every peer understands."""
    parser.add_argument('role', choices=('serve', 'client'))
    parser.add_argument('scenario', choices=SCENARIOS)
    parser.add_argument('--uri', default='amqp://guest:guest@localhost')
    parser.add_argument('--calls', type=int, default=2000)
    parser.add_argument('--warmup', type=int, default=200)
    parser.add_argument('--duration', type=float, default=10)
    parser.add_argument('--in-flight', type=int, default=32)
    parser.add_argument('--events', type=int, default=5000)
    parser.add_argument('--expect', type=int, default=0,
                        help='serve events: events to count before '
                             'writing --seen-file')
    parser.add_argument('--seen-file', default=None)
    parser.add_argument('--concurrency', type=int, default=20)
    parser.add_argument('--db', choices=('mysql', 'postgres'),
                        default='mysql')
    parser.add_argument('--db-dsn', default='{}',
                        help='JSON object of connect() keyword arguments')
    parser.add_argument('--db-url', default=None,
                        help='sqlalchemy_db: the SQLAlchemy URL of the '
                             'database')
    parser.add_argument('--web-address', default='127.0.0.1:8000')


def parse_arguments(doc, more_arguments=None):
    """The peer's command line, described by its module docstring's first
    paragraph; ``more_arguments(parser)`` adds the peer's own options."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    add_arguments(parser)
    if more_arguments is not None:
        more_arguments(parser)
    return parser.parse_args()


def run_peer(doc, serve, client, more_arguments=None):
    """A peer's ``main()``: ``serve(args)`` or ``client(args)``, as the
    command line says (with ``more_arguments``, as
    :func:`parse_arguments`)."""
    args = parse_arguments(doc, more_arguments)
    (serve if args.role == 'serve' else client)(args)


def raise_open_files_limit():
    """Let this process open as many descriptors as the hard limit allows
    (each websocket is one)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # the run fails later, saying which socket it could not open


#: functions of no arguments, each returning a dict of fields that
#: :func:`emit` adds to a client's result (called once the measuring is
#: done: the observed threadko peer's span counts)
result_extras = []


def emit(result):
    """Print a client's result: one JSON object on one line, with the
    fields of :data:`result_extras`."""
    for extra in result_extras:
        result.update(extra())
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()


def seen_file_writer(expect, path):
    """A function to call once per handled event; the ``expect``-th call
    writes the time (``time.monotonic()``, comparable between processes
    on Linux) to ``path``."""
    lock = threading.Lock()  # handlers may run on several threads
    count = [0]

    def mark_seen():
        with lock:
            count[0] += 1
            done = count[0] == expect
        if done:
            partial = path + '.tmp'
            with open(partial, 'w') as file:
                file.write(repr(time.monotonic()))
            os.replace(partial, path)
    return mark_seen


def sequential_calls(call, calls):
    """``calls`` calls of ``call()`` one after another: calls/s, and the
    p50 and p99 latency in milliseconds."""
    latencies = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        'calls': calls,
        'calls_per_s': calls / elapsed,
        'p50_ms': statistics.median(latencies) * 1000,
        'p99_ms': latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


def _loop_result(calls, start, cpu_start, in_flight):
    """What a load loop started at ``start`` (``time.perf_counter()``)
    and ``cpu_start`` (``time.process_time()``) made of ``calls`` calls:
    calls/s, and this process's CPU time over the loop's wall time."""
    elapsed = time.perf_counter() - start
    return {'calls': calls, 'calls_per_s': calls / elapsed,
            'in_flight': in_flight,
            'client_cpu_share': (time.process_time() - cpu_start) / elapsed}


def timed_pipeline(start_call, wait, in_flight, duration):
    """Keep ``in_flight`` calls outstanding from one thread for
    ``duration`` seconds: ``start_call()`` begins one and returns a handle,
    ``wait(handle)`` waits for its answer (oldest first)."""
    pending = collections.deque()
    done = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + duration
    for _ in range(in_flight):
        pending.append(start_call())
    while pending:
        wait(pending.popleft())
        done += 1
        if time.perf_counter() < end:
            pending.append(start_call())
    return _loop_result(done, start, cpu_start, in_flight)


def threaded_loop(call, threads, duration):
    """``threads`` threads calling ``call()`` in a loop for ``duration``
    seconds: calls/s."""
    counts = [0] * threads
    stop = threading.Event()

    def caller(index):
        while not stop.is_set():
            call()
            counts[index] += 1

    workers = [threading.Thread(target=caller, args=(index,),
                                name='bench-caller-{}'.format(index))
               for index in range(threads)]
    cpu_start = time.process_time()
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    stop.wait(duration)
    stop.set()
    for worker in workers:
        worker.join()
    return _loop_result(sum(counts), start, cpu_start, threads)


def _with_latencies(result, latencies):
    """``result`` with the p50 and p99 of ``latencies`` (seconds) in
    milliseconds."""
    latencies.sort()
    result.update(
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000)
    return result


def threaded_loop_timed(call, threads, duration):
    """:func:`threaded_loop`, with the p50 and p99 latency of the calls
    (each thread times its own)."""
    latencies = []  # list.append is atomic: threads share it

    def timed_call():
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)

    return _with_latencies(
        threaded_loop(timed_call, threads, duration), latencies)


def timed_pipeline_timed(start_call, wait, in_flight, duration):
    """:func:`timed_pipeline`, with the p50 and p99 latency of the
    calls: from starting a call until ``wait`` returned its answer (oldest
    first, so an answer that overtook an older call's counts from when the
    older one was answered)."""
    latencies = []

    def start_timed():
        return time.perf_counter(), start_call()

    def wait_timed(handle):
        t0, call = handle
        wait(call)
        latencies.append(time.perf_counter() - t0)

    return _with_latencies(
        timed_pipeline(start_timed, wait_timed, in_flight, duration),
        latencies)


def sqlalchemy_code():
    """The ``code`` of a random row of the ``sqlalchemy_db`` table."""
    return SQLALCHEMY_CODE.format(random.randrange(SQLALCHEMY_ROWS))


def sqlalchemy_db_client(call, in_parallel, duration):
    """The ``sqlalchemy_db`` client: once ``call(code)`` answers,
    ``in_parallel(seconds)`` (``--in-flight`` calls outstanding, each on a
    random row) for :data:`SQLALCHEMY_WARM_UP` seconds, which fills the
    service's connection pool, then for ``duration`` seconds, measured."""
    wait_until_answering(lambda: call(sqlalchemy_code()))
    in_parallel(SQLALCHEMY_WARM_UP)
    emit(in_parallel(duration))


def concurrent_batch(start_call, wait, calls):
    """Start ``calls`` calls at once and wait for all: the wall time and
    the achieved concurrency (the database time the calls asked for,
    ``calls * DB_SLEEP``, over the wall time)."""
    start = time.perf_counter()
    handles = [start_call() for _ in range(calls)]
    for handle in handles:
        wait(handle)
    wall = time.perf_counter() - start
    return {'calls': calls, 'wall_s': wall,
            'concurrency': calls * DB_SLEEP / wall}


def concurrent_threads(call, calls):
    """As :func:`concurrent_batch`, with one thread per call (what a
    threaded caller does): all start together, each calls ``call()``."""
    barrier = threading.Barrier(calls + 1)

    def caller():
        barrier.wait()
        call()

    threads = [threading.Thread(target=caller, name='bench-db-caller')
               for _ in range(calls)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {'calls': calls, 'wall_s': wall,
            'concurrency': calls * DB_SLEEP / wall}


def serve_until_sigterm(start, stop):
    """A peer's ``serve``: ``start()``, say ``READY``, ``stop()`` on
    SIGTERM (the harness's way of ending it)."""
    import signal
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    start()
    print('READY', flush=True)
    stopping.wait()
    stop()


def dispatch_events(dispatch, events):
    """The ``events`` client: ``events`` calls of ``dispatch()``, one
    after another; the harness times them up to the handler's last."""
    start = time.monotonic()
    for _ in range(events):
        dispatch()
    emit({'start': start, 'published': time.monotonic()})


def blocking_db_client(call, batch):
    """The ``blocking_db`` client: once ``call()`` answers, a first
    ``batch()`` opens the service's pooled connections, the second is
    timed."""
    wait_until_answering(call)
    batch()
    emit(batch())


def echo_client(args, call, calls_in_parallel):
    """The ``footprint``, ``rpc_seq`` and ``rpc_par`` clients, given one
    echo ``call()`` and the target's way of keeping ``--in-flight`` calls
    going (``calls_in_parallel()`` returns the result to emit)."""
    if args.scenario == 'footprint':
        print('POLLING', flush=True)  # the harness starts the service now
    first_answer = wait_until_answering(call)
    if args.scenario == 'footprint':
        emit({'first_answer': first_answer})
    elif args.scenario == 'rpc_seq':
        sequential_calls(call, args.warmup)
        emit(sequential_calls(call, args.calls))
    elif args.scenario == 'rpc_par':
        emit(calls_in_parallel())


def wait_until_answering(call, deadline=60):
    """Call ``call()`` until it answers; the ``time.monotonic()`` of the
    first answer."""
    end = time.monotonic() + deadline
    while True:
        try:
            call()
            return time.monotonic()
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)  # the service is still starting: poll again
