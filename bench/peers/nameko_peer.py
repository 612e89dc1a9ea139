"""The Nameko 2.14 side of the benchmarks; runs in the Nameko virtualenv.

    python nameko_peer.py serve SCENARIO --uri URI [--expect N]
    python nameko_peer.py client SCENARIO --uri URI [options]

``serve`` runs the scenario's service as ``nameko run`` would (eventlet
monkey-patched, default config apart from ``AMQP_URI``), prints ``READY``
once it has started, and stops gracefully on SIGTERM. ``client`` measures
and prints one JSON object on stdout. See ``bench/README.md``.
"""

import eventlet
eventlet.monkey_patch()  # noqa: E402 (as `nameko run` does, before imports)

import argparse
import errno
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nameko.events import event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.runners import ServiceRunner
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.web.handlers import http

from common import (
    EVENT_TYPE, HELLO, PAYLOAD, SERVICE, SOURCE_SERVICE,
    add_arguments, concurrent_batch, emit, seen_file_writer,
    sequential_calls, timed_pipeline, wait_until_answering)
from db_services import DB_SERVICE, db_service


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

    def shutdown(signum, frame):
        # signal handlers can't use eventlet primitives: stop in a greenlet
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, shutdown)
    runner.start()
    print('READY', flush=True)
    # as `nameko run`: wait in a greenlet, ignoring EINTR from the signal
    waiter = eventlet.spawn(runner.wait)
    while True:
        try:
            waiter.wait()
            break
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise


def client(args):
    config = {'AMQP_URI': args.uri}
    if args.scenario == 'events':
        dispatch = event_dispatcher(config)
        start = time.monotonic()
        for _ in range(args.events):
            dispatch(SOURCE_SERVICE, EVENT_TYPE, PAYLOAD)
        emit({'start': start, 'published': time.monotonic()})
        return
    with ClusterRpcProxy(config, timeout=60) as proxy:
        if args.scenario == 'blocking_db':
            sleep = getattr(proxy, DB_SERVICE).sleep
            wait_until_answering(sleep)
            # a first batch opens the pool's connections; the second is timed
            for _ in range(2):
                result = concurrent_batch(
                    sleep.call_async, lambda reply: reply.result(),
                    args.concurrency)
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
            # one greenthread pipelining call_async: greenthreads can't share
            # a Nameko 2 proxy (one connection, one reader at a time)
            emit(timed_pipeline(
                lambda: echo.call_async(PAYLOAD),
                lambda reply: reply.result(), args.in_flight, args.duration))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_arguments(parser)
    args = parser.parse_args()
    (serve if args.role == 'serve' else client)(args)


if __name__ == '__main__':
    main()
