"""The pytest fixtures of threadko.sqlalchemy (``db_url``, ``model_base``,
``db_engine_options``, ``db_connection``, ``db_session``, ``database``),
used as a project uses nameko-sqlalchemy's: inner test sessions
(``pytester``) in a subprocess, so the fixtures come from threadko's
``pytest11`` entry point as they do for a user, with the project's own
``conftest.py``."""

import sqlite3
from contextlib import closing
from importlib.metadata import entry_points

import pytest

pytest_plugins = ['pytester']

pytestmark = pytest.mark.timeout(120)

MODELS = '''
from sqlalchemy import Column, ForeignKey, Integer, String
from sqlalchemy.orm import declarative_base

DeclarativeBase = declarative_base()


class User(DeclarativeBase):
    __tablename__ = "users"

    id = Column(Integer, primary_key=True)
    name = Column(String(100))


class Address(DeclarativeBase):
    __tablename__ = "addresses"

    id = Column(Integer, primary_key=True)
    user_id = Column(Integer, ForeignKey("users.id"))
    email = Column(String(100))
'''

# a project's conftest.py: its models, on a SQLite file next to it
CONFTEST = '''
import pathlib

import pytest

from models import DeclarativeBase

DB_PATH = pathlib.Path(__file__).parent / "test.db"


@pytest.fixture(scope="session")
def model_base():
    return DeclarativeBase


@pytest.fixture(scope="session")
def db_url():
    return "sqlite:///" + str(DB_PATH)
'''

# what is in the database file, read by sqlite3 itself, on a connection
# of its own (so only committed rows)
ON_DISK = '''
import sqlite3
from contextlib import closing

from conftest import DB_PATH


def on_disk(sql):
    with closing(sqlite3.connect(str(DB_PATH))) as connection:
        return connection.execute(sql).fetchall()


def users_on_disk():
    return on_disk("SELECT id, name FROM users ORDER BY id")
'''


def run(pytester, *args, **files):
    """Write ``files`` (``models.py`` and the conftest by default) and run
    pytest on them in a subprocess, plugins loaded from their entry
    points."""
    files.setdefault('models', MODELS)
    files.setdefault('conftest', CONFTEST)
    files.setdefault('on_disk', ON_DISK)
    pytester.makepyfile(**files)
    return pytester.runpytest_subprocess('-p', 'no:cacheprovider', *args)


def tables_in(path):
    with closing(sqlite3.connect(str(path))) as connection:
        return [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]


PLUGIN = 'threadko.testing.sqlalchemy_fixtures'


def test_fixtures_are_registered_by_threadkos_entry_point(request):
    plugins = {ep.name: ep.value for ep in entry_points(group='pytest11')}
    assert plugins.get('threadko') == 'threadko.testing.plugin'
    assert request.config.pluginmanager.has_plugin(PLUGIN)


def test_db_session_commits_rows_then_empties_the_tables_and_drops_them(
        pytester):
    result = run(pytester, '-v', test_inner='''
from models import Address, User
from on_disk import on_disk, users_on_disk


def test_tables_were_created(db_connection):
    assert sorted(name for (name,) in on_disk(
        "SELECT name FROM sqlite_master WHERE type = 'table'")) == [
            "addresses", "users"]


def test_add_and_commit(db_session):
    db_session.add_all([User(id=1, name="Joe"), User(id=2, name="Ann")])
    db_session.add(Address(id=1, user_id=1, email="joe@example.com"))
    db_session.commit()
    assert db_session.get(User, 1).name == "Joe"
    assert users_on_disk() == [(1, "Joe"), (2, "Ann")]


def test_the_next_test_sees_empty_tables(db_session):
    assert db_session.query(User).count() == 0
    assert db_session.query(Address).count() == 0
    assert users_on_disk() == []
    assert on_disk("SELECT * FROM addresses") == []


def test_as_a_context_manager_it_commits(db_session):
    with db_session as session:
        session.add(User(id=3, name="Bob"))
    assert users_on_disk() == [(3, "Bob")]


def test_what_a_test_does_not_commit_is_not_kept(db_session):
    db_session.add(User(id=4, name="Uncommitted"))
    db_session.flush()


def test_empty_again(db_session):
    assert db_session.query(User).all() == []
    assert users_on_disk() == []
''')
    result.assert_outcomes(passed=6)
    # the conftest's db_url was used; the tables are gone afterwards
    db_file = pytester.path / 'test.db'
    assert db_file.exists()
    assert tables_in(db_file) == []


