"""The API of ``Database`` and ``DatabaseSession``, ported from
nameko-sqlalchemy 1.5.0's own tests (test/test_database.py,
test/test_database_session.py): where those bound a provider to a Mock
container and patched ``Session.commit``, these run the service in a real
container on a real database and look at what reached the database and
what the sessions and the pool hold afterwards.

Each test's service is made by a function of the test, so its methods can
report what they saw while the worker ran (``seen``).
"""

import logging
import operator
import os
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as SqlaSession

from sqla_helpers import WAIT, Base, Item, assert_none_lent, count, idle

import threadko.sqlalchemy
from threadko.exceptions import ConfigurationError
from threadko.sqlalchemy import (
    DB_URIS_KEY, Database, DatabaseSession, Session, transaction_retry,
)
from threadko.sqlalchemy.database import DatabaseWrapper
from threadko.sqlalchemy.database import Session as ContextSession
from threadko.testing.services import dummy, entrypoint_hook
from threadko.testing.utils import get_extension


class Boom(Exception):
    pass


def config(url, name='svc'):
    return {DB_URIS_KEY: {'{}:Base'.format(name): url}}


def start(container_factory, service_cls, url, **extra):
    container = container_factory(
        service_cls, dict(config(url, service_cls.name), **extra))
    container.start()
    return container


def call(container, method, *args, **kwargs):
    with entrypoint_hook(container, method) as hook:
        return hook(*args, **kwargs)


def values(backend):
    with backend.engine.connect() as connection:
        return sorted(connection.execute(
            sa.select(Item.value)).scalars().all())


def insert(backend, *values):
    """Insert rows of ``values`` (committed); their ids."""
    with backend.engine.begin() as connection:
        return [connection.execute(sa.insert(Item).values(value=value))
                .inserted_primary_key[0] for value in values]


def is_closed(session):
    """A closed session holds no connection, no transaction and no
    objects (``close()`` expunges them all; commit and rollback do not)."""
    return (not session.in_transaction() and len(session.identity_map) == 0
            and not session.new)


# -- Database: the worker's session -------------------------------------------

def test_worker_session_is_made_on_first_use_and_closed_at_teardown(
        backend, container_factory):
    seen = {}

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def write_without_commit(self, value):
            seen['wrapper'] = self.db
            seen['made_before_use'] = self.db._worker_session is not None
            session = self.db.session
            assert session is self.db.session  # one per worker
            seen['session'] = session
            session.add(Item(value=value))
            session.flush()
            seen['connections'] = backend.connections()

        @dummy
        def write(self, value):
            self.db.session.add(Item(value=value))
            self.db.session.commit()

        @dummy
        def no_database(self):
            seen['no_database_wrapper'] = self.db

    container = start(container_factory, Service, backend.url)
    engine = get_extension(container, Database).engine

    call(container, 'no_database')
    assert isinstance(seen['no_database_wrapper'], DatabaseWrapper)
    assert seen['no_database_wrapper']._worker_session is None
    # a worker that does not use its session takes no connection at all
    assert backend.connections() == idle(engine.pool) == 0
    assert_none_lent(engine.pool)

    call(container, 'write_without_commit', 'rolled back')
    assert seen['made_before_use'] is False
    assert isinstance(seen['session'], ContextSession)
    assert seen['connections'] == 1
    assert is_closed(seen['session'])  # closed: rolled back, no objects
    assert_none_lent(engine.pool)
    assert count(backend.engine) == 0
    backend.wait_connections(idle(engine.pool))

    call(container, 'write', 'kept')
    assert values(backend) == ['kept']
    assert not get_extension(container, Database).dbs  # nothing kept


