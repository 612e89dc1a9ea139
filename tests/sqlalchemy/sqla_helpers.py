"""Models, waits and thread helpers shared by the threadko.sqlalchemy tests
(the servers and the ``backend`` fixture are in conftest.py)."""

import threading
import time

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base

WAIT = 10  # seconds: the longest a test waits for what must happen
POLL = 0.005  # seconds between two looks at server state (see wait_until)

#: ``DB_URIS`` key ``"<service>:Base"``
Base = declarative_base()


class Item(Base):
    __tablename__ = 'items'

    id = sa.Column(sa.Integer, primary_key=True)
    value = sa.Column(sa.String(100), nullable=False)


#: a second database, for "providers of different databases" tests
OtherBase = declarative_base(name='OtherBase')


class Other(OtherBase):
    __tablename__ = 'others'

    id = sa.Column(sa.Integer, primary_key=True)


def wait_until(predicate, timeout=WAIT, message='condition never held'):
    """Poll ``predicate`` until it returns a true value, which is
    returned; ``message`` (or what it returns, if callable) says what
    failed. For state only a server knows (a backend the server has not
    reaped yet after its client closed the socket): nothing signals when
    it changes, so this looks again every POLL seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if callable(message):
                message = message()
            raise AssertionError('{} within {} s (last: {!r})'.format(
                message, timeout, value))
        time.sleep(POLL)  # polling server state, not synchronisation


class Threads:
    """Threads started by a test, each running ``fn(*args)``; ``join()``
    waits for all of them (failing the test if one does not end) and
    returns ``[(result, exception), ...]`` in start order."""

    def __init__(self):
        self._threads = []

    def start(self, fn, *args):
        slot = {}

        def run():
            try:
                slot['result'] = fn(*args)
            except BaseException as exc:  # noqa: B902 (reported by join)
                slot['exc'] = exc

        thread = threading.Thread(target=run, name='test-caller-{}'.format(
            len(self._threads)), daemon=True)
        self._threads.append((thread, slot))
        thread.start()
        return thread

    def join(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        for thread, _ in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t, _ in self._threads if t.is_alive()]
        assert not alive, 'threads still running: {}'.format(alive)
        outcomes = [(slot.get('result'), slot.get('exc'))
                    for _, slot in self._threads]
        self._threads = []
        return outcomes


def join_worker_threads(service_name, exclude=(), timeout=WAIT):
    """Wait for every worker thread of containers of ``service_name`` to
    end, but those in ``exclude`` (of a container still running): after
    a kill, the abandoned workers' teardown runs on them."""
    prefix = 'threadko-worker-{}'.format(service_name)
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread not in exclude:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), '{} still running'.format(
                thread.name)


def count(engine, model=Item, where=None):
    """Rows of ``model`` committed in the database (a fresh connection of
    the test's own)."""
    query = sa.select(sa.func.count()).select_from(model)
    if where is not None:
        query = query.where(where)
    with engine.connect() as connection:
        return connection.execute(query).scalar()


def lent(pool):
    """Connections checked out of ``pool``, or None for a pool that does
    not count them: the NullPool that SQLAlchemy 1.4 gives a SQLite file
    (it closes each connection when it comes back)."""
    checkedout = getattr(pool, 'checkedout', None)
    return None if checkedout is None else checkedout()


def idle(pool):
    """Open connections waiting in ``pool`` for the next worker (none in
    a NullPool)."""
    checkedin = getattr(pool, 'checkedin', None)
    return 0 if checkedin is None else checkedin()


def assert_none_lent(pool):
    """Nothing checked out of ``pool`` (where it counts; the connections
    the database sees tell the rest)."""
    assert lent(pool) in (0, None), pool.status()
