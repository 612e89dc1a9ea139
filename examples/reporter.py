"""A timer service with a dependency provider of its own (docs/concepts.rst).

Every minute ``reporter`` counts the rows of the ``events`` table of the
SQLite database at ``DB_PATH``. Each worker gets its own connection, made,
used and closed on the worker's one thread.
"""

import sqlite3

from threadko.extensions import DependencyProvider
from threadko.timer import timer


class Database(DependencyProvider):
    """Gives each worker its own sqlite3 connection."""

    def setup(self):
        self.path = self.container.config.get('DB_PATH', 'app.db')

    def get_dependency(self, worker_ctx):
        return sqlite3.connect(self.path)

    def worker_teardown(self, worker_ctx):
        getattr(worker_ctx.service, self.attr_name).close()


class Reporter:
    name = 'reporter'

    db = Database()

    @timer(interval=60)
    def report(self):
        (count,) = self.db.execute('select count(*) from events').fetchone()
        print(count, 'events')
