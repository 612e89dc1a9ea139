"""The shop's fixtures, as a Nameko 2 project writes them: nameko's
(rabbit_config, web_config, container_factory, runner_factory, ...) and
nameko-sqlalchemy's (db_session, database, ...) come from their pytest
plugins; this file says which models and databases, and where Redis is.

Every test that uses a database runs once on each ``--db NAME=URL``
(MariaDB and PostgreSQL, say), or on a SQLite file when none is given.
"""

import logging
import sys

import pytest
from nameko_prometheus.utils import reset_prometheus_registry
from redis import StrictRedis

from shop.models import DeclarativeBase


def pytest_addoption(parser):
    parser.addoption(
        '--db', action='append', dest='DATABASES', default=[],
        metavar='NAME=URL',
        help='a database to run the database tests on (repeat it for '
             'several; default: a SQLite file)')
    parser.addoption(
        '--redis-uri', action='store', dest='REDIS_URI',
        default='redis://localhost:6379/11',
        help='the Redis server (and database) of the stock tests; it is '
             'emptied before and after each test')


def pytest_generate_tests(metafunc):
    if 'db_url' in metafunc.fixturenames:
        databases = [spec.split('=', 1) for spec in
                     metafunc.config.getoption('DATABASES')]
        databases = databases or [('sqlite', None)]
        metafunc.parametrize(
            'db_url', [url for _, url in databases],
            ids=[name for name, _ in databases], indirect=True,
            scope='session')


@pytest.fixture(scope='session')
def db_url(request, tmp_path_factory):
    """Overrides nameko-sqlalchemy's: the database of this run of the
    test (a ``--db``), which the services get through ``DB_URIS``."""
    if request.param is None:
        return 'sqlite:///{}'.format(
            tmp_path_factory.mktemp('db') / 'shop.db')
    return request.param


@pytest.fixture(scope='session')
def model_base():
    return DeclarativeBase


@pytest.fixture(scope='session')
def redis_uri(request):
    return request.config.getoption('REDIS_URI')


@pytest.fixture
def redis(redis_uri):
    """A client of the test Redis database, emptied around the test."""
    client = StrictRedis.from_url(redis_uri, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.connection_pool.disconnect()


@pytest.fixture
def stock_config(rabbit_config, redis, redis_uri):
    config = dict(rabbit_config)
    config['REDIS_URIS'] = {'stock': redis_uri}
    return config


@pytest.fixture
def config(stock_config, web_config, db_url, db_session):
    """Everything the shop's services need. ``db_session`` creates the
    tables (once) and empties them after the test."""
    config = dict(stock_config)
    config.update(web_config)
    config['DB_URIS'] = {'orders:DeclarativeBase': db_url}
    config['SENTRY'] = {'DSN': None}
    return config


@pytest.fixture(autouse=True)
def fresh_metrics():
    """nameko-prometheus registers the orders metrics in the process-wide
    registry when a container starts: remove them again for the next
    test's container."""
    yield
    reset_prometheus_registry('orders')


@pytest.fixture
def tracer_records(caplog):
    """The log records of nameko-tracer (logger ``nameko_tracer``)."""
    caplog.set_level(logging.INFO, logger='nameko_tracer')

    def records():
        return [record for record in caplog.records
                if record.name == 'nameko_tracer']

    return records


# -- what this run really imported -------------------------------------------

def pytest_report_header(config):
    import nameko
    import sqlalchemy

    return [
        'nameko: the {!r} package ({})'.format(
            nameko.__name__, nameko.__file__),
        'SQLAlchemy {} ({})'.format(sqlalchemy.__version__,
                                    sqlalchemy.__file__),
        "nameko-sqlalchemy's pytest plugin: {}".format(
            'loaded' if config.pluginmanager.has_plugin('nameko_sqlalchemy')
            else 'not loaded'),
    ]


def imported_wrongly():
    """What of eventlet or the real Nameko this process imported."""
    wrong = sorted(name for name in sys.modules
                   if name == 'eventlet' or name.startswith('eventlet.'))
    nameko = sys.modules.get('nameko')
    if nameko is not None and nameko.__name__ != 'threadko':
        wrong.append('nameko ({})'.format(nameko.__file__))
    return wrong


def pytest_sessionfinish(session, exitstatus):
    wrong = imported_wrongly()
    if wrong:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    session.config.stash[WRONG_IMPORTS] = wrong


WRONG_IMPORTS = pytest.StashKey()


def pytest_terminal_summary(terminalreporter, config):
    wrong = config.stash.get(WRONG_IMPORTS, None)
    if wrong:
        terminalreporter.write_line(
            'imported at the end of the session: ' + ', '.join(wrong),
            red=True)
    elif wrong is not None:
        terminalreporter.write_line(
            'imported at the end of the session: no eventlet, no real nameko')
