"""A dependency provider that lends each worker a database connection from
a pool.

Run it with a database path in the config::

    threadko run -d DB_PATH=/tmp/inventory.db \\
        examples.docs_dependency_injection

``sqlite3`` stands in for any C-extension driver (``MySQLdb``,
``psycopg2``): its calls release the GIL, so workers really query the
database in parallel. The pool is the provider's own state, shared by every
worker thread, so it is thread-safe; each worker gets an object of its own,
which it alone uses.
"""

import logging
import queue
import sqlite3
import threading

from threadko.extensions import DependencyProvider
from threadko.rpc import rpc

log = logging.getLogger(__name__)


class ConnectionPool:
    """At most ``size`` connections, opened on demand and lent to one thread
    at a time. Thread-safe."""

    def __init__(self, connect, size):
        self._connect = connect
        self._idle = queue.LifoQueue()
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._opened = []

    @property
    def opened(self):
        with self._lock:
            return len(self._opened)

    def acquire(self):
        """Lend a connection; blocks while all ``size`` are lent."""
        self._free.acquire()
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            connection = self._connect()
        except BaseException:
            self._free.release()
            raise
        with self._lock:
            self._opened.append(connection)
        return connection

    def release(self, connection):
        self._idle.put(connection)
        self._free.release()

    def close(self):
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()


class Transaction:
    """What one worker gets: a connection taken from the pool on first use,
    rolled back (unless committed) and returned when the worker ends."""

    def __init__(self, pool):
        self._pool = pool
        self._connection = None

    def execute(self, sql, parameters=()):
        if self._connection is None:
            # taken here rather than in get_dependency: a database that is
            # down then fails this call, not the whole container
            self._connection = self._pool.acquire()
        return self._connection.execute(sql, parameters)

    def commit(self):
        if self._connection is not None:
            self._connection.commit()

    def close(self):
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.rollback()  # whatever the method did not commit
        finally:
            self._pool.release(connection)


class Database(DependencyProvider):
    """Injects a :class:`Transaction` on the database at config
    ``DB_PATH``."""

    def __init__(self, schema=""):
        # runs at declaration and again at bind: no side effects here
        self.schema = schema

    def setup(self):
        path = self.container.config["DB_PATH"]

        def connect():
            # a connection moves between pool threads, one at a time
            return sqlite3.connect(path, timeout=30, check_same_thread=False)

        # no worker ever waits for a connection: at most max_workers
        # workers run at once, and each holds at most one connection
        self.pool = ConnectionPool(connect, self.container.max_workers)
        with sqlite3.connect(path) as connection:
            connection.executescript(self.schema)
        connection.close()
        # worker_ctx -> its Transaction; worker threads add and remove
        # entries concurrently, hence the lock
        self._transactions = {}
        self._lock = threading.Lock()

    def get_dependency(self, worker_ctx):
        transaction = Transaction(self.pool)
        with self._lock:
            self._transactions[worker_ctx] = transaction
        return transaction

    def worker_teardown(self, worker_ctx):
        with self._lock:
            transaction = self._transactions.pop(worker_ctx)
        try:
            transaction.close()
        except sqlite3.Error:
            # an exception escaping a hook would kill the container
            log.exception("could not roll back %s", worker_ctx)

    def stop(self):
        # a stopping container stops its providers once its workers are done
        self.pool.close()

    def kill(self):
        self.pool.close()


class Inventory:
    name = "inventory"

    db = Database(schema="""
        create table if not exists moves (sku text not null,
                                          count integer not null);
    """)

    @rpc
    def add(self, sku, count):
        self.db.execute(
            "insert into moves (sku, count) values (?, ?)", (sku, count))
        self.db.commit()

    @rpc
    def stock(self, sku):
        (total,) = self.db.execute(
            "select coalesce(sum(count), 0) from moves where sku = ?",
            (sku,)).fetchone()
        return total
