"""``DatabaseSession``: one session per worker, opened before the method
runs (nameko-sqlalchemy's original interface)."""

import threading
from weakref import WeakKeyDictionary

from sqlalchemy.orm import sessionmaker

from threadko.extensions import DependencyProvider
from threadko.sqlalchemy.database import close_quietly, database_settings
from threadko.sqlalchemy.engines import Engines


class DatabaseSession(DependencyProvider):
    """Injects a SQLAlchemy session of the worker's own: ``self.session``,
    closed when the worker ends (whether its method returned, raised, or
    was abandoned by a kill), rolling back what it did not commit.

    Parameters and config as :class:`~threadko.sqlalchemy.Database`.
    """

    engines = Engines()

    def __init__(self, declarative_base, session_options=None,
                 engine_options=None):
        self.declarative_base = declarative_base
        self.session_options = session_options or {}
        self.engine_options = engine_options or {}
        #: worker context -> its session
        self.sessions = WeakKeyDictionary()
        self._sessions_lock = threading.Lock()

    def setup(self):
        self.db_uri, engine_options, session_options = database_settings(
            self, self.engine_options, self.session_options)
        self.engine = self.engines.get(self.db_uri, engine_options)
        self.Session = sessionmaker(bind=self.engine, **session_options)

    def stop(self):
        self.__dict__.pop('engine', None)  # disposed by the container's Engines

    kill = stop

    def get_dependency(self, worker_ctx):
        session = self.Session()
        with self._sessions_lock:
            self.sessions[worker_ctx] = session
        return session

    def worker_teardown(self, worker_ctx):
        with self._sessions_lock:
            session = self.sessions.pop(worker_ctx, None)
        if session is not None:
            close_quietly(session, worker_ctx)


#: Deprecated name of :class:`DatabaseSession` (nameko-sqlalchemy's first
#: provider had it).
Session = DatabaseSession
