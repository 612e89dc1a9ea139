"""C database drivers run concurrently: N workers of one container are
inside N open transactions at the same time, each on a connection of its
own, through ``Database``'s per-worker sessions.

Every worker opens its transaction, then waits at a barrier that trips
only once all N workers (and the test) are there, so the test passes
only if the drivers' calls really overlap. Under Nameko's eventlet, a
greenthread blocked inside MySQLdb's C code (or in ``threading.Barrier``
without monkey-patching) stops every other one, and the barrier would
never trip: here it fails after WAIT seconds with BrokenBarrierError
instead of hanging.

The calls arrive as real RPC requests on the embedded ``memory://``
broker. MariaDB and PostgreSQL workers each insert a row that stays
uncommitted until the barrier trips; the server itself confirms N open
transactions on N connections at that moment. SQLite allows one writer
at a time, so a test where N writers hold write transactions at once
could only pass by lying: its workers each hold a read transaction
(WAL mode, and a real ``BEGIN``: the pysqlite driver does not emit one
for reads), on N different sqlite3 connections, and write their rows
after the barrier, one after the other.
"""

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from sqla_helpers import WAIT, Base, Item, count, idle, lent, wait_until

from threadko.rpc import rpc
from threadko.sqlalchemy import Database
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.utils import get_extension

N = 8  # max_workers, and concurrent calls


def make_service(backend, inside, release):
    class ConcurrentService:
        name = 'concurrent'

        db = Database(Base)

        @rpc
        def write_at_barrier(self, value):
            session = self.db.session
            if backend.name == 'sqlite':
                # a read transaction: BEGIN (the test's listener), SELECT
                session.execute(sa.select(sa.func.count(Item.id))).scalar()
                dbapi_connection = (
                    session.connection().connection.dbapi_connection)
                assert dbapi_connection.in_transaction
                connection_id = id(dbapi_connection)
            else:
                # INSERT, not committed; then the server's connection id
                session.add(Item(value=value))
                session.flush()
                connection_id = session.execute(
                    sa.text(backend.connection_id_sql)).scalar()

            inside.wait()  # trips when all N workers (and the test) are here
            assert release.wait(WAIT), 'the test never released the workers'

            if backend.name == 'sqlite':
                session.commit()  # ends the read transaction
                session.add(Item(value=value))
            session.commit()
            return connection_id

    return ConcurrentService


def sqlite_real_transactions(engine):
    """Make the pysqlite driver emit BEGIN for reads too (SQLAlchemy's
    documented recipe): the driver's autocommit mode, and SQLAlchemy's
    ``begin`` event emitting BEGIN."""

    @event.listens_for(engine, 'connect')
    def driver_autocommit(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, 'begin')
    def begin(connection):
        connection.exec_driver_sql('BEGIN')


def test_n_workers_in_n_open_transactions_at_once(
        backend, memory_config, container_factory):
    if backend.name == 'sqlite':
        with backend.engine.connect() as connection:
            mode = connection.exec_driver_sql(
                'PRAGMA journal_mode=WAL').scalar()
        assert mode == 'wal'

    inside = threading.Barrier(N + 1, timeout=WAIT)
    release = threading.Event()
    container = container_factory(
        make_service(backend, inside, release),
        {'max_workers': N, 'DB_URIS': {'concurrent:Base': backend.url}})
    container.start()
    engine = get_extension(container, Database).engine
    if isinstance(engine.pool, QueuePool):  # SQLite files: from SA 2.0
        assert engine.pool.size() == N  # sized from max_workers
    if backend.name == 'sqlite':
        sqlite_real_transactions(engine)

    with ClusterRpcProxy(
            {'AMQP_URI': memory_config['AMQP_URI']}, timeout=WAIT) as rpc_:
        replies = [rpc_.concurrent.write_at_barrier.call_async(str(n))
                   for n in range(N)]
        try:
            inside.wait()
            # every worker is inside its transaction now
            assert count(backend.engine) == 0  # none committed
            assert lent(engine.pool) in (N, None)
            if backend.server is not None:
                assert backend.connections() == N
                assert backend.open_transactions() == N
        finally:
            release.set()
        connection_ids = [reply.result() for reply in replies]

    assert len(set(connection_ids)) == N, connection_ids
    assert count(backend.engine) == N
    with backend.engine.connect() as connection:
        values = connection.execute(sa.select(Item.value)).scalars().all()
    assert sorted(values) == sorted(str(n) for n in range(N))
    assert lent(engine.pool) in (0, None)
    if isinstance(engine.pool, QueuePool):
        assert idle(engine.pool) == N  # kept for the next workers
    if backend.server is not None:
        backend.wait_connections(N)


@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'], indirect=True)
def test_a_worker_blocked_on_a_row_lock_does_not_stop_the_others(
        backend, memory_config, container_factory):
    """One worker waits inside the driver for a row lock another holds
    (a C call that does not return), while others run to completion:
    the lock holder commits only after they did."""
    locked = threading.Event()
    release = threading.Event()

    class LockService:
        name = 'locks'

        db = Database(Base)

        @rpc
        def hold_lock(self):
            item = self.db.session.get(Item, locked_id, with_for_update=True)
            item.value = 'holder'
            self.db.session.flush()
            locked.set()
            assert release.wait(WAIT)
            self.db.session.commit()

        @rpc
        def wait_for_lock(self):
            item = self.db.session.get(Item, locked_id, with_for_update=True)
            value = item.value
            self.db.session.commit()
            return value

        @rpc
        def insert(self, value):
            self.db.session.add(Item(value=value))
            self.db.session.commit()

    with backend.engine.begin() as connection:
        locked_id = connection.execute(
            sa.insert(Item).values(value='initial')).inserted_primary_key[0]
    container = container_factory(
        LockService,
        {'max_workers': N, 'DB_URIS': {'locks:Base': backend.url}})
    container.start()

    with ClusterRpcProxy(
            {'AMQP_URI': memory_config['AMQP_URI']}, timeout=WAIT) as rpc_:
        holder = rpc_.locks.hold_lock.call_async()
        try:
            assert locked.wait(WAIT)
            waiter = rpc_.locks.wait_for_lock.call_async()
            # the waiter is inside the driver, blocked on the row lock
            wait_until(lambda: backend.lock_waits() == 1)
            for n in range(N - 2):
                rpc_.locks.insert(str(n))  # meanwhile, others complete
            assert count(backend.engine, where=Item.id != locked_id) == N - 2
        finally:
            release.set()
        holder.result()
        assert waiter.result() == 'holder'