def test_get_session_sessions_are_closed_at_teardown(
        backend, container_factory):
    seen = {}

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def two_sessions(self):
            first, second = self.db.get_session(), self.db.get_session()
            assert first is not second
            first.add(Item(value='flushed, not committed'))
            first.flush()  # holds a connection and a write transaction
            second.execute(sa.select(sa.func.count(Item.id))).scalar()
            second.add(Item(value='pending'))  # holds a connection too
            seen['sessions'] = first, second
            seen['connections'] = backend.connections()

    container = start(container_factory, Service, backend.url)
    engine = get_extension(container, Database).engine

    call(container, 'two_sessions')
    assert seen['connections'] == 2
    assert all(is_closed(session) for session in seen['sessions'])
    assert_none_lent(engine.pool)
    assert count(backend.engine) == 0
    backend.wait_connections(idle(engine.pool))


def test_with_worker_session_commits_and_does_not_close(
        backend, container_factory):
    """``with self.db.session as session:`` commits at the end of the
    block; the session stays open for the rest of the worker (its objects
    stay in it), and is closed at teardown."""

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def write(self):
            with self.db.session as session:
                committed = Item(value='committed in the block')
                session.add(committed)
            assert session is self.db.session
            assert committed in session  # not closed: still there
            assert not session.in_transaction()  # committed
            self.db.session.add(Item(value='after the block'))
            self.db.session.flush()  # rolled back at teardown

    container = start(container_factory, Service, backend.url)
    call(container, 'write')
    assert values(backend) == ['committed in the block']


# -- Database: get_session() as a context manager -----------------------------

def context_service(seen):
    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def commits(self, close_on_exit):
            with self.db.get_session(close_on_exit=close_on_exit) as session:
                assert isinstance(session, ContextSession)
                item = Item(value='committed')
                session.add(item)
            seen['session'] = session
            # commit keeps the session's objects (expired), close does not
            seen['item_still_in_session'] = item in session
            seen['in_transaction'] = session.in_transaction()

        @dummy
        def rolls_back(self, close_on_exit, existing_id):
            try:
                with self.db.get_session(
                        close_on_exit=close_on_exit) as session:
                    existing = session.get(Item, existing_id)
                    session.add(Item(value='rolled back'))
                    session.flush()
                    raise Boom()
            except Boom:
                pass
            seen['session'] = session
            # rollback keeps persistent objects (expired), close does not
            seen['existing_still_in_session'] = existing in session
            seen['in_transaction'] = session.in_transaction()

        @dummy
        def commit_fails(self, close_on_exit, existing_id, other_id):
            try:
                with self.db.get_session(
                        close_on_exit=close_on_exit) as session:
                    existing = session.get(Item, other_id)
                    session.add(Item(id=existing_id, value='duplicate key'))
            except IntegrityError:
                seen['in_transaction'] = session.in_transaction()
                seen['existing_still_in_session'] = existing in session
                # rolled back: usable again (else PendingRollbackError)
                seen['count'] = session.execute(
                    sa.select(sa.func.count(Item.id))).scalar()
                raise
            raise AssertionError('the commit did not fail')

    return Service


def test_get_session_context_commits_without_closing(
        backend, container_factory):
    seen = {}
    container = start(container_factory, context_service(seen), backend.url)
    call(container, 'commits', close_on_exit=False)
    assert values(backend) == ['committed']
    assert seen['item_still_in_session'] is True  # not closed
    assert seen['in_transaction'] is False  # committed
    assert is_closed(seen['session'])  # by the worker's teardown


def test_get_session_context_commits_and_closes_on_exit(
        backend, container_factory):
    seen = {}
    container = start(container_factory, context_service(seen), backend.url)
    call(container, 'commits', close_on_exit=True)
    assert values(backend) == ['committed']
    assert seen['item_still_in_session'] is False  # closed at once


@pytest.mark.parametrize('close_on_exit', [False, True])
def test_get_session_context_rolls_back_on_error(
        backend, container_factory, close_on_exit):
    seen = {}
    existing_id, = insert(backend, 'existing')
    container = start(container_factory, context_service(seen), backend.url)
    call(container, 'rolls_back', close_on_exit, existing_id)
    assert values(backend) == ['existing']
    assert seen['in_transaction'] is False  # rolled back
    # closed only with close_on_exit
    assert seen['existing_still_in_session'] is (not close_on_exit)


