"""No leaked connections, sessions or transactions: 10,000 calls in all,
on SQLite, MariaDB and PostgreSQL, from concurrent callers, that commit,
raise after writing, leave work uncommitted, or are abandoned by a
container kill in the middle of a transaction.

After each batch of calls: no connection is checked out of the pool; the
connections open to the database (counted by the server; for SQLite, the
file descriptors open on the database file) are exactly the pool's idle
ones; exactly the committed rows exist. After a kill, the abandoned
workers are released, and their teardown returns and closes their
connections: none stays open. After stop(), none stays open either.
"""

import itertools
import threading

import pytest
import sqlalchemy as sa

from sqla_helpers import (
    WAIT, Base, Item, Threads, assert_none_lent, count, idle,
    join_worker_threads, lent,
)

from threadko.exceptions import ContainerBeingKilled
from threadko.sqlalchemy import Database, DatabaseSession
from threadko.testing.services import dummy, entrypoint_hook
from threadko.testing.utils import get_extension

MAX_WORKERS = 8
KILL_ROUNDS = 3
HELD = 4  # workers mid-transaction when a container is killed
#: calls per backend, kill rounds included: 10,000 in all
CALLS = {'sqlite': 5000, 'mariadb': 2500, 'postgresql': 2500}
assert sum(CALLS.values()) == 10000
BATCH = 500
#: concurrent callers; SQLite has one writer at a time, and its waiting
#: writers back off by sleeping, so fewer callers are faster there
CALLERS = {'sqlite': 3, 'mariadb': MAX_WORKERS, 'postgresql': MAX_WORKERS}


class Boom(Exception):
    pass


class State:
    """What the hold() workers of one kill round wait on."""
    holding = None
    release = None


def write(session, value, flush=True):
    session.add(Item(value=value))
    if flush:
        session.flush()


class LeakService:
    name = 'leaks'

    db = Database(Base)
    session = DatabaseSession(Base)

    # committed
    @dummy
    def commit(self, value):
        write(self.db.session, value)
        self.db.session.commit()

    @dummy
    def commit_in_context(self, value):
        with self.db.get_session() as session:
            write(session, value)

    @dummy
    def commit_database_session(self, value):
        write(self.session, value)
        self.session.commit()

    # raise after writing: rolled back
    @dummy
    def raise_after_write(self, value):
        write(self.db.session, value)
        raise Boom(value)

    @dummy
    def raise_in_context(self, value):
        with self.db.get_session() as session:
            write(session, value)
            raise Boom(value)

    @dummy
    def raise_database_session(self, value):
        write(self.session, value)
        raise Boom(value)

    # uncommitted at the end: rolled back at teardown
    @dummy
    def leave_uncommitted(self, value):
        write(self.db.session, value)
        # and a second connection, reading
        self.db.get_session().execute(sa.select(sa.func.count(Item.id)))

    @dummy
    def leave_uncommitted_database_session(self, value):
        write(self.session, value)

    @dummy
    def leave_uncommitted_context_session(self, value):
        write(self.db.get_session(close_on_exit=True), value)

    # abandoned by a kill
    @dummy
    def hold(self, value, flush):
        self.db.session.execute(sa.select(sa.func.count(Item.id)))
        write(self.db.session, value, flush=flush)  # pending, or written
        State.holding.wait()
        assert State.release.wait(WAIT), 'never released'


#: (method, committed?) in the order the calls cycle through
PATTERN = [
    ('commit', True),
    ('raise_after_write', False),
    ('commit_in_context', True),
    ('leave_uncommitted', False),
    ('commit_database_session', True),
    ('raise_in_context', False),
    ('commit', True),
    ('leave_uncommitted_database_session', False),
    ('raise_database_session', False),
    ('leave_uncommitted_context_session', False),
]
RAISING = {'raise_after_write', 'raise_in_context', 'raise_database_session'}


