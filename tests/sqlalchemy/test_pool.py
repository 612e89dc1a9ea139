"""Engines and connection pools: one engine per database per container,
its pool sized from ``max_workers``, configured by ``DB_ENGINE_OPTIONS``
and ``DB_SESSION_OPTIONS``, disposed when the container stops; and an
exhausted pool is a clear error within ``pool_timeout``, not a hang."""

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from sqla_helpers import (
    WAIT, Base, Item, OtherBase, assert_none_lent, count, idle,
)

from threadko.constants import DEFAULT_MAX_WORKERS
from threadko.sqlalchemy import (
    DB_ENGINE_OPTIONS_KEY, DB_SESSION_OPTIONS_KEY, DB_URIS_KEY, Database,
    DatabaseSession,
)
from threadko.testing.services import dummy, entrypoint_hook
from threadko.testing.utils import get_extension


def call(container, method, *args):
    with entrypoint_hook(container, method) as hook:
        return hook(*args)


def default_pool_class(url):
    url = sa.engine.make_url(url)
    return url.get_dialect().get_pool_class(url)


# -- an exhausted pool --------------------------------------------------------

@pytest.mark.slow
def test_exhausted_pool_times_out_with_a_clear_error(
        backend, container_factory):
    holding = threading.Event()
    release = threading.Event()

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def hold(self):
            self.db.session.execute(sa.text('SELECT 1'))  # its connection
            holding.set()
            assert release.wait(WAIT)

        @dummy
        def write(self, value):
            with self.db.get_session() as session:
                session.add(Item(value=value))

    options = {'pool_size': 1, 'max_overflow': 0, 'pool_timeout': 1}
    if backend.name == 'sqlite':
        # SQLAlchemy 1.4's default for a SQLite file is NullPool, which
        # has no size: ask for the QueuePool (of connections any thread
        # may use) that 2.x chooses anyway
        options['poolclass'] = QueuePool
        options['connect_args'] = {'check_same_thread': False}
    container = container_factory(Service, {
        'max_workers': 2,
        DB_URIS_KEY: {'svc:Base': backend.url},
        DB_ENGINE_OPTIONS_KEY: {'svc:Base': options},
    })
    container.start()
    engine = get_extension(container, Database).engine
    assert engine.pool.size() == 1

    with entrypoint_hook(container, 'hold') as hold:
        holder = threading.Thread(target=hold, name='test-hold')
        holder.start()
        try:
            assert holding.wait(WAIT)
            began = time.monotonic()
            with pytest.raises(PoolTimeout) as error:
                call(container, 'write', 'waited in vain')
            waited = time.monotonic() - began
        finally:
            release.set()
            holder.join(WAIT)
        assert not holder.is_alive()

    assert 1 <= waited < 5, waited
    message = str(error.value)
    assert 'limit of size 1 overflow 0 reached' in message, message
    assert 'timeout 1' in message, message

    call(container, 'write', 'served afterwards')  # the pool is fine
    assert count(backend.engine) == 1
    assert_none_lent(engine.pool)


# -- sizes and options --------------------------------------------------------

@pytest.mark.parametrize('max_workers', [None, 3])
def test_default_pool_size_is_max_workers(
        backend, container_factory, max_workers):
    class Service:
        name = 'svc'
        db = Database(Base)
        session = DatabaseSession(Base)

        @dummy
        def method(self):
            pass

    config = {DB_URIS_KEY: {'svc:Base': backend.url}}
    if max_workers is not None:
        config['max_workers'] = max_workers
    container = container_factory(Service, config)
    container.start()
    pool = get_extension(container, Database).engine.pool

    pool_class = default_pool_class(backend.url)
    assert type(pool) is pool_class
    if backend.name != 'sqlite':
        assert pool_class is QueuePool
    if issubclass(pool_class, QueuePool):
        # SQLite files too, from SQLAlchemy 2.0 (1.4: NullPool, unsized)
        assert pool.size() == (max_workers or DEFAULT_MAX_WORKERS)
    assert get_extension(container, DatabaseSession).engine.pool is pool


def test_sqlite_in_memory_keeps_its_own_pool(container_factory):
    """``sqlite://`` gets SQLAlchemy's pool for it (one connection per
    thread), which has no ``pool_size`` to set."""

    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def method(self):
            pass

    container = container_factory(
        Service, {'max_workers': 3, DB_URIS_KEY: {'svc:Base': 'sqlite://'}})
    container.start()
    pool = get_extension(container, Database).engine.pool
    assert type(pool) is default_pool_class('sqlite://')