@pytest.mark.parametrize('close_on_exit', [False, True])
def test_get_session_context_rolls_back_when_commit_fails(
        backend, container_factory, close_on_exit):
    seen = {}
    existing_id, other_id = insert(backend, 'existing', 'other')
    container = start(container_factory, context_service(seen), backend.url)
    engine = get_extension(container, Database).engine

    with pytest.raises(IntegrityError):
        call(container, 'commit_fails', close_on_exit, existing_id, other_id)
    assert values(backend) == ['existing', 'other']
    assert seen['in_transaction'] is False  # rolled back
    assert seen['existing_still_in_session'] is (not close_on_exit)
    assert seen['count'] == 2
    assert_none_lent(engine.pool)


def test_get_session_sessions_of_a_worker_are_all_closed(
        backend, container_factory):
    """nameko-sqlalchemy's test_no_close_on_exit: sessions closed on exit
    and sessions that were not are both closed at teardown; the worker's
    wrapper keeps every session it made."""
    seen = {}

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def sessions(self):
            with self.db.get_session() as one:
                item_one = Item(value='one')
                one.add(item_one)
            with self.db.get_session(close_on_exit=True) as two:
                item_two = Item(value='two')
                two.add(item_two)
            assert self.db._context_sessions == [one, two]
            assert item_one in one  # open
            assert item_two not in two  # closed on exit
            one.add(Item(value='pending in one'))  # not committed
            seen['sessions'] = one, two

    container = start(container_factory, Service, backend.url)
    call(container, 'sessions')
    assert values(backend) == ['one', 'two']
    assert all(is_closed(session) for session in seen['sessions'])


# -- DatabaseSession ----------------------------------------------------------

@pytest.mark.parametrize('provider_cls', [DatabaseSession, Session],
                         ids=['DatabaseSession', 'deprecated_Session'])
def test_database_session_is_opened_before_the_method_and_closed_after(
        backend, container_factory, provider_cls):
    seen = {}

    class Service:
        name = 'svc'
        session = provider_cls(Base)

        @dummy
        def write(self, value, commit):
            # injected before the method: already a session, registered
            seen['injected'] = self.session
            seen['registered'] = any(
                session is self.session
                for session in provider.sessions.values())
            self.session.add(Item(value=value))
            if commit:
                self.session.commit()
            else:
                self.session.flush()
            return self.session.query(Item).filter_by(value=value).one().id

        @dummy
        def read(self, pk):
            return self.session.get(Item, pk).value

    container = start(container_factory, Service, backend.url)
    provider = get_extension(container, DatabaseSession)

    pk = call(container, 'write', 'kept', commit=True)
    assert isinstance(seen['injected'], SqlaSession)
    assert seen['registered'] is True
    assert call(container, 'read', pk) == 'kept'

    call(container, 'write', 'rolled back', commit=False)
    assert is_closed(seen['injected'])
    assert values(backend) == ['kept']
    assert not provider.sessions  # nothing kept after the workers
    assert_none_lent(provider.engine.pool)
    backend.wait_connections(idle(provider.engine.pool))


def test_deprecated_session_name():
    assert Session is DatabaseSession
    assert threadko.sqlalchemy.Session is threadko.sqlalchemy.DatabaseSession


def test_database_and_database_session_share_the_engine_and_work_together(
        backend, container_factory):
    class Service:
        name = 'svc'
        db = Database(Base)
        session = DatabaseSession(Base)

        @dummy
        def write_both(self):
            self.session.add(Item(value='session'))
            self.session.commit()
            with self.db.get_session() as session:
                session.add(Item(value='db'))

    container = start(container_factory, Service, backend.url)
    call(container, 'write_both')
    assert values(backend) == ['db', 'session']
    assert (get_extension(container, Database).engine
            is get_extension(container, DatabaseSession).engine)


# -- configuration ------------------------------------------------------------

