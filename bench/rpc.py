"""RPC throughput and latency of threadko (not a test).

Usage::

    .venv/bin/python bench/rpc.py [--uri amqp://guest:guest@localhost]
                                  [--calls 2000] [--duration 10]
                                  [--in-flight 32]

Runs an echo service in a separate process (``threadko run``; in this
process for ``memory://``), then measures from a standalone
``ClusterRpcProxy``:

- ``rpc_seq``: ``--calls`` sequential calls: calls/s, p50 and p99 latency;
- ``rpc_par``: ``--in-flight`` threads sharing one proxy, each calling in a
  loop for ``--duration`` seconds: calls/s.

The payload is a short string and the defaults users get are kept
(persistent messages, publisher confirms, ack after the reply).
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.peers.common import (  # noqa: E402
    sequential_calls, threaded_loop, wait_until_answering)
from threadko.rpc import rpc  # noqa: E402
from threadko.standalone.rpc import ClusterRpcProxy  # noqa: E402


class BenchEcho:
    name = 'bench_echo'

    @rpc
    def echo(self, value):
        return value


def start_service(uri):
    """Start the echo service; return a function that stops it."""
    if uri.startswith('memory://'):
        from threadko.containers import ServiceContainer
        container = ServiceContainer(BenchEcho, {'AMQP_URI': uri})
        container.start()
        return container.stop
    process = subprocess.Popen(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'rpc:BenchEcho'],
        cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop():
        process.terminate()
        process.wait(30)
    return stop


def rpc_seq(proxy, calls):
    return sequential_calls(lambda: proxy.bench_echo.echo('payload'), calls)


def rpc_par(proxy, in_flight, duration):
    return threaded_loop(lambda: proxy.bench_echo.echo('payload'), in_flight,
                         duration)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--uri', default='amqp://guest:guest@localhost')
    parser.add_argument('--calls', type=int, default=2000)
    parser.add_argument('--duration', type=float, default=10)
    parser.add_argument('--in-flight', type=int, default=32)
    args = parser.parse_args()

    stop_service = start_service(args.uri)
    try:
        with ClusterRpcProxy({'AMQP_URI': args.uri}, timeout=30) as proxy:
            wait_until_answering(lambda: proxy.bench_echo.echo('ping'))
            rpc_seq(proxy, min(200, args.calls))  # warm up
            seq = rpc_seq(proxy, args.calls)
            print('rpc_seq  {:8.0f} calls/s   p50 {:.2f} ms   p99 {:.2f} ms'
                  .format(seq['calls_per_s'], seq['p50_ms'], seq['p99_ms']))
            par = rpc_par(proxy, args.in_flight, args.duration)
            print('rpc_par  {:8.0f} calls/s   ({} in flight)'.format(
                par['calls_per_s'], par['in_flight']))
    finally:
        stop_service()


if __name__ == '__main__':
    main()
