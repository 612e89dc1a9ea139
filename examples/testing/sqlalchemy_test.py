"""Testing a service that uses ``threadko.sqlalchemy``, with the pytest
fixtures threadko registers (nameko-sqlalchemy's): ``model_base`` says
which tables to create, ``db_url`` which database to create them in (by
default SQLite in memory, or ``--test-db-url``), and every table is
emptied after each test.

In a real project the two fixtures below live in ``conftest.py``.
"""

import pytest

from threadko.testing.services import entrypoint_hook, worker_factory

from examples.sqlalchemy_notes import Note, NotesBase, NotesService


@pytest.fixture(scope='session')
def model_base():
    return NotesBase


@pytest.fixture(scope='session')
def db_url(tmp_path_factory):
    # a file: a service in a container runs its workers on threads of
    # their own, and SQLite's in-memory databases are one per connection
    return 'sqlite:///{}'.format(tmp_path_factory.mktemp('db') / 'notes.db')


def test_add_and_count_with_a_database_stand_in(database):
    # ``database`` stands in for the Database dependency
    service = worker_factory(NotesService, db=database)

    first = service.add('buy milk')
    service.add('call mum')

    assert service.count() == 2
    assert database.session.get(Note, first).text == 'buy milk'


def test_tables_start_empty(db_session):
    assert db_session.query(Note).count() == 0


def test_a_running_service_sees_what_the_test_committed(
        container_factory, db_session, db_url):
    db_session.add(Note(text='from the test'))
    db_session.commit()

    container = container_factory(NotesService, {
        'AMQP_URI': 'memory://', 'DB_URIS': {'notes:NotesBase': db_url}})
    container.start()
    with entrypoint_hook(container, 'add') as add:
        add('from the service')
    with entrypoint_hook(container, 'count') as count:
        assert count() == 2
    assert db_session.query(Note).count() == 2