def run_batch(container, calls, callers):
    """Make ``calls`` (``[(method, value)]``) from ``callers`` threads at
    once; fail on any outcome but the expected one."""
    hooks = {}
    methods = {method for method, _ in calls}
    contexts = [entrypoint_hook(container, method) for method in methods]
    for method, context in zip(methods, contexts):
        hooks[method] = context.__enter__()
    todo = iter(calls)
    lock = threading.Lock()

    def caller():
        unexpected = []
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return unexpected
            method, value = item
            try:
                hooks[method](value)
            except Boom:
                if method not in RAISING:
                    unexpected.append((method, 'raised Boom'))
            except Exception as exc:
                unexpected.append((method, repr(exc)))
            else:
                if method in RAISING:
                    unexpected.append((method, 'did not raise'))

    threads = Threads()
    try:
        for _ in range(callers):
            threads.start(caller)
        outcomes = threads.join(timeout=60)
    finally:
        for context in contexts:
            context.__exit__(None, None, None)
    problems = [problem for result, exc in outcomes
                for problem in (result if exc is None else [repr(exc)])]
    assert not problems, problems[:5]


def assert_nothing_leaked(backend, container, committed):
    db = get_extension(container, Database)
    session_provider = get_extension(container, DatabaseSession)
    pool = db.engine.pool
    assert_none_lent(pool)
    assert idle(pool) <= MAX_WORKERS, pool.status()
    backend.wait_connections(idle(pool))
    assert not db.dbs and not session_provider.sessions
    assert count(backend.engine) == committed
    assert count(backend.engine, where=Item.value.like('bad-%')) == 0


def kill_round(backend, container_factory, config, round_, others):
    """HELD workers mid-transaction, then kill: the kill returns with them
    still running; released, their teardown closes every connection.
    ``others``: connections to the database that the test's other
    container keeps."""
    State.holding = threading.Barrier(HELD + 1, timeout=WAIT)
    State.release = threading.Event()
    running = set(threading.enumerate())  # the other container's too
    container = container_factory(LeakService, config)
    container.start()
    pool = get_extension(container, Database).engine.pool

    with entrypoint_hook(container, 'hold') as hold:
        threads = Threads()
        try:
            for n in range(HELD):
                # SQLite has one writer: flush only in one of the workers
                flush = backend.name != 'sqlite' or n == 0
                threads.start(hold, 'bad-held-{}-{}'.format(round_, n), flush)
            State.holding.wait()
            assert lent(pool) in (HELD, None)
            backend.wait_connections(others + HELD)

            container.kill()
            # the abandoned workers still hold their connections
            assert backend.connections() == others + HELD
        finally:
            State.release.set()
            outcomes = threads.join()
    assert all(isinstance(exc, ContainerBeingKilled)
               for _, exc in outcomes), outcomes

    join_worker_threads(LeakService.name, running)  # their teardown ran
    backend.wait_connections(others)
    assert count(backend.engine, where=Item.value.like('bad-%')) == 0


@pytest.mark.slow
def test_no_leaks(backend, container_factory):
    config = {'max_workers': MAX_WORKERS,
              'DB_URIS': {'leaks:Base': backend.url}}
    calls = CALLS[backend.name] - KILL_ROUNDS * HELD
    ordinal = itertools.count()
    pattern = itertools.cycle(PATTERN)
    committed = 0

    container = container_factory(LeakService, config)
    container.start()
    pool = get_extension(container, Database).engine.pool
    rounds_done = 0
    while calls > 0:
        batch = []
        for _ in range(min(BATCH, calls)):
            method, commits = next(pattern)
            batch.append((method, '{}-{}'.format(
                'ok' if commits else 'bad', next(ordinal))))
            committed += commits
        calls -= len(batch)
        run_batch(container, batch, CALLERS[backend.name])
        assert_nothing_leaked(backend, container, committed)

        if rounds_done < KILL_ROUNDS:
            kill_round(backend, container_factory, config, rounds_done,
                       others=idle(pool))
            rounds_done += 1
            assert_nothing_leaked(backend, container, committed)

    assert rounds_done == KILL_ROUNDS
    container.stop()
    backend.wait_connections(0)
    assert count(backend.engine) == committed
