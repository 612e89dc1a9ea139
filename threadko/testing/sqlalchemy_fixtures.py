"""pytest fixtures for services that use :mod:`threadko.sqlalchemy`:
nameko-sqlalchemy's, by the same names and with the same behaviour,
registered automatically (an entry point of threadko, as
nameko-sqlalchemy's are of nameko-sqlalchemy).

Override ``model_base`` (and usually ``db_url``) in your conftest.py::

    @pytest.fixture(scope="session")
    def model_base():
        return DeclarativeBase

    @pytest.fixture(scope="session")
    def db_url():
        return "postgresql://user:password@localhost/test"

- ``db_url``: ``--test-db-url``, default ``sqlite://`` (in memory);
- ``db_engine_options``: keyword arguments of ``create_engine``, ``{}``;
- ``db_connection`` (session scope): creates the tables of
  ``model_base`` on a connection, and drops them at the end;
- ``db_session``: a session on that connection; every row of every table
  is deleted after the test;
- ``database``: a stand-in for a :class:`~threadko.sqlalchemy.Database`
  dependency (``worker_factory(Service, db=database)``), cleaned up the
  same way.

Nothing here imports SQLAlchemy until a fixture runs, so projects without
it are unaffected.
"""

import argparse
import warnings
from contextlib import contextmanager

import pytest


def pytest_addoption(parser):
    try:
        parser.addoption(
            '--test-db-url', action='store', dest='TEST_DB_URL',
            default='sqlite://',
            help='Database URL for the threadko.sqlalchemy fixtures, e.g. '
                 '"postgresql://user:password@localhost/test" (default: '
                 'SQLite in memory). Its tables are emptied after each test '
                 'and dropped at the end.')
    except (ValueError, argparse.ArgumentError):
        # nameko-sqlalchemy's plugin, installed too, added it (with the
        # same dest) before: "option names ... already added" in the same
        # option group, a conflicting option string in another group
        pass


@pytest.fixture(scope='session')
def db_url(request):
    """The URL of the test database: ``--test-db-url``, or override this
    fixture. Its data is deleted after every test."""
    return request.config.getoption('TEST_DB_URL')


@pytest.fixture(scope='session')
def model_base():
    """Override this fixture to return the declarative base of your
    models."""
    raise NotImplementedError(
        'Fixture `model_base` has to be overwritten: define a fixture of '
        'that name, scope "session", that returns the declarative base of '
        'your models')


@pytest.fixture(scope='session')
def db_engine_options():
    """Override this fixture to return keyword arguments of
    ``sqlalchemy.create_engine`` for the test database."""
    return {}


@pytest.fixture(scope='session')
def db_connection(db_url, model_base, db_engine_options):
    """A connection to the test database, on which the tables of
    ``model_base`` exist; they are dropped at the end of the session."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_url, **db_engine_options)
    model_base.metadata.create_all(engine)
    if sqlalchemy.__version__.startswith('1.'):
        model_base.metadata.bind = engine  # as nameko-sqlalchemy does
    connection = engine.connect()

    yield connection

    connection.close()
    model_base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def db_session(db_connection, model_base):
    """A session (a context manager that commits or rolls back) on
    :func:`db_connection`; every table is emptied after the test."""
    from sqlalchemy.orm import sessionmaker

    from threadko.sqlalchemy.database import Session

    session = sessionmaker(bind=db_connection, class_=Session)()

    yield session

    with _stale_transactions_quiet():
        session.rollback()
        session.close()
    _empty_tables(db_connection, model_base)


@pytest.fixture
def database(db_connection, model_base):
    """What a :class:`~threadko.sqlalchemy.Database` injects, on
    :func:`db_connection`: pass it to ``worker_factory`` or
    ``replace_dependencies``. Every table is emptied after the test."""
    from sqlalchemy.orm import sessionmaker

    from threadko.sqlalchemy.database import DatabaseWrapper, Session

    wrapper = DatabaseWrapper(sessionmaker(bind=db_connection, class_=Session))

    yield wrapper

    with _stale_transactions_quiet():
        wrapper.close()
    _empty_tables(db_connection, model_base)


def _empty_tables(connection, model_base):
    """Delete every row of ``model_base``'s tables, and commit, once the
    test's sessions on ``connection`` are closed.

    A transaction still open on the connection is rolled back first: with
    SQLAlchemy 2 (or 1.4's ``future`` mode) executing on ``db_connection``
    itself begins one, and a session that finds the connection in a
    transaction joins it without ever committing it. Deleting inside it
    would leave the rows in the database for every other connection (a
    service's), and, on SQLite, its write lock held into the next test.
    """
    unfinished = connection.get_transaction()
    if unfinished is not None:
        unfinished.rollback()
    with connection.begin():
        for table in reversed(model_base.metadata.sorted_tables):
            connection.execute(table.delete())


@contextmanager
def _stale_transactions_quiet():
    """When ``db_session`` and ``database`` share the connection's
    transaction, the fixture torn down first ends it; the other's session
    then warns on closing that its transaction is gone. Nothing is wrong:
    silence that one warning (it fails runs with ``-W error``)."""
    from sqlalchemy.exc import SAWarning

    with warnings.catch_warnings():
        warnings.filterwarnings(
            'ignore', message='transaction already deassociated',
            category=SAWarning)
        yield
