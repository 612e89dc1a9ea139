"""The threadko side of the benchmarks; runs in threadko's virtualenv.

    python threadko_peer.py serve SCENARIO --uri URI [options]
    python threadko_peer.py client SCENARIO --uri URI [options]

``serve`` runs the scenario's service with the default config apart from
``AMQP_URI`` (as ``threadko run`` would), prints ``READY`` once it has
started, and stops gracefully on SIGTERM. ``client`` measures and prints
one JSON object on stdout. The ``footprint`` scenario runs this module's
``Echo`` with the real ``threadko run``. See ``bench/README.md``.

``--observe`` makes the ``threadko_observed`` target: ``TRACING`` on,
spans going to the OpenTelemetry SDK (``observed.py``), and for ``serve``
``METRICS_ADDRESS`` (``--metrics-address``) too. Its client adds the spans
it exported to its result; its server prints them as one more JSON line
once it has stopped.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from threadko.events import event_handler  # noqa: E402
from threadko.extensions import DependencyProvider  # noqa: E402
from threadko.rpc import rpc  # noqa: E402
from threadko.runners import ServiceRunner  # noqa: E402
from threadko.standalone.events import event_dispatcher  # noqa: E402
from threadko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from threadko.web.handlers import http  # noqa: E402

import common  # noqa: E402
from common import (  # noqa: E402
    EVENT_TYPE, PAYLOAD, SERVICE, SOURCE_SERVICE, blocking_db_client,
    concurrent_threads, dispatch_events, echo_client, emit,
    raise_open_files_limit, run_peer, serve_until_sigterm, sqlalchemy_code,
    sqlalchemy_db_client, threaded_loop, threaded_loop_timed)
from services import (  # noqa: E402
    DB_SERVICE, SQLALCHEMY_SERVICE, service_for, sqlalchemy_config)

#: for ``threadko run threadko_peer:Echo`` (the footprint scenario)
Echo = service_for(argparse.Namespace(scenario='rpc_seq'), rpc, http,
                   event_handler, DependencyProvider)


def more_arguments(parser):
    parser.add_argument('--observe', action='store_true',
                        help='the threadko_observed target: TRACING on, '
                             'spans going to the OpenTelemetry SDK (serve: '
                             'METRICS_ADDRESS too)')
    parser.add_argument('--metrics-address', default=None,
                        help='serve --observe: METRICS_ADDRESS, '
                             '"[host:]port"')


def observe(args, config):
    """With ``--observe``: the OpenTelemetry SDK set up (an
    :class:`observed.Observed`, imported only then) and ``config`` with
    ``TRACING`` on and, for ``serve``, ``METRICS_ADDRESS``; else None."""
    if not args.observe:
        return None
    from observed import Observed

    config['TRACING'] = True
    if args.role == 'serve':
        if not args.metrics_address:
            raise SystemExit('serve --observe needs --metrics-address')
        config['METRICS_ADDRESS'] = args.metrics_address
    return Observed()


def serve(args):
    config = {'AMQP_URI': args.uri, 'WEB_SERVER_ADDRESS': args.web_address}
    observed = observe(args, config)
    DatabaseSession = None
    if args.scenario == 'sqlalchemy_db':
        # only here: no other scenario (footprint's RSS) loads SQLAlchemy
        from threadko.sqlalchemy import DatabaseSession
        config.update(sqlalchemy_config(args.db_url))
    websocket = None
    if args.scenario in ('ws_rpc', 'ws_fanout'):
        # each websocket is a file descriptor: 2,000 of them in ws_fanout
        raise_open_files_limit()
        from threadko.web.websocket import WebSocketHubProvider, rpc as ws_rpc
        websocket = (ws_rpc, WebSocketHubProvider)
    runner = ServiceRunner(config)
    runner.add_service(service_for(
        args, rpc, http, event_handler, DependencyProvider, DatabaseSession,
        websocket))
    serve_until_sigterm(runner.start, runner.stop)
    if observed is not None:
        emit(observed.spans('server'))
        observed.shutdown()


def client(args):
    config = {'AMQP_URI': args.uri}
    observed = observe(args, config)
    if observed is not None:
        common.result_extras.append(lambda: observed.spans('client'))
    if args.scenario == 'events':
        dispatch = event_dispatcher(config)
        try:
            dispatch_events(
                lambda: dispatch(SOURCE_SERVICE, EVENT_TYPE, PAYLOAD),
                args.events)
        finally:
            dispatch.close()
        return
    with ClusterRpcProxy(config, timeout=60) as proxy:
        if args.scenario == 'blocking_db':
            sleep = getattr(proxy, DB_SERVICE).sleep
            # one thread per call, as a threaded app makes them
            blocking_db_client(
                sleep, lambda: concurrent_threads(sleep, args.concurrency))
            return
        if args.scenario == 'sqlalchemy_db':
            touch = getattr(proxy, SQLALCHEMY_SERVICE).touch
            # as rpc_par: threads sharing one proxy, each on a random row
            sqlalchemy_db_client(touch, lambda seconds: threaded_loop_timed(
                lambda: touch(sqlalchemy_code()), args.in_flight, seconds),
                args.duration)
            return
        echo = getattr(proxy, SERVICE).echo
        # rpc_par: what a threaded app does, threads sharing one proxy
        echo_client(args, lambda: echo(PAYLOAD), lambda: threaded_loop(
            lambda: echo(PAYLOAD), args.in_flight, args.duration))


def main():
    run_peer(__doc__, serve, client, more_arguments)


if __name__ == '__main__':
    main()
