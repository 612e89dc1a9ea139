"""``Database``: a dependency provider that lends each worker a connection
from a small pool, to SQLite (``sqlite3``) or to MySQL/MariaDB (``MySQLdb``,
from the ``mysqlclient`` package), as the ``DATABASE_URL`` config key says::

    sqlite:///shop.db                  a file in the current directory
    sqlite:////var/lib/shop/shop.db    an absolute path (four slashes)
    mysql://user:password@db.example.com:3306/shop
    mysql://user:password@localhost/shop?unix_socket=/run/mysqld/mysqld.sock

Both drivers are C extensions that let go of the GIL while they wait for the
database, so a worker waiting for a lock or a slow query does not hold up
the workers on other threads.
"""

import sqlite3
import threading
import time
from contextlib import contextmanager
from urllib.parse import parse_qs, unquote, urlsplit

from threadko.extensions import DependencyProvider

DATABASE_URL_CONFIG_KEY = 'DATABASE_URL'
DEFAULT_DATABASE_URL = 'sqlite:///shop.db'
POOL_TIMEOUT = 30  # seconds a worker may wait for a free connection
SQLITE_BUSY_TIMEOUT = 30  # seconds a statement may wait for another's lock


class PoolTimeout(Exception):
    """No connection became free within ``POOL_TIMEOUT`` seconds."""


# -- the two databases --------------------------------------------------------

class SQLite:
    """Connections to one SQLite file."""

    driver = sqlite3
    # an integer primary key the database numbers itself
    serial = 'INTEGER PRIMARY KEY AUTOINCREMENT'
    # take the write lock when the transaction starts: two transactions
    # that both read and then try to write would otherwise deadlock
    begin = 'BEGIN IMMEDIATE'
    # readers do not wait for writers, nor writers for readers
    prelude = ['PRAGMA journal_mode=WAL']

    def __init__(self, url):
        self.path = urlsplit(url).path[1:]
        if self.path in ('', ':memory:'):
            raise ValueError(
                'DATABASE_URL {!r}: name a file, e.g. sqlite:///shop.db '
                '(an in-memory database is not shared between '
                'connections)'.format(url))

    def connect(self):
        # isolation_level=None: sqlite3 starts no transaction by itself.
        # check_same_thread=False: a pooled connection moves from worker
        # thread to worker thread, used by one at a time
        return sqlite3.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None,
            check_same_thread=False)

    def prepare(self, sql):
        return sql


class MySQL:
    """Connections to one MySQL or MariaDB database, through MySQLdb."""

    serial = 'INTEGER PRIMARY KEY AUTO_INCREMENT'
    begin = 'START TRANSACTION'
    prelude = []

    def __init__(self, url):
        try:
            import MySQLdb
        except ImportError as exc:
            raise ImportError(
                'DATABASE_URL {} needs the MySQLdb driver: pip install '
                'mysqlclient ({})'.format(url.split(':', 1)[0], exc)) from exc
        self.driver = MySQLdb
        parts = urlsplit(url)
        self.params = {
            'host': parts.hostname or 'localhost',
            'port': parts.port or 3306,
            'user': unquote(parts.username or ''),
            'password': unquote(parts.password or ''),
            'database': parts.path[1:],
            'charset': 'utf8mb4',
            # each statement outside transaction() commits at once, so a
            # pooled connection never carries an old snapshot to its next
            # worker
            'autocommit': True,
        }
        query = parse_qs(parts.query)
        if 'unix_socket' in query:
            self.params['unix_socket'] = query['unix_socket'][-1]

    def connect(self):
        return self.driver.connect(**self.params)

    def prepare(self, sql):
        return sql.replace('?', '%s')  # MySQLdb's placeholder


def dialect_for(url):
    """The :class:`SQLite` or :class:`MySQL` for a ``DATABASE_URL``."""
    scheme = urlsplit(url).scheme
    if scheme == 'sqlite':
        return SQLite(url)
    if scheme in ('mysql', 'mariadb'):
        return MySQL(url)
    raise ValueError(
        'DATABASE_URL: unknown scheme {!r}; use sqlite:///FILE or '
        'mysql://USER:PASSWORD@HOST/DATABASE'.format(scheme))


# -- connections --------------------------------------------------------------

