"""The ``blocking_db`` service, written once for both frameworks: threadko
and Nameko 2 share the ``DependencyProvider`` and ``@rpc`` API, so the same
class body runs on either (the peer passes its framework's two names in).

Each call borrows a connection from a pool kept by the dependency provider
(at most one per worker; ``queue.Queue`` is green under eventlet) and runs
one query that sleeps ``DB_SLEEP`` seconds in the database:
``SELECT SLEEP(0.1)`` through MySQLdb (``mysqlclient``) on MariaDB, or
``SELECT pg_sleep(0.1)`` through psycopg2 on PostgreSQL.
"""

import json
import queue

from common import DB_SLEEP

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