SERVICE = '''
import pytest

from models import DeclarativeBase, User
from on_disk import users_on_disk
from threadko.sqlalchemy import Database, DatabaseSession
from threadko.testing.services import dummy, entrypoint_hook


class UserService:
    name = "users"

    session = DatabaseSession(DeclarativeBase)
    db = Database(DeclarativeBase)

    @dummy
    def names(self):
        users = self.session.query(User).order_by(User.id)
        return [user.name for user in users]

    @dummy
    def add(self, id_, name):
        self.session.add(User(id=id_, name=name))
        self.session.commit()

    @dummy
    def add_with_database(self, id_, name):
        with self.db.get_session() as session:
            session.add(User(id=id_, name=name))


@pytest.fixture
def container(container_factory, db_url, db_connection):
    container = container_factory(
        # keyed by the declarative base's class name: "Base" here
        UserService,
        {"DB_URIS": {"users:" + DeclarativeBase.__name__: db_url}})
    container.start()
    return container


def call(container, method_name, *args):
    with entrypoint_hook(container, method_name) as hook:
        return hook(*args)
'''


def test_db_session_and_a_service_under_container_factory_share_the_db(
        pytester):
    result = run(pytester, '-v', test_inner=SERVICE + '''

def test_each_sees_what_the_other_committed(db_session, container):
    db_session.add(User(id=1, name="from the test"))
    db_session.commit()
    assert call(container, "names") == ["from the test"]

    call(container, "add", 2, "from DatabaseSession")
    call(container, "add_with_database", 3, "from Database")
    users = db_session.query(User).order_by(User.id)
    assert [user.name for user in users] == [
        "from the test", "from DatabaseSession", "from Database"]
    assert call(container, "names") == [
        "from the test", "from DatabaseSession", "from Database"]


def test_rows_the_service_committed_are_deleted_too(db_session, container):
    assert call(container, "names") == []
    assert db_session.query(User).count() == 0
    call(container, "add", 1, "again")
    assert db_session.query(User).count() == 1


def test_db_session_empties_the_tables_even_unused(db_session, container):
    # (db_connection alone does not: as nameko-sqlalchemy's, only
    # db_session and database delete rows after a test)
    call(container, "add", 1, "only the service")
    assert users_on_disk() == [(1, "only the service")]


def test_empty_again(db_session, container):
    assert users_on_disk() == []
    assert call(container, "names") == []
''')
    result.assert_outcomes(passed=4)
    assert tables_in(pytester.path / 'test.db') == []


def test_what_a_test_leaves_open_on_db_connection_is_cleaned_up_too(
        pytester):
    """SQLAlchemy 2 begins a transaction whenever a test executes on
    ``db_connection`` itself, and a session that finds it joins it without
    committing it: the deletions must not end up in it."""
    result = run(
        pytester, '-v', '-W', 'error::sqlalchemy.exc.SAWarning',
        test_inner=SERVICE + '''
from sqlalchemy import insert, select


def test_direct_write_after_a_commit(db_connection, db_session):
    db_session.add(User(id=1, name="committed"))
    db_session.commit()
    db_connection.execute(
        insert(User.__table__).values(id=2, name="not committed"))
    # (SQLAlchemy 1.4, unless in future mode, commits it at once)
    assert (1, "committed") in users_on_disk()


def test_rows_gone_and_the_database_unlocked(db_connection, db_session,
                                             container):
    assert not db_connection.in_transaction()
    assert users_on_disk() == []
    # on SQLite, a write lock still held would make this wait, then fail
    call(container, "add", 3, "service")
    assert users_on_disk() == [(3, "service")]


def test_direct_read_then_db_session(db_connection, db_session):
    db_connection.execute(select(User.__table__)).fetchall()
    db_session.add(User(id=4, name="joined"))
    db_session.commit()


def test_db_session_then_database(db_session, database):
    db_session.add(User(id=5, name="a"))
    db_session.commit()
    db_session.query(User).all()
    with database.get_session() as session:
        session.add(User(id=6, name="b"))


def test_database_then_db_session(database, db_session):
    database.session.query(User).all()
    db_session.add(User(id=7, name="c"))
    db_session.commit()
    db_session.query(User).all()
    with database.get_session() as session:
        session.add(User(id=8, name="d"))


def test_empty_and_unlocked(db_connection, db_session, container):
    assert not db_connection.in_transaction()
    assert users_on_disk() == []
    call(container, "add", 9, "service")
''')
    result.assert_outcomes(passed=6)
    assert tables_in(pytester.path / 'test.db') == []


