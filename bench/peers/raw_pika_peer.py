"""The raw pika side of the benchmarks (the floor); runs in threadko's
virtualenv, which has pika.

    python raw_pika_peer.py serve SCENARIO --uri URI [options]
    python raw_pika_peer.py client SCENARIO --uri URI [options]

Only the AMQP scenarios (``rpc_seq``, ``rpc_par``, ``events``,
``footprint``): the floor has no HTTP server or database. ``serve`` prints
``READY`` once consuming and stops on SIGTERM. See ``bench/README.md``.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    EVENT_TYPE, PAYLOAD, SERVICE, SOURCE_SERVICE, echo_client, emit,
    run_peer, seen_file_writer, serve_until_sigterm)
from raw_pika import (  # noqa: E402
    RawEventConsumer, RawRpcClient, RawRpcServer, raw_publish_events)

EXCHANGE = SOURCE_SERVICE + '.events'
QUEUE = 'evt-{}-{}--bench_counter.handle'.format(SOURCE_SERVICE, EVENT_TYPE)


def serve(args):
    if args.scenario == 'events':
        worker = RawEventConsumer(
            args.uri, args.expect, exchange=EXCHANGE, queue=QUEUE,
            event_type=EVENT_TYPE,
            on_done=seen_file_writer(1, args.seen_file))
    elif args.scenario in ('rpc_seq', 'rpc_par', 'footprint'):
        worker = RawRpcServer(args.uri, queue='rpc-' + SERVICE)
    else:
        sys.exit('raw pika has no {} peer'.format(args.scenario))
    serve_until_sigterm(worker.start, worker.stop)
    if worker.error is not None:
        raise worker.error


def client(args):
    if args.scenario == 'events':
        start = raw_publish_events(
            args.uri, args.events, exchange=EXCHANGE, event_type=EVENT_TYPE,
            payload=PAYLOAD)
        emit({'start': start, 'published': time.monotonic()})
        return
    with RawRpcClient(args.uri, target=SERVICE + '.echo') as caller:
        # rpc_par: one thread pipelining by correlation id; a minimal pika
        # client has no thread pool
        echo_client(args, lambda: caller.call(PAYLOAD), lambda: timed_calls(
            lambda: caller.call_for(args.duration, args.in_flight, PAYLOAD),
            args.in_flight))


def timed_calls(make_calls, in_flight):
    start = time.perf_counter()
    calls = make_calls()
    elapsed = time.perf_counter() - start
    return {'calls': calls, 'calls_per_s': calls / elapsed,
            'in_flight': in_flight}


def main():
    run_peer(__doc__, serve, client)


if __name__ == '__main__':
    main()
