"""``transaction_retry``: its semantics as nameko-sqlalchemy 1.5.0's
test/test_transaction_retry.py states them, and the real case it exists
for: the database server restarted, so the pooled connection is dead.

nameko-sqlalchemy provoked disconnects with Toxiproxy; here the test
restarts the MariaDB or PostgreSQL server itself between two calls
(same data directory and socket), and the same sequence without the
decorator fails, which shows the test can fail.
"""

import importlib
import inspect
import operator
import types

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from sqla_helpers import Base, Item, count

from threadko.exceptions import IncorrectSignature
from threadko.rpc import rpc
from threadko.sqlalchemy import Database, DatabaseSession, transaction_retry
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.services import dummy, entrypoint_hook

# (the package's `transaction_retry` attribute is the decorator)
transaction_retry_module = importlib.import_module(
    'threadko.sqlalchemy.transaction_retry')


def op_error(connection_invalidated=False):
    return OperationalError(
        'SELECT 1', {}, Exception('gone'),
        connection_invalidated=connection_invalidated)


class Outcomes:
    """A function that raises or returns the given outcomes in turn, and
    counts its calls."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class RecordingSession:
    """Stands in for a session in the unit tests: notes rollbacks."""

    def __init__(self):
        self.rollbacks = 0

    def rollback(self):
        self.rollbacks += 1


@pytest.fixture
def sleeps(monkeypatch):
    """The waits the decorator asks for, instead of waiting."""
    waits = []
    monkeypatch.setattr(
        transaction_retry_module, 'time',
        types.SimpleNamespace(sleep=waits.append))
    return waits


# -- semantics ----------------------------------------------------------------

# nameko-sqlalchemy's table: (kwargs, outcomes, result, waits). Its
# retry() called sleep(0) before the first retry; threadko retries at once,
# so only the non-zero waits are compared: the same waits in both.
RETRY_TABLE = [
    # success on first try
    ({'total': 0, 'backoff_factor': 0.5}, [1], 1, []),
    ({'total': 1, 'backoff_factor': 0.5}, [1], 1, []),
    # single retry + success
    ({'total': 1, 'backoff_factor': 0.5}, [op_error(), 2], 2, []),
    # same even if more retries would have been possible
    ({'total': 2, 'backoff_factor': 0.5}, [op_error(), 2], 2, []),
    # not an OperationalError: raised at once
    ({'total': 1, 'backoff_factor': 0.5}, [ValueError()], ValueError, []),
    # OperationalError, then another error
    ({'total': 10, 'backoff_factor': 0.5},
     [op_error(), ValueError(), 3], ValueError, []),
    # several OperationalErrors, then success
    ({'total': 10, 'backoff_factor': 0.5},
     [op_error() for _ in range(4)] + [5], 5, [1.0, 2.0, 4.0]),
    # ... with a maximal wait
    ({'total': 10, 'backoff_factor': 0.5, 'backoff_max': 1.2},
     [op_error() for _ in range(4)] + [5], 5, [1.0, 1.2, 1.2]),
    # ... without waits
    ({'total': 10, 'backoff_factor': 0},
     [op_error() for _ in range(4)] + [5], 5, []),
    # retries exhausted: the last error
    ({'total': 3, 'backoff_factor': 0.5},
     [op_error() for _ in range(4)], OperationalError, [1.0, 2.0]),
]


@pytest.mark.parametrize('kwargs,outcomes,expected,waits', RETRY_TABLE)
def test_retry_configuration(sleeps, kwargs, outcomes, expected, waits):
    fn = Outcomes(*outcomes)
    decorated = transaction_retry(**kwargs)(fn)
    if isinstance(expected, type) and issubclass(expected, Exception):
        with pytest.raises(expected):
            decorated()
    else:
        assert decorated() == expected
    assert [wait for wait in sleeps if wait] == waits


@pytest.mark.parametrize('total,calls', [(None, 2), (0, 2), (1, 2), (3, 4)])
def test_tries_total_plus_one_times(sleeps, total, calls):
    errors = [op_error() for _ in range(10)]
    fn = Outcomes(*errors)
    kwargs = {} if total is None else {'total': total}
    with pytest.raises(OperationalError) as raised:
        transaction_retry(**kwargs)(fn)()
    assert fn.calls == calls  # total at least 1; default 1
    assert raised.value is errors[calls - 1]  # the last one


def test_bare_decorator_retries_once():
    fn = Outcomes(op_error(), 'ok')
    assert transaction_retry(fn)() == 'ok'
    assert fn.calls == 2


@pytest.mark.parametrize('error', [
    ValueError('not a database error'),
    IntegrityError('INSERT', {}, Exception('duplicate')),
], ids=['ValueError', 'IntegrityError'])
def test_other_errors_are_not_retried(error):
    fn = Outcomes(error, 'not reached')
    with pytest.raises(type(error)):
        transaction_retry(total=5)(fn)()
    assert fn.calls == 1


@pytest.mark.parametrize('invalidated,rollbacks', [(True, 2), (False, 0)])
def test_given_session_is_rolled_back_when_the_connection_was_invalidated(
        invalidated, rollbacks):
    session = RecordingSession()
    fn = Outcomes(op_error(invalidated), op_error(invalidated), 'ok')
    assert transaction_retry(session=session, total=2)(fn)() == 'ok'
    assert session.rollbacks == rollbacks


def test_attrgetter_session_is_looked_up_on_self_and_rolled_back():
    class Wrapper:
        def __init__(self):
            self.session = RecordingSession()

    class Service:
        def __init__(self):
            self.db = Wrapper()
            self.fn = Outcomes(op_error(True), 'ok')

        @transaction_retry(session=operator.attrgetter('db.session'))
        def method(self, value):
            return self.fn(value)

    service = Service()
    assert service.method('x') == 'ok'
    assert service.db.session.rollbacks == 1
    assert service.fn.calls == 2


def test_last_error_still_rolls_back_before_it_is_raised():
    session = RecordingSession()
    fn = Outcomes(op_error(True), op_error(True))
    with pytest.raises(OperationalError):
        transaction_retry(session=session)(fn)()
    assert session.rollbacks == 2


def test_signature_name_and_doc_are_the_wrapped_function_s():
    def create(self, value, *, flag=False):
        """Create a thing."""

    decorated = transaction_retry(create)
    with_args = transaction_retry(total=3)(create)
    for fn in (decorated, with_args):
        assert fn.__name__ == 'create'
        assert fn.__doc__ == 'Create a thing.'
        assert inspect.signature(fn) == inspect.signature(create)
        assert inspect.unwrap(fn) is create


def test_rpc_signature_check_sees_the_wrapped_signature(
        memory_config, container_factory, tmp_path):
    """A call with wrong arguments is refused before a worker starts, as
    for an undecorated method (the entrypoint's check once raised a bare
    TypeError for a decorated method, and the caller never got a reply)."""

    class Service:
        name = 'svc'
        db = Database(Base)

        @rpc
        @transaction_retry(session=operator.attrgetter('db.session'))
        def add(self, a, b):
            return a + b

    container = container_factory(Service, {'DB_URIS': {
        'svc:Base': 'sqlite:///{}'.format(tmp_path / 'db')}})
    container.start()
    with ClusterRpcProxy({'AMQP_URI': memory_config['AMQP_URI']},
                         timeout=10) as cluster:
        assert cluster.svc.add(1, 2) == 3
        with pytest.raises(IncorrectSignature) as error:
            cluster.svc.add(1, 2, 3)
        assert 'add() takes 3 positional arguments but 4' in str(error.value)


# -- a real server restart between calls --------------------------------------

def retry_services():
    class WithDatabase:
        name = 'svc'
        db = Database(Base)

        @dummy
        @transaction_retry(session=operator.attrgetter('db.session'))
        def create(self, value):
            self.db.session.add(Item(value=value))
            self.db.session.commit()

        @dummy
        def create_without_retry(self, value):
            self.db.session.add(Item(value=value))
            self.db.session.commit()

        @dummy
        @transaction_retry
        def count_with_context_session(self):
            with self.db.get_session() as session:
                return session.query(Item).count()

        @dummy
        def count_retry_inside(self):
            with self.db.get_session() as session:
                @transaction_retry(session=session)
                def count():
                    return session.query(Item).count()

                return count()

    class WithDatabaseSession:
        name = 'svc'
        session = DatabaseSession(Base)

        @dummy
        @transaction_retry(session=operator.attrgetter('session'))
        def create(self, value):
            self.session.add(Item(value=value))
            self.session.commit()

        @dummy
        def create_without_retry(self, value):
            self.session.add(Item(value=value))
            self.session.commit()

        @dummy
        def count_retry_inside(self):
            session = self.session

            @transaction_retry(session=session)
            def count():
                return session.query(Item).count()

            return count()

    return {'Database': WithDatabase, 'DatabaseSession': WithDatabaseSession}


def call(container, method, *args):
    with entrypoint_hook(container, method) as hook:
        return hook(*args)


@pytest.fixture(params=['Database', 'DatabaseSession'])
def service_cls(request):
    return retry_services()[request.param]


@pytest.fixture
def started(backend, container_factory, service_cls):
    container = container_factory(
        service_cls, {'DB_URIS': {'svc:Base': backend.url}})
    container.start()
    call(container, 'create', 'before the restart')  # a pooled connection
    return container


SERVERS = pytest.mark.parametrize(
    'backend', ['mariadb', 'postgresql'], indirect=True)


@pytest.mark.slow
@SERVERS
def test_retry_survives_a_server_restart(backend, started):
    backend.restart()
    call(started, 'create', 'after the restart')  # retried on a new one
    assert count(backend.engine) == 2


@pytest.mark.slow
@SERVERS
def test_without_retry_a_server_restart_fails_the_call(backend, started):
    backend.restart()
    with pytest.raises(OperationalError) as error:
        call(started, 'create_without_retry', 'after the restart')
    assert error.value.connection_invalidated
    # the failure invalidated the pool: the next call works
    call(started, 'create_without_retry', 'later')
    assert count(backend.engine) == 2


@pytest.mark.slow
@SERVERS
def test_retry_inside_the_method_survives_a_server_restart(
        backend, started):
    backend.restart()
    assert call(started, 'count_retry_inside') == 1


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['postgresql'], indirect=True)
@pytest.mark.parametrize('service_cls', ['Database'], indirect=True)
def test_bare_retry_with_context_session_survives_a_server_restart(
        backend, started):
    backend.restart()
    assert call(started, 'count_with_context_session') == 1
