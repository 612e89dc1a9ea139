"""Real Nameko code moves over unchanged: a Nameko 2 project
(tests/nameko_project: an orders service on nameko-sqlalchemy, a stock
service on nameko-redis, metrics from nameko-prometheus, traces from
nameko-tracer, error reports from nameko-sentry), whose code and tests
import only ``nameko`` and the community extensions, passes its own tests
through ``pytest -p threadko.nameko`` (its pytest.ini), on RabbitMQ, real
MariaDB, PostgreSQL and Redis servers, with the extensions installed from
PyPI without their dependencies, so that neither Nameko nor eventlet is
there.

The extensions are installed once into ``.cache/nameko-ecosystem`` (and
SQLAlchemy 1.4 into ``.cache/nameko-ecosystem-sqlalchemy-1.4``), which the
project's child pytest gets on PYTHONPATH; the main virtualenv never sees
them (nameko-sqlalchemy's pytest plugin would load in every session, and
fail to import nameko without the bridge). The servers are this test's own,
on unix sockets: stopped and removed at the end. docs/migrating.rst
(Community extensions) has the table this keeps honest.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from support import child_env, pip_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, 'tests', 'nameko_project')
# bench.databases is imported, and `pytest` run as a script (tox) does not
# put the repository root on sys.path as `python -m pytest` does
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytestmark = [pytest.mark.rabbit, pytest.mark.slow,
              # the first run installs the extensions from PyPI
              pytest.mark.timeout(300)]

#: the community extensions, without their dependencies (nameko, and eventlet
#: and kombu with it), then what they need besides Nameko
ECOSYSTEM = [
    'nameko-sqlalchemy==1.5.0',
    'nameko-redis==1.1.0',
    'nameko-prometheus==1.6.0',
    'nameko-tracer==1.4.0',
    'nameko-sentry==1.0.0',
    'nameko-amqp-retry==0.7.1',
    'nameko-grpc==1.3.0',
    # nameko-sqlalchemy's transaction_retry imports wrapt, and
    # nameko-tracer and nameko-sentry import six: none of them declares it
    # (Nameko 2 brought both)
    'wrapt==1.17.2',
    'six==1.17.0',
    'redis==5.2.1',
    'async-timeout==5.0.1; python_full_version < "3.11.3"',
    'prometheus-client==0.21.1',
    'raven==6.10.0',
    # nameko-amqp-retry's and nameko-grpc's own, to see how far they get
    'kombu==5.4.2',
    'amqp==5.3.1',
    'vine==5.1.0',
    'h2==4.1.0',
    'hpack==4.0.0',
    'hyperframe==6.0.1',
]
#: nameko-sqlalchemy 1.5.0's pytest plugin needs SQLAlchemy < 2 (its
#: db_connection fixture ends with metadata.drop_all() on a bound MetaData)
SQLALCHEMY_1_4 = ['SQLAlchemy==1.4.54']


def pythonpath_with(*directories):
    """PYTHONPATH for a child: ``directories`` first, then this
    process's PYTHONPATH, if any."""
    return os.pathsep.join(
        list(directories) + [p for p in [os.environ.get('PYTHONPATH')] if p])


def ecosystem():
    return pip_target('nameko-ecosystem', ECOSYSTEM)


def sqlalchemy_1_4():
    return pip_target('nameko-ecosystem-sqlalchemy-1.4', SQLALCHEMY_1_4)


CHILD_TIMEOUT = 150  # seconds for one child pytest; the full one takes ~8
SKIP_ENV = {
    'mariadb': 'THREADKO_TEST_SKIP_MARIADB',
    'postgresql': 'THREADKO_TEST_SKIP_POSTGRESQL',
    'redis': 'THREADKO_TEST_SKIP_REDIS',
}
DRIVER = {'mariadb': 'MySQLdb', 'postgresql': 'psycopg2'}
BOOTSTRAP_ADVICE = ('`scripts/bootstrap test` installs it (or set {}=1 to '
                    'skip the tests that need it)')


# -- the servers the project talks to -------------------------------------------