def test_db_uris_format_service_and_base_names(tmp_path, container_factory):
    uri = 'sqlite:///{}/{}'.format(
        tmp_path, '{0[service_name]}-{0[declarative_base_name]}.db')
    expected_path = tmp_path / 'formatted-Base.db'

    class Service:
        name = 'formatted'
        db = Database(Base)
        session = DatabaseSession(Base)

        @dummy
        def create_and_write(self):
            Base.metadata.create_all(self.db.session.get_bind())
            with self.db.get_session() as session:
                session.add(Item(value='formatted'))

    container = start(container_factory, Service, uri)
    assert get_extension(container, Database).db_uri == (
        'sqlite:///{}'.format(expected_path))
    assert get_extension(container, DatabaseSession).db_uri == (
        'sqlite:///{}'.format(expected_path))
    call(container, 'create_and_write')
    assert os.path.exists(str(expected_path))
    engine = sa.create_engine('sqlite:///{}'.format(expected_path))
    try:
        assert count(engine) == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize('provider_cls', [Database, DatabaseSession])
@pytest.mark.parametrize('uris', [None, {'other:Base': 'sqlite://'}],
                         ids=['no DB_URIS', 'no entry'])
def test_missing_db_uri_is_a_configuration_error_at_start(
        container_factory, provider_cls, uris):
    class Service:
        name = 'svc'
        db = provider_cls(Base)

        @dummy
        def method(self):
            pass

    extra = {} if uris is None else {DB_URIS_KEY: uris}
    container = container_factory(Service, extra)  # not yet
    with pytest.raises(ConfigurationError) as error:
        container.start()
    message = str(error.value)
    assert "'svc:Base'" in message
    assert DB_URIS_KEY in message


# -- a teardown that cannot close -------------------------------------------

@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'], indirect=True)
def test_teardown_whose_close_fails_logs_and_the_container_lives_on(
        backend, container_factory, caplog):
    """The server ends the worker's connection while it is in a
    transaction: closing the session at teardown fails (its rollback
    cannot reach the server). That is logged; the other session of the
    worker is still closed, the container is not killed, and the next
    worker gets a working connection."""
    holding = threading.Event()
    release = threading.Event()
    seen = {}

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def hold(self):
            self.db.session.add(Item(value='lost'))
            self.db.session.flush()
            seen['connection_id'] = self.db.session.execute(
                sa.text(backend.connection_id_sql)).scalar()
            other = self.db.get_session()  # a second connection
            other.execute(sa.text('SELECT 1'))
            holding.set()
            assert release.wait(WAIT)

        @dummy
        def write(self, value):
            with self.db.get_session() as session:
                session.add(Item(value=value))

    container = start(container_factory, Service, backend.url)
    engine = get_extension(container, Database).engine
    caplog.set_level(logging.WARNING, logger='threadko.sqlalchemy')

    with entrypoint_hook(container, 'hold') as hold:
        holder = threading.Thread(target=hold, name='test-hold')
        holder.start()
        try:
            assert holding.wait(WAIT)
            backend.terminate(seen['connection_id'])
        finally:
            release.set()
            holder.join(WAIT)
        assert not holder.is_alive()

    assert 'could not close the database session' in caplog.text
    assert_none_lent(engine.pool)  # the other session's too
    # the pool keeps the other session's connection; the dead one's entry
    # has none (invalidated), and opens a new one when next used
    backend.wait_connections(1)
    call(container, 'write', 'still serving')
    assert values(backend) == ['still serving']
    assert_none_lent(engine.pool)
    container.stop()  # not killed: it stops normally
    backend.wait_connections(0)


# -- transaction_retry with both providers (nameko-sqlalchemy's services) ---

def test_transaction_retry_decorated_methods_work_without_failures(
        backend, container_factory):
    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        @transaction_retry(session=operator.attrgetter('db.session'))
        def create(self, value):
            self.db.session.add(Item(value=value))
            self.db.session.commit()

        @dummy
        @transaction_retry
        def total(self):
            with self.db.get_session() as session:
                return session.query(Item).count()

    container = start(container_factory, Service, backend.url)
    call(container, 'create', 'a')
    call(container, 'create', 'b')
    assert call(container, 'total') == 2
