"""SQLAlchemy sessions for services: nameko-sqlalchemy's API on threads.

Install with ``pip install threadko[sqlalchemy]``. Porting from
nameko-sqlalchemy is ``s/nameko_sqlalchemy/threadko.sqlalchemy/``::

    from threadko.sqlalchemy import Database

    class Service:
        name = "service"
        db = Database(DeclarativeBase)

        @rpc
        def write(self, value):
            with self.db.get_session() as session:
                session.add(Model(value=value))

The database of each provider comes from the ``DB_URIS`` config key,
keyed ``"<service name>:<declarative base class name>"``. Each container
has one engine (one connection pool) per database; each worker gets
sessions of its own, closed (and so rolled back, if not committed) when
the worker ends, however it ends. C drivers (MySQLdb, psycopg2, sqlite3)
run concurrently, one thread per worker.
"""

from threadko.sqlalchemy.database import (  # noqa: F401
    DB_ENGINE_OPTIONS_KEY, DB_SESSION_OPTIONS_KEY, DB_URIS_KEY, Database,
)
from threadko.sqlalchemy.database_session import (  # noqa: F401
    DatabaseSession, Session,
)
from threadko.sqlalchemy.transaction_retry import (  # noqa: F401
    transaction_retry,
)

__all__ = [
    'Database', 'DatabaseSession', 'Session', 'transaction_retry',
    'DB_URIS_KEY', 'DB_ENGINE_OPTIONS_KEY', 'DB_SESSION_OPTIONS_KEY',
]