class Connection:
    """One database connection, with the same small API for both drivers.

    SQL uses ``?`` placeholders whichever the database. Each
    :meth:`execute` outside :meth:`transaction` commits on its own.
    """

    def __init__(self, dialect, raw):
        self.dialect = dialect
        self.raw = raw
        #: set when the connection may be unusable; the pool then drops it
        self.broken = False

    def execute(self, sql, params=()):
        """Run one statement and return its cursor (``fetchone()``,
        ``fetchall()``, ``rowcount``, ``lastrowid``)."""
        driver = self.dialect.driver
        cursor = self.raw.cursor()
        try:
            cursor.execute(self.dialect.prepare(sql), params)
        except (driver.OperationalError, driver.InterfaceError):
            self.broken = True  # e.g. the server went away
            raise
        return cursor

    @contextmanager
    def transaction(self):
        """Run the statements of a ``with`` block in one transaction:
        committed when the block ends, rolled back if it raises."""
        self.execute(self.dialect.begin)
        try:
            yield self
        except BaseException:
            try:
                self.execute('ROLLBACK')
            except Exception:
                self.broken = True
            raise
        self.execute('COMMIT')

    def create_schema(self, statements):
        """Run ``statements`` (``CREATE TABLE IF NOT EXISTS ...``), with
        ``{serial}`` standing for an auto-numbered primary key column."""
        for statement in self.dialect.prelude:
            self._execute_when_free(statement)
        for statement in statements:
            self.execute(statement.format(serial=self.dialect.serial))

    def _execute_when_free(self, sql, attempts=50):
        # SQLite's PRAGMA journal_mode=WAL needs the database to itself and
        # fails at once, without waiting, while another connection (the
        # other service starting in the same process) runs it too
        for attempt in range(attempts):
            try:
                return self.execute(sql)
            except self.dialect.driver.OperationalError:
                if attempt == attempts - 1:
                    raise
                self.broken = False
                time.sleep(0.1)

    def close(self):
        try:
            self.raw.close()
        except Exception:
            pass  # closing a broken connection may fail; it is gone anyway


def connect(url):
    """A :class:`Connection` of its own (outside any pool), for scripts and
    tests."""
    dialect = dialect_for(url)
    return Connection(dialect, dialect.connect())


class Pool:
    """Up to ``size`` open connections, each lent to one thread at a time.

    Connections are opened when first needed and kept for the next worker.
    :attr:`peak_in_use` tells how many were ever lent out at once.
    """

    def __init__(self, dialect, size):
        self.dialect = dialect
        self.size = size
        self.peak_in_use = 0
        self._idle = []
        self._open = 0
        self._in_use = 0
        self._closed = False
        self._changed = threading.Condition()

    def acquire(self, timeout=POOL_TIMEOUT):
        """Lend out an idle connection, or open one if fewer than ``size``
        are open; wait up to ``timeout`` seconds for one otherwise.

        :raises PoolTimeout: none became free in time
        """
        with self._changed:
            if not self._changed.wait_for(
                    lambda: self._idle or self._open < self.size, timeout):
                raise PoolTimeout(
                    'all {} connections stayed busy for {} s'.format(
                        self.size, timeout))
            self._in_use += 1
            self.peak_in_use = max(self.peak_in_use, self._in_use)
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:  # connecting may take a while: not under the lock
            return Connection(self.dialect, self.dialect.connect())
        except BaseException:
            with self._changed:
                self._open -= 1
                self._in_use -= 1
                self._changed.notify()
            raise

    def release(self, connection):
        """Take a connection back; a broken one, or any after
        :meth:`close`, is closed instead of kept."""
        with self._changed:
            self._in_use -= 1
            keep = not (connection.broken or self._closed)
            if keep:
                self._idle.append(connection)
            else:
                self._open -= 1
            self._changed.notify()
        if not keep:
            connection.close()

    def close(self):
        """Close the idle connections, and the others as they come back."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for connection in idle:
            connection.close()


# -- the dependency provider --------------------------------------------------

class Database(DependencyProvider):
    """Lends each worker a :class:`Connection` for the duration of its
    call, from a pool of the container's ``max_workers`` connections (so a
    worker never waits for one). The tables of ``schema`` are created when
    the service starts.

    The worker decides what is a transaction::

        with self.db.transaction():
            self.db.execute(...)

    :param schema: SQL statements, see :meth:`Connection.create_schema`
    """

    def __init__(self, schema=()):
        self.schema = list(schema)
        self.pool = None

    def setup(self):
        url = self.container.config.get(
            DATABASE_URL_CONFIG_KEY, DEFAULT_DATABASE_URL)
        self.pool = Pool(dialect_for(url), size=self.container.max_workers)

    def start(self):
        connection = self.pool.acquire()
        try:
            connection.create_schema(self.schema)
        finally:
            self.pool.release(connection)

    def get_dependency(self, worker_ctx):
        return self.pool.acquire()

    def worker_teardown(self, worker_ctx):
        # the worker's result has been sent by now, and what it wrote is
        # committed: each execute() on its own, each transaction() block
        # when it ended
        self.pool.release(getattr(worker_ctx.service, self.attr_name))

    def stop(self):
        self.pool.close()

    def kill(self):
        if self.pool is not None:
            self.pool.close()
