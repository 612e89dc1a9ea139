"""The pytest fixtures of :mod:`threadko.sqlalchemy`, by the name of
nameko-sqlalchemy's module. They are registered automatically; see
:mod:`threadko.testing.sqlalchemy_fixtures`."""

from threadko.testing.sqlalchemy_fixtures import (  # noqa: F401
    database, db_connection, db_engine_options, db_session, db_url,
    model_base, pytest_addoption,
)