class RedisServer:
    """A redis-server on a unix socket in ``workdir``, no TCP port, no
    persistence."""

    START_TIMEOUT = 10

    def __init__(self, workdir):
        self.workdir = workdir
        self.socket = os.path.join(workdir, 'redis.sock')
        self.uri = 'unix://' + self.socket
        self.log_path = os.path.join(workdir, 'redis.log')
        self.process = None

    def start(self):
        binary = shutil.which('redis-server')
        if binary is None:
            pytest.fail('redis-server is not installed: ' +
                        BOOTSTRAP_ADVICE.format(SKIP_ENV['redis']),
                        pytrace=False)
        self.process = subprocess.Popen(
            [binary, '--port', '0', '--unixsocket', self.socket,
             '--unixsocketperm', '700', '--save', '', '--appendonly', 'no',
             '--dir', self.workdir, '--logfile', self.log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail('redis-server did not start:\n' + self._log(),
                            pytrace=False)
            time.sleep(0.05)  # server start-up: poll until it answers

    def _answers(self):
        import socket

        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(self.socket)
                sock.sendall(b'PING\r\n')
                return sock.recv(16).startswith(b'+PONG')
        except OSError:
            return False

    def _log(self):
        try:
            with open(self.log_path, errors='replace') as log:
                return log.read()[-3000:]
        except OSError as exc:
            return '(no log: {})'.format(exc)

    def stop(self):
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Database:
    """A MariaDB or PostgreSQL server of bench/databases.py, and the
    databases made on it for the project's runs."""

    def __init__(self, name, server):
        self.name = name
        self.server = server
        self.count = 0

    def _execute(self, sql):
        if self.name == 'mariadb':
            import MySQLdb

            connection = MySQLdb.connect(
                unix_socket=self.server.socket, user='root')
        else:
            import psycopg2

            connection = psycopg2.connect(**self.server.dsn)
            connection.autocommit = True
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            cursor.close()
        finally:
            connection.close()

    def new_database_url(self):
        """The SQLAlchemy URL of a new, empty database."""
        self.count += 1
        database = 'shop_{}'.format(self.count)
        self._execute('CREATE DATABASE {}'.format(database))
        if self.name == 'mariadb':
            return 'mysql+mysqldb://root@localhost/{}?{}'.format(
                database, urlencode({'unix_socket': self.server.socket,
                                     'charset': 'utf8mb4'}))
        return 'postgresql+psycopg2://postgres@/{}?{}'.format(
            database, urlencode({'host': self.server.dir,
                                 'port': self.server.port}))


def _start_database(name, workdir):
    from bench.databases import DatabaseError, MariaDB, PostgreSQL

    server = (MariaDB if name == 'mariadb' else PostgreSQL)(workdir)
    try:
        server.start()
    except DatabaseError as exc:
        server.stop()
        raise DatabaseError('could not start the {} server: {}\n{}'.format(
            name, exc, BOOTSTRAP_ADVICE.format(SKIP_ENV[name])))
    return Database(name, server)


class Servers:
    """What the project's tests run against: ``databases`` (those not
    skipped; the project falls back on SQLite without any) and
    ``redis``."""

    def __init__(self, databases, redis):
        self.databases = databases
        self.redis = redis

    def db_options(self):
        """``--db NAME=URL`` for each server, each time a new database."""
        options = []
        for database in self.databases:
            options += ['--db', '{}={}'.format(
                database.name, database.new_database_url())]
        return options

    def backends(self):
        return [database.name for database in self.databases] or ['sqlite']


@pytest.fixture(scope='module')
def servers():
    if os.environ.get(SKIP_ENV['redis']):
        pytest.skip('{} is set: the nameko project (its stock service '
                    'needs Redis) is skipped'.format(SKIP_ENV['redis']))
    from bench.databases import DatabaseError

    names = [name for name in ('mariadb', 'postgresql')
             if not os.environ.get(SKIP_ENV[name])]
    for name in names:
        driver = DRIVER[name]
        try:
            __import__(driver)
        except ImportError as exc:
            pytest.fail('{} is missing: {}; {}'.format(
                driver, exc, BOOTSTRAP_ADVICE.format(SKIP_ENV[name])),
                pytrace=False)
    workdir = tempfile.mkdtemp(prefix='tk-eco-', dir='/tmp')
    redis = RedisServer(workdir)
    started = []
    try:
        redis.start()
        # the two servers take a few seconds each to initialise: at once
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(_start_database, name, workdir)
                       for name in names]
            failures = []
            for future in futures:
                try:
                    started.append(future.result())
                except DatabaseError as exc:
                    failures.append(str(exc))
        if failures:
            pytest.fail('\n'.join(failures), pytrace=False)
        yield Servers(started, redis)
    finally:
        for database in started:
            database.server.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the project's own test suite, as a child pytest ------------------------------

def run_project(request, tmp_path, servers, pythonpath, *args):
    """Run the project's tests as its developers would (in its directory,
    its pytest.ini); ``(output, {test id: outcome})`` from the junit
    report, where ``test id`` is ``file::name``."""
    report = tmp_path / 'report.xml'
    argv = [
        sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
        '-o', 'console_output_style=classic', '-rfE',
        '--junitxml', str(report),
        '--amqp-uri', request.config.getoption('RABBIT_AMQP_URI'),
        '--rabbit-api-uri', request.config.getoption('RABBIT_API_URI'),
        '--redis-uri', servers.redis.uri,
    ] + servers.db_options() + list(args)
    env = child_env(PYTHONPATH=pythonpath_with(*pythonpath))
    try:
        child = subprocess.run(
            argv, cwd=PROJECT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail('the project took more than {} s:\n{}'.format(
            CHILD_TIMEOUT, exc.output), pytrace=False)
    outcomes = {}
    if report.exists():
        for case in ElementTree.parse(str(report)).iter('testcase'):
            module = case.get('classname').rsplit('.', 1)[-1]
            found = [element.tag for element in case
                     if element.tag in ('failure', 'error', 'skipped')]
            outcomes['{}::{}'.format(module, case.get('name'))] = (
                found[0] if found else 'passed')
    assert child.returncode == 0, child.stdout
    return child.stdout, outcomes


def expected_tests(backends):
    """The project's tests: those on a database run once on each."""
    tests = ['test_environment::test_nameko_is_threadko_and_eventlet_is_'
             'not_imported']
    tests += ['test_stock::' + name for name in STOCK_TESTS]
    tests.append('test_sentry::test_the_unchanged_reporter_loses_reports_'
                 'without_eventlet')
    for backend in backends:
        tests += ['{}[{}]'.format(name, backend)
                  for name in DATABASE_TESTS]
    return sorted(tests)


STOCK_TESTS = [
    'test_reserve_takes_what_is_left_or_nothing',
    'test_concurrent_reservations_never_oversell',
    'test_order_created_events_are_counted',
]
ORDERS_TESTS = [
    'test_orders::test_create_order_reserves_stores_and_announces',
    'test_orders::test_out_of_stock_gives_back_what_was_reserved',
    'test_orders::test_unknown_order_is_not_found',
    'test_orders::test_an_order_end_to_end',
    'test_orders::test_out_of_stock_over_rpc',
    'test_orders::test_orders_over_http',
]
DATABASE_TESTS = ORDERS_TESTS + [
    'test_metrics::test_metrics_after_some_calls',
    'test_metrics::test_metrics_of_one_registry_only',
    'test_tracing::test_a_call_chain_is_traced',
    'test_tracing::test_an_error_is_traced',
    'test_tracing::test_an_http_request_is_traced',
    'test_sentry::test_errors_are_reported',
]


def test_the_project_passes_its_own_tests(request, tmp_path, servers):
    """On SQLAlchemy 1.4, with nameko-sqlalchemy's own pytest plugin (its
    db_session, database, ... fixtures), as the project ran on Nameko."""
    eco, sa14 = ecosystem(), sqlalchemy_1_4()
    output, outcomes = run_project(request, tmp_path, servers, [eco, sa14])

    assert outcomes == {
        test: 'passed' for test in expected_tests(servers.backends())}, (
        output)
    assert "nameko: the 'threadko' package" in output
    assert 'SQLAlchemy 1.4.54 ({}'.format(sa14) in output
    assert "nameko-sqlalchemy's pytest plugin: loaded" in output
    assert 'imported at the end of the session: no eventlet, no real ' \
           'nameko' in output


def test_the_orders_tests_pass_on_sqlalchemy_2(request, tmp_path, servers):
    """On the SQLAlchemy 2 of this virtualenv, nameko-sqlalchemy's
    Database works unchanged, but its pytest plugin does not (the
    db_connection fixture's ``metadata.drop_all()`` needs the bind that
    SQLAlchemy 2 took away): with the plugin blocked, threadko's fixtures
    of the same names take over, and the same tests pass."""
    import sqlalchemy

    output, outcomes = run_project(
        request, tmp_path, servers, [ecosystem()],
        '-p', 'no:nameko_sqlalchemy', 'test/test_orders.py')

    assert outcomes == {
        '{}[{}]'.format(test, backend): 'passed'
        for test in ORDERS_TESTS for backend in servers.backends()}, output
    assert 'SQLAlchemy {} ({}'.format(
        sqlalchemy.__version__, os.path.dirname(sqlalchemy.__file__)
    ) in output
    assert sqlalchemy.__version__.startswith('2.')
    assert "nameko-sqlalchemy's pytest plugin: not loaded" in output
    assert 'imported at the end of the session: no eventlet, no real ' \
           'nameko' in output


# -- the extensions that cannot run without eventlet or kombu ------------------

CANNOT = r'''
import importlib, importlib.util, json, sys

import threadko
threadko.install_as_nameko()

failures = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
        failures[module] = None
    except ImportError as exc:
        failures[module] = [type(exc).__name__, exc.name, str(exc)]
print(json.dumps({
    'failures': failures,
    'eventlet': importlib.util.find_spec('eventlet') is not None,
    'pkg_resources': importlib.util.find_spec('pkg_resources') is not None,
    'nameko': sys.modules['nameko'].__name__,
}))
'''


def test_what_cannot_run_fails_as_documented():
    """docs/migrating.rst, Community extensions: nameko-amqp-retry needs
    Nameko's kombu-based publisher, nameko-grpc needs eventlet; both fail
    at import under the bridge, saying so."""
    import json

    eco = ecosystem()
    assert not os.path.exists(os.path.join(eco, 'nameko'))
    assert not os.path.exists(os.path.join(eco, 'eventlet'))
    modules = ['nameko_amqp_retry', 'nameko_grpc.channel',
               'nameko_grpc.streams', 'nameko_sentry', 'nameko_redis',
               'nameko_sqlalchemy', 'nameko_prometheus', 'nameko_tracer']
    result = subprocess.run(
        [sys.executable, '-c', CANNOT] + modules, cwd=ROOT,
        env=child_env(PYTHONPATH=pythonpath_with(eco)),
        stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)

    assert found['nameko'] == 'threadko'
    assert not found['eventlet']  # not installed: nothing can use it
    failures = found['failures']
    if found['pkg_resources']:
        # it imports nameko.amqp.publish (and kombu)
        kind, name, message = failures['nameko_amqp_retry']
        assert kind == 'ModuleNotFoundError'
        assert name in ('nameko.amqp', 'nameko.amqp.publish')
        assert "No module named '{}' under the nameko bridge".format(
            name) in message
    else:  # setuptools is not installed: it fails even earlier
        assert failures['nameko_amqp_retry'][1] == 'pkg_resources'
    for module in ('nameko_grpc.channel', 'nameko_grpc.streams'):
        assert failures[module][:2] == ['ModuleNotFoundError', 'eventlet']
    # the others import (and nameko_sentry needs a change to send: see
    # tests/nameko_project/shop/reporting.py)
    for module in ('nameko_sentry', 'nameko_redis', 'nameko_sqlalchemy',
                   'nameko_prometheus', 'nameko_tracer'):
        assert failures[module] is None, failures[module]
