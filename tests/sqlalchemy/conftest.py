"""Real databases for the threadko.sqlalchemy tests.

A MariaDB and a PostgreSQL server are started for the test session
(bench/databases.py: unix sockets in a directory under /tmp, no TCP port),
the first time a test needs them, and stopped and removed at the end.
``scripts/test`` (``scripts/bootstrap test``) installs both. A server that
cannot be installed or started fails the tests that need it, unless
``THREADKO_TEST_SKIP_MARIADB`` / ``THREADKO_TEST_SKIP_POSTGRESQL`` say to
skip them.

The ``backend`` fixture runs a test on each of ``sqlite`` (a file of the
test's own), ``mariadb`` (the C driver MySQLdb) and ``postgresql`` (the C
driver psycopg2), each time in a new, empty database with the tables of
``sqla_helpers.Base`` and ``OtherBase``; the server databases are dropped
after the test. Narrow it with
``@pytest.mark.parametrize('backend', [...], indirect=True)``.
"""

import importlib
import itertools
import os
import shutil
import sys
import tempfile
import threading
from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from sqla_helpers import Base, OtherBase, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# bench is imported, and `pytest` run as a script (tox) does not put the
# repository root on sys.path as `python -m pytest` does
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BACKENDS = ('sqlite', 'mariadb', 'postgresql')
SERVERS = ('mariadb', 'postgresql')
SKIP_ENV = {
    'mariadb': 'THREADKO_TEST_SKIP_MARIADB',
    'postgresql': 'THREADKO_TEST_SKIP_POSTGRESQL',
}
DRIVER = {'mariadb': 'MySQLdb', 'postgresql': 'psycopg2'}
PACKAGE = {'mariadb': 'mysqlclient', 'postgresql': 'psycopg2-binary'}
#: who the tests' own engines connect as (MariaDB user, PostgreSQL
#: application name): the connection counts leave them out
OBSERVER = 'tk_observer'


def pytest_report_header(config):
    return 'threadko.sqlalchemy tests: SQLAlchemy {} ({})'.format(
        sa.__version__, os.path.dirname(sa.__file__))


# -- servers ------------------------------------------------------------------

