"""Throw-away MariaDB and PostgreSQL servers for the ``blocking_db``
benchmark (standard library only).

    ensure_installed()            # apt-get what is missing (root)
    with MariaDB(workdir) as db:  # or PostgreSQL(workdir)
        MySQLdb.connect(**db.dsn)
        db.restart()              # same data and socket, connections gone

Each server gets a fresh data directory under ``workdir`` (a directory
the caller owns and removes), listens on a unix socket there and on no
TCP port, and is stopped (and waited for) when the ``with`` block ends.
There is no init system here: whoever starts a server stops it.

``python bench/databases.py`` starts both, runs a query through each
driver that is importable, prints the versions and stops them.
"""

import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

START_TIMEOUT = 60  # seconds for a server to answer after it is started
STOP_TIMEOUT = 30   # seconds for a graceful shutdown before SIGKILL
MAX_CONNECTIONS = 200  # the benchmark needs 40 (two clients of 20)
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes, with its NUL

BENCH_USER = 'bench'
BENCH_PASSWORD = 'bench'
BENCH_DATABASE = 'bench'


class DatabaseError(Exception):
    """A database server could not be installed, started or stopped; the
    message says what to do and ends with the tail of the server's log."""


# -- installing -------------------------------------------------------------

def _installed(package):
    result = subprocess.run(
        ['dpkg-query', '-W', '-f=${Status}', package],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return result.returncode == 0 and result.stdout.endswith(' installed')


def _postgres_bin_dir():
    """The newest ``/usr/lib/postgresql/N/bin`` that has a server."""
    found = []
    for path in glob.glob('/usr/lib/postgresql/*/bin/postgres'):
        version = path.split('/')[-3]
        if version.isdigit():
            found.append((int(version), os.path.dirname(path)))
    return max(found)[1] if found else None


def _mariadbd():
    for name in ('mariadbd', 'mysqld'):
        for directory in ('/usr/sbin', '/usr/bin'):
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK):
                return path
    return shutil.which('mariadbd') or shutil.which('mysqld')


def missing_packages():
    """The Debian packages the benchmark's databases (and building
    ``mysqlclient``) need and that are not installed."""
    wanted = []
    if _mariadbd() is None or not _installed('mariadb-server'):
        wanted.append('mariadb-server')
    if _postgres_bin_dir() is None:
        wanted.append('postgresql')
    if not _installed('libmariadb-dev'):
        wanted.append('libmariadb-dev')
    if shutil.which('pkg-config') is None:
        wanted.append('pkg-config')
    if shutil.which('gcc') is None:
        wanted.append('build-essential')
    return wanted


