"""``DatabaseSession``: one session per worker, opened before the method
runs (nameko-sqlalchemy's original interface)."""

from threadko.sqlalchemy.database import WorkerDatabaseProvider


class DatabaseSession(WorkerDatabaseProvider):
    """Injects a SQLAlchemy session of the worker's own: ``self.session``,
    closed when the worker ends (whether its method returned, raised, or
    was abandoned by a kill), rolling back what it did not commit.

    Parameters and config as :class:`~threadko.sqlalchemy.Database`.
    """

    @property
    def sessions(self):
        """Worker context -> its session."""
        return self._opened

    def open_for_worker(self):
        return self.Session()


#: Deprecated name of :class:`DatabaseSession` (nameko-sqlalchemy's first
#: provider had it).
Session = DatabaseSession