# nameko-sqlalchemy's own tests of the ``database`` fixture (its
# test_pytest_fixtures.py), with ``session.get`` for ``query().get``
DATABASE_STYLES = '''
import pytest

from models import DeclarativeBase, User
from on_disk import users_on_disk
from threadko.sqlalchemy import Database
from threadko.testing.services import dummy, worker_factory


class GetSession:
    name = "exampleservice"

    db = Database(DeclarativeBase)

    @dummy
    def write(self, id_, name):
        obj = User(id=id_, name=name)
        session = self.db.get_session()
        session.add(obj)
        session.commit()
        session.close()

    @dummy
    def read(self, id_):
        session = self.db.get_session()
        name = session.get(User, id_).name
        session.close()
        return name


class GetSessionContextManager:
    name = "exampleservice"

    db = Database(DeclarativeBase)

    @dummy
    def write(self, id_, name):
        with self.db.get_session() as session:
            obj = User(id=id_, name=name)
            session.add(obj)

    @dummy
    def read(self, id_):
        with self.db.get_session() as session:
            return session.get(User, id_).name


class WorkerScopeSession:
    name = "exampleservice"

    db = Database(DeclarativeBase)

    @dummy
    def write(self, id_, name):
        obj = User(id=id_, name=name)
        self.db.session.add(obj)
        self.db.session.commit()

    @dummy
    def read(self, id_):
        return self.db.session.get(User, id_).name


class WorkerScopeSessionInContext:
    name = "exampleservice"

    db = Database(DeclarativeBase)

    @dummy
    def write(self, id_, name):
        with self.db.session as session:
            obj = User(id=id_, name=name)
            session.add(obj)

    @dummy
    def read(self, id_):
        with self.db.session as session:
            return session.get(User, id_).name


STYLES = [GetSession, GetSessionContextManager, WorkerScopeSession,
          WorkerScopeSessionInContext]
'''


def test_database_with_worker_factory_in_each_style(pytester):
    result = run(pytester, '-v', test_inner=DATABASE_STYLES + '''

@pytest.mark.parametrize("service_cls", STYLES)
def test_database_fixture(service_cls, database):
    service = worker_factory(service_cls, db=database)

    service.write(11, "ham")
    assert service.read(11) == "ham"
    # committed, so every connection sees it
    assert users_on_disk() == [(11, "ham")]
    # more than one call on the same instance
    service.write(12, "spam")
    assert service.read(12) == "spam"


@pytest.mark.parametrize("service_cls", STYLES)
def test_rows_were_deleted(service_cls, database):
    assert users_on_disk() == []
    service = worker_factory(service_cls, db=database)
    service.write(11, "ham")


def test_what_a_worker_did_not_commit_is_rolled_back(database):
    database.session.add(User(id=1, name="uncommitted"))
    database.session.flush()
    with database.get_session() as session:
        session.add(User(id=2, name="committed"))


def test_finally_empty(database, db_session):
    assert users_on_disk() == []
    assert db_session.query(User).count() == 0
''')
    result.assert_outcomes(passed=10)
    assert tables_in(pytester.path / 'test.db') == []


def test_test_db_url_option_reaches_db_url(pytester):
    url = 'sqlite:///' + str(pytester.path / 'from-option.db')
    result = run(pytester, '--test-db-url', url, conftest='''
import pytest

from models import DeclarativeBase


@pytest.fixture(scope="session")
def model_base():
    return DeclarativeBase
''', test_inner='''
from models import User


def test_url(db_url, db_connection, db_session):
    assert db_url == {url!r}
    assert str(db_connection.engine.url) == {url!r}
    db_session.add(User(id=1, name="x"))
    db_session.commit()
'''.format(url=url))
    result.assert_outcomes(passed=1)
    # the database was that file: the tables were made there, and dropped
    assert (pytester.path / 'from-option.db').exists()
    assert tables_in(pytester.path / 'from-option.db') == []


def test_defaults_sqlite_in_memory_and_no_engine_options(pytester):
    result = run(pytester, conftest='''
import pytest

from models import DeclarativeBase


@pytest.fixture(scope="session")
def model_base():
    return DeclarativeBase
''', test_inner='''
from models import User


def test_defaults(db_url, db_engine_options, db_connection, db_session):
    assert db_url == "sqlite://"
    assert db_engine_options == {}
    assert not db_connection.engine.echo
    db_session.add(User(id=1, name="x"))
    db_session.commit()
    assert db_session.query(User).count() == 1


def test_emptied(db_session):
    assert db_session.query(User).count() == 0
''')
    result.assert_outcomes(passed=2)


def test_db_engine_options_reach_create_engine(pytester):
    result = run(pytester, conftest=CONFTEST + '''

@pytest.fixture(scope="session")
def db_engine_options():
    return {
        "echo": True,
        "execution_options": {"threadko_test": "reached"},
    }
''', test_inner='''
from models import User


def test_engine(db_engine_options, db_connection, db_session):
    engine = db_connection.engine
    assert engine.echo is True
    assert engine.get_execution_options()["threadko_test"] == "reached"
    assert db_connection.get_execution_options()["threadko_test"] == "reached"
    db_session.add(User(id=1, name="echoed"))
    db_session.commit()
''')
    result.assert_outcomes(passed=1)