class Server:
    """A running bench/databases.py server and what the tests do with it
    as its administrator: create and drop databases, count the
    connections and transactions of one database, restart it."""

    def __init__(self, kind, server):
        self.kind = kind
        self.server = server
        self.driver = importlib.import_module(DRIVER[kind])
        self._admin = None
        self._lock = threading.Lock()
        self._names = itertools.count()

    # the administrator's connection, made again after a restart
    def _connect(self):
        if self.kind == 'mariadb':
            connection = self.driver.connect(
                unix_socket=self.server.socket, user='root')
            connection.autocommit(True)
        else:
            connection = self.driver.connect(**self.server.dsn)
            connection.autocommit = True
        return connection

    def query(self, sql, *params):
        """The rows of ``sql``, as the administrator (no database)."""
        with self._lock:
            for attempt in (1, 2):
                if self._admin is None:
                    self._admin = self._connect()
                try:
                    cursor = self._admin.cursor()
                    try:
                        cursor.execute(sql, params or None)
                        return cursor.fetchall() if cursor.description \
                            else []
                    finally:
                        cursor.close()
                except self.driver.OperationalError:
                    # the server was restarted since: reconnect once
                    self._close_admin()
                    if attempt == 2:
                        raise

    def _close_admin(self):
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass

    def setup(self):
        if self.kind == 'mariadb':
            # the services connect as the bench user, the tests' own
            # engines as the observer, to databases tk_<n>
            self.query("CREATE USER '{0}'@'localhost' IDENTIFIED BY "
                       "'{0}'".format(OBSERVER))
            for user in (self.server.dsn['user'], OBSERVER):
                self.query("GRANT ALL ON `tk\\_%`.* TO '{}'@'localhost'"
                           .format(user))

    def create_database(self):
        name = 'tk_{}'.format(next(self._names))
        self.query('CREATE DATABASE {}'.format(name))
        return name

    def drop_database(self, name):
        if self.kind == 'mariadb':
            for (thread_id,) in self.query(
                    'SELECT ID FROM information_schema.PROCESSLIST '
                    'WHERE DB = %s', name):
                try:
                    self.query('KILL {:d}'.format(thread_id))
                except self.driver.OperationalError:
                    pass  # gone meanwhile
            self.query('DROP DATABASE {}'.format(name))
        else:
            self.query('DROP DATABASE {} WITH (FORCE)'.format(name))

    def url(self, database, observer=False):
        """The URL of ``database`` for the services; with ``observer``, for
        the test's own look at it, whose connections the counts below
        leave out (the server reaps a closed one a moment late)."""
        if self.kind == 'mariadb':
            dsn = self.server.dsn
            user, password = ((OBSERVER, OBSERVER) if observer
                              else (dsn['user'], dsn['password']))
            return 'mysql+mysqldb://{}:{}@localhost/{}?{}'.format(
                quote(user), quote(password), database,
                urlencode({'unix_socket': self.server.socket,
                           'charset': 'utf8mb4'}))
        query = {'host': self.server.dir, 'port': self.server.port}
        if observer:
            query['application_name'] = OBSERVER
        return 'postgresql+psycopg2://postgres@/{}?{}'.format(
            database, urlencode(query))

    def connections(self, database):
        """How many client connections the server has open to
        ``database``."""
        if self.kind == 'mariadb':
            sql = ('SELECT COUNT(*) FROM information_schema.PROCESSLIST '
                   'WHERE DB = %s AND USER <> %s')
        else:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                   "AND backend_type = 'client backend' "
                   "AND application_name <> %s")
        return self.query(sql, database, OBSERVER)[0][0]

    def open_transactions(self, database):
        """How many connections to ``database`` are inside a transaction
        that wrote or read something."""
        if self.kind == 'mariadb':
            sql = ('SELECT COUNT(*) FROM information_schema.INNODB_TRX t '
                   'JOIN information_schema.PROCESSLIST p '
                   'ON p.ID = t.trx_mysql_thread_id WHERE p.DB = %s '
                   'AND p.USER <> %s')
        else:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                   "AND backend_type = 'client backend' "
                   "AND xact_start IS NOT NULL AND application_name <> %s")
        return self.query(sql, database, OBSERVER)[0][0]

    def lock_waits(self, database):
        """How many connections to ``database`` are inside a statement
        that waits for a lock (MariaDB: inside any statement)."""
        if self.kind == 'mariadb':
            # connections inside a statement (InnoDB lists the transaction
            # of one waiting for its first row lock only once it got it)
            sql = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                   "WHERE DB = %s AND COMMAND = 'Query' AND USER <> %s")
        else:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                   "AND wait_event_type = 'Lock' AND application_name <> %s")
        return self.query(sql, database, OBSERVER)[0][0]

    def terminate(self, connection_id):
        """End one client connection from the server side, by its
        ``CONNECTION_ID()`` / ``pg_backend_pid()``."""
        if self.kind == 'mariadb':
            self.query('KILL {:d}'.format(connection_id))
        else:
            assert self.query('SELECT pg_terminate_backend(%s)',
                              connection_id) == [(True,)]

    def restart(self):
        """Stop the server and start it again (same data, same socket):
        every client connection is gone."""
        with self._lock:
            self._close_admin()
            self.server.restart()

    def close(self):
        with self._lock:
            self._close_admin()


