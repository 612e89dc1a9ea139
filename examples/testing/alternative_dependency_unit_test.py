"""Unit testing with a working stand-in for a dependency instead of a mock.

``worker_factory(Service, db=...)`` injects the object given for ``db``
and mocks the rest. Here the service's database is an in-memory SQLite
database that the test can query afterwards.
"""

import sqlite3

import pytest

from threadko.extensions import DependencyProvider
from threadko.rpc import rpc
from threadko.testing.services import worker_factory


class Database(DependencyProvider):
    """Gives each worker a connection to the ``DB_PATH`` database."""

    def setup(self):
        self.path = self.container.config["DB_PATH"]

    def get_dependency(self, worker_ctx):
        return sqlite3.connect(self.path)


class Service:
    """The service under test."""

    name = "service"

    db = Database()

    @rpc
    def save(self, value):
        self.db.execute("insert into results (value) values (?)", (value,))
        self.db.commit()


@pytest.fixture
def connection():
    """A fresh in-memory database with the service's table."""
    connection = sqlite3.connect(":memory:")
    connection.execute(
        "create table results (id integer primary key, value text)")
    yield connection
    connection.close()


def test_service(connection):
    # the service gets the test's database instead of a mock
    service = worker_factory(Service, db=connection)

    service.save("helloworld")
    rows = connection.execute("select value from results").fetchall()
    assert rows == [("helloworld",)]
