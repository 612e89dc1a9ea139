"""The threadko side of the benchmarks; runs in threadko's virtualenv.

    python threadko_peer.py serve SCENARIO --uri URI [options]
    python threadko_peer.py client SCENARIO --uri URI [options]

``serve`` runs the scenario's service with the default config apart from
``AMQP_URI`` (as ``threadko run`` would), prints ``READY`` once it has
started, and stops gracefully on SIGTERM. ``client`` measures and prints
one JSON object on stdout. The ``footprint`` scenario runs this module's
``Echo`` with the real ``threadko run``. See ``bench/README.md``.
"""

import argparse
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from threadko.events import event_handler  # noqa: E402
from threadko.extensions import DependencyProvider  # noqa: E402
from threadko.rpc import rpc  # noqa: E402
from threadko.runners import ServiceRunner  # noqa: E402
from threadko.standalone.events import event_dispatcher  # noqa: E402
from threadko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from threadko.web.handlers import http  # noqa: E402

from common import (  # noqa: E402
    EVENT_TYPE, HELLO, PAYLOAD, SERVICE, SOURCE_SERVICE, add_arguments,
    concurrent_threads, emit, seen_file_writer, sequential_calls,
    threaded_loop, wait_until_answering)
from db_services import DB_SERVICE, db_service  # noqa: E402


class Echo:
    name = SERVICE

    @rpc
    def echo(self, value):
        return value


class Hello:
    name = 'bench_hello'

    @http('GET', '/hello')
    def hello(self, request):
        return HELLO


def counter_service(expect, seen_file):
    mark_seen = seen_file_writer(expect, seen_file)

    class Counter:
        name = 'bench_counter'

        @event_handler(SOURCE_SERVICE, EVENT_TYPE)
        def handle(self, payload):
            mark_seen()
    return Counter


def service_for(args):
    if args.scenario == 'events':
        return counter_service(args.expect, args.seen_file)
    if args.scenario == 'http':
        return Hello
    if args.scenario == 'blocking_db':
        return db_service(DependencyProvider, rpc, args.db, args.db_dsn)
    return Echo


def serve(args):
    config = {'AMQP_URI': args.uri, 'WEB_SERVER_ADDRESS': args.web_address}
    runner = ServiceRunner(config)
    runner.add_service(service_for(args))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    runner.start()
    print('READY', flush=True)
    stopping.wait()
    runner.stop()


def client(args):
    config = {'AMQP_URI': args.uri}
    if args.scenario == 'events':
        dispatch = event_dispatcher(config)
        try:
            start = time.monotonic()
            for _ in range(args.events):
                dispatch(SOURCE_SERVICE, EVENT_TYPE, PAYLOAD)
            emit({'start': start, 'published': time.monotonic()})
        finally:
            dispatch.close()
        return
    with ClusterRpcProxy(config, timeout=60) as proxy:
        if args.scenario == 'blocking_db':
            sleep = getattr(proxy, DB_SERVICE).sleep
            wait_until_answering(sleep)
            # a first batch opens the pool's connections; the second is
            # timed. One thread per call, as a threaded app makes them
            for _ in range(2):
                result = concurrent_threads(sleep, args.concurrency)
            emit(result)
            return
        echo = getattr(proxy, SERVICE).echo
        if args.scenario == 'footprint':
            print('POLLING', flush=True)  # the harness starts the service
        first_answer = wait_until_answering(lambda: echo(PAYLOAD))
        if args.scenario == 'footprint':
            emit({'first_answer': first_answer})
        elif args.scenario == 'rpc_seq':
            sequential_calls(lambda: echo(PAYLOAD), args.warmup)
            emit(sequential_calls(lambda: echo(PAYLOAD), args.calls))
        elif args.scenario == 'rpc_par':
            # what a threaded app does: threads sharing one proxy
            emit(threaded_loop(lambda: echo(PAYLOAD), args.in_flight,
                               args.duration))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_arguments(parser)
    args = parser.parse_args()
    (serve if args.role == 'serve' else client)(args)


if __name__ == '__main__':
    main()
