"""The benchmark services, written once for both frameworks: threadko and
Nameko 2 share the ``@rpc``, ``@http``, ``@event_handler`` and
``DependencyProvider`` API, so the same class bodies run on either (each
peer passes its framework's names in, see :func:`service_for`).

In ``blocking_db``, each call borrows a connection from a pool kept by the dependency provider
(at most one per worker; ``queue.Queue`` is green under eventlet) and runs
one query that sleeps ``DB_SLEEP`` seconds in the database:
``SELECT SLEEP(0.1)`` through MySQLdb (``mysqlclient``) on MariaDB, or
``SELECT pg_sleep(0.1)`` through psycopg2 on PostgreSQL.

In ``sqlalchemy_db``, each call reads one row by an indexed column and
updates it through the framework's SQLAlchemy ``DatabaseSession``
(threadko.sqlalchemy, or nameko-sqlalchemy 1.5.0 for Nameko), on MariaDB
through MySQLdb; SQLAlchemy is imported only for that scenario.

In ``ws_rpc`` and ``ws_fanout``, the service is called over websockets
(``nameko.web.websocket`` / ``threadko.web.websocket``: the same ``rpc``
and ``WebSocketHubProvider``, and the same protocol): ``echo`` answers its
argument, ``subscribe`` puts the calling socket on a hub channel,
``broadcast`` sends an event to every socket on one.
"""

import json
import queue

from common import (
    DB_SLEEP, EVENT_TYPE, HELLO, SERVICE, SOURCE_SERVICE, WS_EVENT,
    WS_SERVICE, seen_file_writer)

DB_SERVICE = 'bench_db'
SQLALCHEMY_SERVICE = 'bench_sqlalchemy'

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


def sqlalchemy_models():
    """``(Base, Item)``: a declarative base, and the model of the
    ``sqlalchemy_db`` table: ``code`` is unique (indexed), ``hits`` what
    a call increments. Written for SQLAlchemy 1.4 and 2.x alike."""
    from sqlalchemy import Column, Integer, String
    from sqlalchemy.orm import declarative_base

    Base = declarative_base()

    class Item(Base):
        __tablename__ = 'bench_items'

        id = Column(Integer, primary_key=True)
        code = Column(String(32), nullable=False, unique=True)
        hits = Column(Integer, nullable=False, default=0)

    return Base, Item


def sqlalchemy_config(db_url):
    """The ``DB_URIS`` config of the ``sqlalchemy_db`` service (the same
    key for threadko.sqlalchemy and nameko-sqlalchemy)."""
    base, _ = sqlalchemy_models()
    return {'DB_URIS': {
        '{}:{}'.format(SQLALCHEMY_SERVICE, base.__name__): db_url}}


def sqlalchemy_service(rpc, DatabaseSession):
    """The ``sqlalchemy_db`` service class, on the given framework's
    ``rpc`` and ``DatabaseSession`` provider."""
    from sqlalchemy import select

    Base, Item = sqlalchemy_models()

    class BenchSqlalchemy:
        name = SQLALCHEMY_SERVICE
        session = DatabaseSession(Base)

        @rpc
        def touch(self, code):
            # one SELECT on the unique index, one UPDATE by primary key, a
            # COMMIT; the provider closes the session after the call
            item = self.session.execute(
                select(Item).where(Item.code == code)).scalar_one()
            item.hits += 1
            hits = item.hits
            self.session.commit()
            return hits

    return BenchSqlalchemy


def websocket_service(rpc, WebSocketHubProvider):
    """The ``ws_rpc`` and ``ws_fanout`` service class, on the given
    framework's websocket ``rpc`` and ``WebSocketHubProvider``. Every
    method takes the calling socket's id first, as websocket ``@rpc``
    methods do."""

    class BenchWs:
        name = WS_SERVICE
        hub = WebSocketHubProvider()

        @rpc
        def echo(self, socket_id, value):
            return value

        @rpc
        def subscribe(self, socket_id, channel):
            self.hub.subscribe(socket_id, channel)
            return channel

        @rpc
        def broadcast(self, socket_id, channel, data):
            self.hub.broadcast(channel, WS_EVENT, data)
            return True

    return BenchWs


def service_for(args, rpc, http, event_handler, DependencyProvider,
                DatabaseSession=None, websocket=None):
    """The service class of ``args.scenario``, built on the given
    framework's names (``DatabaseSession``, its SQLAlchemy provider, only
    for ``sqlalchemy_db``; ``websocket``, its websocket ``(rpc,
    WebSocketHubProvider)``, only for ``ws_rpc`` and ``ws_fanout``)."""
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

    if args.scenario == 'sqlalchemy_db':
        return sqlalchemy_service(rpc, DatabaseSession)

    if args.scenario in ('ws_rpc', 'ws_fanout'):
        return websocket_service(*websocket)

    class Echo:
        name = SERVICE

        @rpc
        def echo(self, value):
            return value
    return Echo
