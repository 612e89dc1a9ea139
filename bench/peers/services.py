"""The benchmark services, written once for both frameworks: threadko and
Nameko 2 share the ``@rpc``, ``@http``, ``@event_handler`` and
``DependencyProvider`` API, so the same class bodies run on either (each
peer passes its framework's names in, see :func:`service_for`).

In ``blocking_db``, each call borrows a connection from a pool kept by the dependency provider
(at most one per worker; ``queue.Queue`` is green under eventlet) and runs
one query that sleeps ``DB_SLEEP`` seconds in the database:
``SELECT SLEEP(0.1)`` through MySQLdb (``mysqlclient``) on MariaDB, or
``SELECT pg_sleep(0.1)`` through psycopg2 on PostgreSQL.
"""

import json
import queue

from common import (
    DB_SLEEP, EVENT_TYPE, HELLO, SERVICE, SOURCE_SERVICE, seen_file_writer)

DB_SERVICE = 'bench_db'

QUERIES = {
    'mysql': 'SELECT SLEEP({})'.format(DB_SLEEP),
    'postgres': 'SELECT pg_sleep({})'.format(DB_SLEEP),
}


def connector(db, dsn):
    """A function that opens one connection with ``dsn`` (a dict of
    ``connect()`` keyword arguments, or its JSON)."""
    if isinstance(dsn, str):
        dsn = json.loads(dsn)
    if db == 'mysql':
        import MySQLdb
        return lambda: MySQLdb.connect(**dsn)
    import psycopg2
    return lambda: psycopg2.connect(**dsn)


def db_service(DependencyProvider, rpc, db, dsn):
    """The service class, built on the given framework's
    ``DependencyProvider`` and ``rpc``."""
    connect = connector(db, dsn)
    query = QUERIES[db]

    class Database(DependencyProvider):
        def setup(self):
            self.idle = queue.LifoQueue()

        def get_dependency(self, worker_ctx):
            try:
                return self.idle.get_nowait()
            except queue.Empty:
                return connect()

        def worker_teardown(self, worker_ctx):
            connection = worker_ctx.service.db
            if connection is not None:
                self.idle.put(connection)

        def stop(self):
            while True:
                try:
                    self.idle.get_nowait().close()
                except queue.Empty:
                    break

    class BenchDb:
        name = DB_SERVICE
        db = Database()

        @rpc
        def sleep(self):
            cursor = self.db.cursor()
            cursor.execute(query)
            cursor.fetchall()
            cursor.close()
            return True

    return BenchDb


def service_for(args, rpc, http, event_handler, DependencyProvider):
    """The service class of ``args.scenario``, built on the given
    framework's names."""
    if args.scenario == 'events':
        mark_seen = seen_file_writer(args.expect, args.seen_file)

        class Counter:
            name = 'bench_counter'

            @event_handler(SOURCE_SERVICE, EVENT_TYPE)
            def handle(self, payload):
                mark_seen()
        return Counter

    if args.scenario == 'http':
        class Hello:
            name = 'bench_hello'

            @http('GET', '/hello')
            def hello(self, request):
                return HELLO
        return Hello

    if args.scenario == 'blocking_db':
        return db_service(DependencyProvider, rpc, args.db, args.db_dsn)

    class Echo:
        name = SERVICE

        @rpc
        def echo(self, value):
            return value
    return Echo
