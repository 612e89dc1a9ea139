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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nameko.events import event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.runners import ServiceRunner
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.web.handlers import http

from common import (
    EVENT_TYPE, PAYLOAD, SERVICE, SOURCE_SERVICE, blocking_db_client,
    concurrent_batch, dispatch_events, echo_client, raise_open_files_limit,
    run_peer, sqlalchemy_code, sqlalchemy_db_client, timed_pipeline,
    timed_pipeline_timed)
from services import (
    DB_SERVICE, SQLALCHEMY_SERVICE, service_for, sqlalchemy_config)

#: for ``nameko run nameko_peer:Echo`` (the footprint scenario)
Echo = service_for(argparse.Namespace(scenario='rpc_seq'), rpc, http,
                   event_handler, DependencyProvider)


def serve(args):
    config = {'AMQP_URI': args.uri, 'WEB_SERVER_ADDRESS': args.web_address}
    DatabaseSession = None
    if args.scenario == 'sqlalchemy_db':
        # only here: no other scenario (footprint's RSS) loads SQLAlchemy
        from nameko_sqlalchemy import DatabaseSession
        config.update(sqlalchemy_config(args.db_url))
    websocket = None
    if args.scenario in ('ws_rpc', 'ws_fanout'):
        # each websocket is a file descriptor: 2,000 of them in ws_fanout
        raise_open_files_limit()
        from nameko.web.websocket import WebSocketHubProvider, rpc as ws_rpc
        websocket = (ws_rpc, WebSocketHubProvider)
    runner = ServiceRunner(config)
    runner.add_service(service_for(
        args, rpc, http, event_handler, DependencyProvider, DatabaseSession,
        websocket))

    def shutdown(signum, frame):
        # signal handlers can't use eventlet primitives: stop in a greenlet
        eventlet.spawn_n(runner.stop)

    def tick():
        # the greenlet above runs once the hub wakes up; Python retries
        # epoll after a signal (PEP 475) with the hub's own timeout, up to
        # 60 s when nothing is scheduled (a service without AMQP: http,
        # ws_*), so the stop would wait that long. A wake-up per second
        # costs nothing measurable
        while True:
            eventlet.sleep(1)

    signal.signal(signal.SIGTERM, shutdown)
    eventlet.spawn_n(tick)
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
        dispatch_events(
            lambda: dispatch(SOURCE_SERVICE, EVENT_TYPE, PAYLOAD),
            args.events)
        return
    with ClusterRpcProxy(config, timeout=60) as proxy:
        if args.scenario == 'blocking_db':
            sleep = getattr(proxy, DB_SERVICE).sleep
            blocking_db_client(sleep, lambda: concurrent_batch(
                sleep.call_async, lambda reply: reply.result(),
                args.concurrency))
            return
        if args.scenario == 'sqlalchemy_db':
            touch = getattr(proxy, SQLALCHEMY_SERVICE).touch
            # as rpc_par: one greenthread pipelining call_async
            sqlalchemy_db_client(touch, lambda seconds: timed_pipeline_timed(
                lambda: touch.call_async(sqlalchemy_code()),
                lambda reply: reply.result(), args.in_flight, seconds),
                args.duration)
            return
        echo = getattr(proxy, SERVICE).echo
        # rpc_par: one greenthread pipelining call_async; greenthreads can't
        # share a Nameko 2 proxy (one connection, one reader at a time)
        echo_client(args, lambda: echo(PAYLOAD), lambda: timed_pipeline(
            lambda: echo.call_async(PAYLOAD), lambda reply: reply.result(),
            args.in_flight, args.duration))


def main():
    run_peer(__doc__, serve, client)


if __name__ == '__main__':
    main()