def _start_server(kind):
    env = SKIP_ENV[kind]
    if os.environ.get(env):
        pytest.skip('{} is set: {} tests skipped'.format(env, kind))
    advice = ('`scripts/bootstrap test` installs it (or set {}=1 to skip '
              'the {} tests)'.format(env, kind))
    try:
        importlib.import_module(DRIVER[kind])
    except ImportError as exc:
        pytest.fail('{} (the {} package) is missing: {}; {}'.format(
            DRIVER[kind], PACKAGE[kind], exc, advice), pytrace=False)
    from bench.databases import DatabaseError, MariaDB, PostgreSQL

    server_cls = MariaDB if kind == 'mariadb' else PostgreSQL
    workdir = tempfile.mkdtemp(prefix='tk-sa-', dir='/tmp')
    server = server_cls(workdir)
    handle = None
    try:
        failure = None
        try:
            server.start()
        except DatabaseError as exc:
            failure = 'could not start the {} server: {}\n{}'.format(
                kind, exc, advice)
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        handle = Server(kind, server)
        handle.setup()
        yield handle
    finally:
        if handle is not None:
            handle.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope='session')
def mariadb_server():
    """A MariaDB server for the session (:class:`Server`)."""
    yield from _start_server('mariadb')


@pytest.fixture(scope='session')
def postgresql_server():
    """A PostgreSQL server for the session (:class:`Server`)."""
    yield from _start_server('postgresql')


# -- one empty database per test ----------------------------------------------

def _open_files(path):
    """How many file descriptors of this process are open on ``path``:
    for SQLite, the number of open connections to the database."""
    count = 0
    fd_dir = '/proc/self/fd'
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == path:
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


class Backend:
    """The database of one test: ``url`` (for ``DB_URIS``), ``engine``
    (the test's own view of it, pooling nothing) and what the server
    knows about it."""

    def __init__(self, name, url, server=None, database=None, path=None):
        self.name = name
        self.url = url
        self.server = server
        self.database = database
        self.path = path
        self.engine = sa.create_engine(
            server.url(database, observer=True) if server else url,
            poolclass=NullPool)

    def __repr__(self):
        return '<Backend {} {}>'.format(self.name, self.url)

    @property
    def connection_id_sql(self):
        """SQL returning the server's id of the connection it runs on."""
        return {'mariadb': 'SELECT CONNECTION_ID()',
                'postgresql': 'SELECT pg_backend_pid()'}.get(self.name)

    def connections(self):
        """Connections open to this database: counted by the server, or
        for SQLite, the file descriptors open on the database file (each
        connection has one; the test's own engine keeps none). SQLite
        defers closing a connection's descriptor while another connection
        of the process holds a lock on the file, so with transactions open
        (or in WAL mode, where connections always hold one) that is an
        upper bound; otherwise, the number."""
        if self.server is None:
            return _open_files(self.path)
        return self.server.connections(self.database)

    def wait_connections(self, expected, timeout=5):
        """Wait until :meth:`connections` is ``expected`` (a server reaps
        a closed connection a moment after the client closed it)."""
        seen = []

        def settled():
            seen[:] = [self.connections()]
            return seen[0] == expected

        wait_until(settled, timeout, lambda: '{} connections to {} '
                   'expected, saw {}'.format(expected, self.name, seen[0]))

    def open_transactions(self):
        return self.server.open_transactions(self.database)

    def lock_waits(self):
        return self.server.lock_waits(self.database)

    def terminate(self, connection_id):
        self.server.terminate(connection_id)

    def restart(self):
        self.server.restart()

    def dispose(self):
        self.engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """A :class:`Backend`: an empty database with the tables of ``Base``
    and ``OtherBase``, on SQLite, MariaDB or PostgreSQL."""
    name = request.param
    if name == 'sqlite':
        path = str(tmp_path / 'test.db')
        backend = Backend(name, 'sqlite:///' + path, path=path)
        drop = None
    else:
        server = request.getfixturevalue(name + '_server')
        database = server.create_database()
        backend = Backend(name, server.url(database), server, database)

        def drop():
            server.drop_database(database)

    try:
        for base in (Base, OtherBase):
            base.metadata.create_all(backend.engine)
        yield backend
    finally:
        backend.dispose()
        if drop is not None:
            drop()