def _apt_get(*args):
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    return subprocess.run(['apt-get'] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def ensure_installed():
    """``apt-get install`` the Debian packages of :func:`missing_packages`
    (one line printed per install); ``apt-get update`` once if the first
    try fails, e.g. for want of package lists."""
    wanted = missing_packages()
    if not wanted:
        return
    if os.geteuid() != 0:
        raise DatabaseError(
            'missing Debian packages {}: run as root, or '
            '`sudo apt-get install -y {}`'.format(
                ', '.join(wanted), ' '.join(wanted)))
    print('installing {} (apt-get)'.format(' '.join(wanted)), flush=True)
    result = _apt_get('install', '-y', '--no-install-recommends', *wanted)
    if result.returncode != 0:
        update = _apt_get('update')
        if update.returncode != 0:
            raise DatabaseError(
                '`apt-get update` failed; fix the package sources and '
                'retry:\n' + _tail_text(update.stdout))
        result = _apt_get('install', '-y', '--no-install-recommends',
                          *wanted)
    if result.returncode != 0:
        raise DatabaseError(
            '`apt-get install -y {}` failed; fix it and retry:\n{}'.format(
                ' '.join(wanted), _tail_text(result.stdout)))


# -- helpers ----------------------------------------------------------------

def _tail_text(text, lines=30):
    return '\n'.join(text.rstrip().splitlines()[-lines:])


def _tail(path, lines=30):
    try:
        with open(path, errors='replace') as file:
            return _tail_text(file.read(), lines)
    except OSError as exc:
        return '(no log: {})'.format(exc)


def _open_to(path):
    """Let any local user (the ``postgres`` server, a client connecting
    to a socket in it) reach ``path``: add the search bit for others to every directory on
    the way that lacks it (the caller's temp dir is usually 0700)."""
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _check_socket_path(path):
    if len(path.encode()) > SOCKET_PATH_MAX:
        raise DatabaseError(
            'unix socket path too long ({} bytes, at most {}): use a '
            'shorter workdir, e.g. tempfile.mkdtemp(dir="/tmp"): {}'.format(
                len(path.encode()), SOCKET_PATH_MAX, path))


class _Server:
    """Start a server process, wait until it answers, stop it."""

    kind = None
    version = None
    dsn = None

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        self.process = None
        self.log_path = None

    # subclasses: _prepare() (init the data dir), _command() (the server's
    # argv), _popen_kwargs(), _probe() (query that returns the version or
    # raises), _setup() (create what the benchmark needs, once: not again
    # on restart()), _stop_signal
    _stop_signal = signal.SIGTERM

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def fail(self, message):
        """A DatabaseError with ``message`` and the tail of the log."""
        return DatabaseError('{}\n--- tail of {} ---\n{}'.format(
            message, self.log_path, _tail(self.log_path)))

    def _run(self, argv, what, **kwargs):
        try:
            result = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=START_TIMEOUT, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.fail('{} failed: {}'.format(what, exc))
        if result.returncode != 0:
            raise DatabaseError('{} failed (exit {}): {}\n{}'.format(
                what, result.returncode, ' '.join(argv),
                _tail_text(result.stdout)))
        return result.stdout

    def _client(self, argv):
        """Run a command-line client; its output, or DatabaseError."""
        try:
            result = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatabaseError(str(exc))
        if result.returncode != 0:
            raise DatabaseError(result.stdout.strip())
        return result.stdout.strip()

    def start(self):
        """Initialise the data directory, start the server, wait until it
        answers and create the benchmark's user and database."""
        self._prepare()
        self._launch()
        self._setup()

    def restart(self):
        """Stop the server gracefully and start it again on the same data
        directory and socket; returns once it answers. Clients' open
        connections are gone: their next statement fails, as after a real
        database restart."""
        if self.log_path is None:
            raise DatabaseError('restart() before start()')
        self.stop()
        self._launch()

    def _launch(self):
        """Start the server process on the prepared data directory and
        wait until it answers."""
        with open(self.log_path, 'ab') as log:
            try:
                self.process = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, start_new_session=True,
                    **self._popen_kwargs())
            except OSError as exc:
                raise self.fail('could not start the {} server: {}'.format(
                    self.kind, exc))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise self.fail(
                    'the {} server exited with code {} while starting: '
                    'fix what its log says and retry'.format(self.kind, self.process.returncode))
            try:
                self.version = self._probe()
                break
            except DatabaseError:
                if time.monotonic() > deadline:
                    raise self.fail(
                        'the {} server did not answer within {} s: '
                        'check its log (a slow disk? START_TIMEOUT)'.format(self.kind, START_TIMEOUT))
            time.sleep(0.1)  # server start-up: poll until it answers

    def stop(self):
        """Graceful shutdown, SIGKILL after STOP_TIMEOUT; waits for the
        process. Safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.send_signal(self._stop_signal)
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise self.fail('the {} server did not stop within {} s and '
                            'was killed'.format(self.kind, STOP_TIMEOUT))


# -- MariaDB ----------------------------------------------------------------

class MariaDB(_Server):
    """A MariaDB server under ``workdir/mariadb``, run as root
    (``--user=root``), on a unix socket only (``--skip-networking``).

    ``dsn`` is for ``MySQLdb.connect(**dsn)``: user ``bench`` with a
    password on database ``bench``, so any local user can connect.
    """

    kind = 'mysql'

    def _prepare(self):
        self.dir = os.path.join(self.workdir, 'mariadb')
        self.datadir = os.path.join(self.dir, 'data')
        self.socket = os.path.join(self.dir, 'mysqld.sock')
        self.log_path = os.path.join(self.dir, 'mariadb.log')
        _check_socket_path(self.socket)
        self.mariadbd = _mariadbd()
        self.client = shutil.which('mariadb') or shutil.which('mysql')
        install_db = (shutil.which('mariadb-install-db')
                      or shutil.which('mysql_install_db'))
        if not (self.mariadbd and self.client and install_db):
            raise DatabaseError(
                'MariaDB is not installed: run databases.ensure_installed() '
                'or `apt-get install -y mariadb-server`')
        os.makedirs(self.dir)
        _open_to(self.dir)
        self._run([install_db, '--no-defaults', '--user=root',
                   '--datadir=' + self.datadir,
                   '--auth-root-authentication-method=normal',
                   '--skip-test-db', '--skip-name-resolve'],
                  'mariadb-install-db')

    def _command(self):
        return [self.mariadbd, '--no-defaults', '--user=root',
                '--datadir=' + self.datadir, '--socket=' + self.socket,
                '--pid-file=' + os.path.join(self.dir, 'mariadbd.pid'),
                '--log-error=' + self.log_path, '--skip-networking',
                '--skip-name-resolve',
                '--max-connections={}'.format(MAX_CONNECTIONS)]

    def _popen_kwargs(self):
        return {}

    def _sql(self, statement):
        return self._client(
            [self.client, '--no-defaults', '--socket=' + self.socket,
             '--user=root', '--batch', '--skip-column-names',
             '--execute=' + statement])

    def _probe(self):
        if not os.path.exists(self.socket):
            raise DatabaseError('no socket yet')
        # e.g. '10.11.19-MariaDB-0+deb12u1'
        return 'MariaDB ' + self._sql('SELECT VERSION()').split('-')[0]

    def _setup(self):
        try:
            self._sql(
                "CREATE DATABASE {db}; "
                "CREATE USER '{user}'@'localhost' IDENTIFIED BY '{pw}'; "
                "GRANT ALL ON {db}.* TO '{user}'@'localhost';".format(
                    db=BENCH_DATABASE, user=BENCH_USER, pw=BENCH_PASSWORD))
        except DatabaseError as exc:
            raise self.fail('could not create the bench user: {}'.format(
                exc))
        self.dsn = {'unix_socket': self.socket, 'user': BENCH_USER,
                    'password': BENCH_PASSWORD, 'database': BENCH_DATABASE}


# -- PostgreSQL -------------------------------------------------------------

class PostgreSQL(_Server):
    """A PostgreSQL server under ``workdir/postgres`` (owned by, and run
    as, the ``postgres`` system user: PostgreSQL refuses root), on a unix
    socket only (``listen_addresses=''``), trust authentication.

    ``dsn`` is for ``psycopg2.connect(**dsn)``: user and database
    ``postgres`` through the socket directory, from any local user.
    """

    kind = 'postgres'
    port = 5432  # only names the socket file: no TCP listener
    # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM, "smart", would
    # wait for every client to disconnect)
    _stop_signal = signal.SIGINT
    system_user = 'postgres'

    def _prepare(self):
        self.dir = os.path.join(self.workdir, 'postgres')
        self.datadir = os.path.join(self.dir, 'data')
        self.log_path = os.path.join(self.dir, 'postgres.log')
        _check_socket_path(os.path.join(
            self.dir, '.s.PGSQL.{}'.format(self.port)))
        self.bin = _postgres_bin_dir()
        if self.bin is None:
            raise DatabaseError(
                'PostgreSQL is not installed: run '
                'databases.ensure_installed() or `apt-get install -y '
                'postgresql`')
        try:
            account = pwd.getpwnam(self.system_user)
        except KeyError:
            raise DatabaseError(
                'no "postgres" system user: `apt-get install -y postgresql` '
                'creates it')
        self.uid, self.gid = account.pw_uid, account.pw_gid
        os.makedirs(self.dir)
        os.chown(self.dir, self.uid, self.gid)
        _open_to(self.dir)
        open(self.log_path, 'ab').close()
        os.chown(self.log_path, self.uid, self.gid)
        self._run([os.path.join(self.bin, 'initdb'), '-D', self.datadir,
                   '-U', 'postgres', '--auth=trust', '-E', 'UTF8',
                   '--locale=C.UTF-8', '--no-sync'],
                  'initdb', **self._popen_kwargs())

    def _popen_kwargs(self):
        kwargs = {'cwd': self.dir,
                  'env': {'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
                          'LANG': 'C.UTF-8'}}
        if os.geteuid() == 0:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return kwargs

    def _command(self):
        return [os.path.join(self.bin, 'postgres'), '-D', self.datadir,
                '-p', str(self.port), '-k', self.dir,
                '-c', 'listen_addresses=',
                '-c', 'max_connections={}'.format(MAX_CONNECTIONS),
                '-c', 'unix_socket_permissions=0777']

    def _probe(self):
        version = self._client(
            [os.path.join(self.bin, 'psql'), '-X', '-A', '-t',
             '-h', self.dir, '-p', str(self.port), '-U', 'postgres',
             '-d', 'postgres', '-c', 'SHOW server_version'])
        # e.g. '15.18 (Debian 15.18-0+deb12u1)'
        return 'PostgreSQL ' + version.split()[0]

    def _setup(self):
        self.dsn = {'host': self.dir, 'port': self.port, 'user': 'postgres',
                    'dbname': 'postgres'}


# -- smoke ------------------------------------------------------------------

def _smoke_query(server):
    if server.kind == 'mysql':
        module, query = 'MySQLdb', 'SELECT SLEEP(0.1), VERSION()'
    else:
        module, query = 'psycopg2', 'SELECT pg_sleep(0.1), version()'
    try:
        driver = __import__(module)
    except ImportError:
        return '{} not importable: skipped'.format(module)
    connection = driver.connect(**server.dsn)
    try:
        cursor = connection.cursor()
        cursor.execute(query)
        row = cursor.fetchall()[0]
        cursor.close()
    finally:
        connection.close()
    version = getattr(driver, '__version__', None) or '.'.join(
        str(part) for part in driver.version_info[:3])
    return '{} {}: {!r}'.format(module, version.split()[0], row[1])


def main():
    ensure_installed()
    with tempfile.TemporaryDirectory(prefix='bench-db-') as workdir:
        with MariaDB(workdir) as mariadb, PostgreSQL(workdir) as postgres:
            for server in (mariadb, postgres):
                print('{}: {}  dsn={}'.format(server.kind, server.version,
                                              server.dsn))
                print('  ' + _smoke_query(server))
    print('stopped')


if __name__ == '__main__':
    try:
        main()
    except DatabaseError as exc:
        sys.exit('error: {}'.format(exc))