@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'], indirect=True)
def test_engine_and_session_options_from_config(backend, container_factory):
    """``DB_ENGINE_OPTIONS`` and ``DB_SESSION_OPTIONS`` reach
    ``create_engine`` and ``sessionmaker``, over the provider's own
    ``engine_options`` and ``session_options``."""
    seen = {}

    class Service:
        name = 'svc'
        db = Database(
            Base, engine_options={'pool_size': 2, 'pool_recycle': 3600},
            session_options={'expire_on_commit': True, 'autoflush': False})
        session = DatabaseSession(
            Base, engine_options={'pool_size': 2, 'pool_recycle': 3600})

        @dummy
        def write(self):
            item = Item(value='written')
            self.db.session.add(item)
            self.db.session.commit()
            # expire_on_commit=False (config) beat True (provider)
            seen['expired'] = sorted(sa.inspect(item).expired_attributes)
            seen['autoflush'] = self.db.session.autoflush

    container = container_factory(Service, {
        DB_URIS_KEY: {'svc:Base': backend.url},
        DB_ENGINE_OPTIONS_KEY: {'svc:Base': {'pool_size': 4,
                                             'pool_timeout': 7}},
        DB_SESSION_OPTIONS_KEY: {'svc:Base': {'expire_on_commit': False}},
    })
    container.start()
    db = get_extension(container, Database)
    pool = db.engine.pool
    assert pool.size() == 4  # config over the provider's 2
    assert pool.timeout() == 7
    assert pool._recycle == 3600  # the provider's own, kept
    assert db.Session.kw['expire_on_commit'] is False
    assert db.Session.kw['autoflush'] is False

    call(container, 'write')
    assert seen['expired'] == []
    assert seen['autoflush'] is False
    # the two providers have the same options, so the same engine
    assert get_extension(container, DatabaseSession).engine is db.engine


def test_providers_of_one_database_share_one_engine(
        backend, tmp_path, container_factory):
    class Service:
        name = 'svc'
        db = Database(Base)
        db_too = Database(Base)
        session = DatabaseSession(Base)
        other = Database(OtherBase)

        @dummy
        def method(self):
            pass

    other_url = 'sqlite:///{}'.format(tmp_path / 'other.db')
    container = container_factory(Service, {DB_URIS_KEY: {
        'svc:Base': backend.url, 'svc:OtherBase': other_url}})
    container.start()
    providers = {
        name: next(p for p in container.dependencies if p.attr_name == name)
        for name in ('db', 'db_too', 'session', 'other')}
    engine = providers['db'].engine
    assert providers['db_too'].engine is engine
    assert providers['session'].engine is engine
    assert providers['other'].engine is not engine
    assert str(providers['other'].engine.url) == other_url


def test_two_containers_have_two_engines(backend, container_factory):
    class Service:
        name = 'svc'
        db = Database(Base)

        @dummy
        def write(self, value):
            with self.db.get_session() as session:
                session.add(Item(value=value))

    config = {DB_URIS_KEY: {'svc:Base': backend.url}}
    first = container_factory(Service, config)
    second = container_factory(Service, config)
    first.start()
    second.start()
    engines = [get_extension(c, Database).engine for c in (first, second)]
    assert engines[0] is not engines[1]
    assert engines[0].pool is not engines[1].pool

    call(first, 'write', 'first')
    call(second, 'write', 'second')
    assert_none_lent(engines[0].pool)
    backend.wait_connections(idle(engines[0].pool) + idle(engines[1].pool))

    first.stop()  # disposes its pool only
    backend.wait_connections(idle(engines[1].pool))
    call(second, 'write', 'second again')
    assert count(backend.engine) == 3


@pytest.mark.parametrize('stop', ['stop', 'kill'])
def test_pool_is_disposed_when_the_container_ends(
        backend, container_factory, stop):
    class Service:
        name = 'svc'
        db = Database(Base)
        session = DatabaseSession(Base)

        @dummy
        def write(self, value):
            with self.db.get_session() as session:
                session.add(Item(value=value))
            self.session.execute(sa.text('SELECT 1'))

    container = container_factory(
        Service, {DB_URIS_KEY: {'svc:Base': backend.url}})
    container.start()
    db = get_extension(container, Database)
    engine = db.engine
    pool = engine.pool

    call(container, 'write', 'a')
    if isinstance(pool, QueuePool):  # SQLite files: from SA 2.0
        assert idle(pool) >= 1
    backend.wait_connections(idle(pool))

    getattr(container, stop)()
    assert idle(pool) == 0  # every pooled connection closed
    backend.wait_connections(0)
    assert not hasattr(db, 'engine')
    assert not hasattr(get_extension(container, DatabaseSession), 'engine')
    assert count(backend.engine) == 1