def test_model_base_must_be_overridden(pytester):
    result = run(pytester, conftest='', test_inner='''
def test_model_base(model_base):
    pass


def test_db_session(db_session):
    pass
''')
    assert result.ret == 1
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        '*NotImplementedError*model_base*has to be overwritten*'])


# installed as sitecustomize.py of the inner interpreter: every import of
# sqlalchemy fails as it does where it is not installed, from the start
HIDE_SQLALCHEMY = '''
import sys


class NoSQLAlchemy:
    def find_spec(self, name, path=None, target=None):
        if name == "sqlalchemy" or name.startswith("sqlalchemy."):
            raise ModuleNotFoundError(
                "No module named 'sqlalchemy'", name="sqlalchemy")
        return None


sys.meta_path.insert(0, NoSQLAlchemy())
'''


def test_a_project_without_sqlalchemy_is_unaffected(pytester):
    result = run(
        pytester, '--test-db-url', 'postgresql://unused', '-v',
        models='', on_disk='', sitecustomize=HIDE_SQLALCHEMY, conftest='''
import pytest


@pytest.fixture(scope="session")
def model_base():
    return object()
''',
        test_inner='''
import sys

import pytest


def test_sqlalchemy_is_missing():
    with pytest.raises(ImportError):
        import sqlalchemy  # noqa: F401
    assert "sqlalchemy" not in sys.modules


def test_the_plugin_is_loaded_and_its_option_parsed(request, db_url):
    assert request.config.pluginmanager.has_plugin(
        "threadko.testing.sqlalchemy_fixtures")
    assert db_url == "postgresql://unused"


def test_unrelated(container_factory):
    assert 1 + 1 == 2


def test_a_database_fixture_says_what_is_missing(db_session):
    pass
''')
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        '*test_a_database_fixture_says_what_is_missing ERROR*',
        "*No module named 'sqlalchemy'*",
    ])


def test_the_option_registered_first_by_another_plugin_is_tolerated(
        pytester):
    """nameko-sqlalchemy's plugin, installed too, registers --test-db-url
    (with the same dest) before threadko's does."""
    pytester.makepyfile(nameko_sqlalchemy_like='''
def pytest_addoption(parser):
    parser.addoption(
        "--test-db-url", action="store", dest="TEST_DB_URL",
        default="sqlite://", help="DB url for testing")
''')
    url = 'sqlite:///' + str(pytester.path / 'test.db')
    result = run(
        pytester, '-p', 'nameko_sqlalchemy_like', '--test-db-url', url,
        conftest='''
import pytest

from models import DeclarativeBase


@pytest.fixture(scope="session")
def model_base():
    return DeclarativeBase
''', test_inner='''
from models import User


def test_both_loaded(request, db_url, db_session):
    assert request.config.pluginmanager.has_plugin("nameko_sqlalchemy_like")
    assert request.config.pluginmanager.has_plugin(
        "threadko.testing.sqlalchemy_fixtures")
    assert db_url == {url!r}
    db_session.add(User(id=1, name="x"))
    db_session.commit()
'''.format(url=url))
    result.assert_outcomes(passed=1)
    assert 'already added' not in result.stderr.str()
    assert 'conflicting option' not in result.stderr.str()


def test_nameko_sqlalchemys_own_plugin_takes_the_session(pytester):
    """nameko-sqlalchemy installed too (its plugin registered before
    threadko's, as an entry point would be): threadko's fixtures step
    aside, and the project gets nameko-sqlalchemy's."""
    pytester.makepyfile(nameko_sqlalchemy='''
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--test-db-url", action="store", dest="TEST_DB_URL",
        default="sqlite://", help="DB url for testing")


@pytest.fixture
def db_session():
    return "nameko-sqlalchemy's"
''')
    result = run(pytester, '-p', 'nameko_sqlalchemy', '-s', test_inner='''
def test_whose(request, db_session):
    assert not request.config.pluginmanager.has_plugin(
        "threadko.testing.sqlalchemy_fixtures")
    assert db_session == "nameko-sqlalchemy's"
''')
    result.assert_outcomes(passed=1)


def test_help_lists_the_option(pytester):
    result = pytester.runpytest_subprocess('-p', 'no:cacheprovider', '--help')
    assert result.ret == 0
    result.stdout.fnmatch_lines(['*--test-db-url*'])


def test_nameko_sqlalchemy_module_name_is_an_alias():
    from threadko.sqlalchemy import pytest_fixtures
    from threadko.testing import sqlalchemy_fixtures

    for name in ('db_url', 'model_base', 'db_engine_options', 'db_connection',
                 'db_session', 'database', 'pytest_addoption'):
        assert getattr(pytest_fixtures, name) is getattr(
            sqlalchemy_fixtures, name)
