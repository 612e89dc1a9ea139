"""The container's SQLAlchemy engines: one connection pool per database."""

import threading

from threadko.extensions import SharedExtension

try:
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import QueuePool
except ImportError as exc:  # pragma: no cover (the extra is installed)
    raise ImportError(
        'threadko.sqlalchemy needs SQLAlchemy 1.4 or newer: '
        'pip install "threadko[sqlalchemy]"') from exc


def sized_engine_options(uri, options, max_workers):
    """``options`` for :func:`sqlalchemy.create_engine`, with the pool
    sized for ``max_workers`` workers (``pool_size``) when the database's
    default pool is a :class:`~sqlalchemy.pool.QueuePool` and the options
    choose neither a size nor a pool of their own. SQLAlchemy's default,
    5, would make the sixth concurrent worker wait for a connection."""
    if {'pool_size', 'poolclass', 'pool', 'creator'} & set(options):
        return dict(options)
    url = make_url(uri)
    if not issubclass(url.get_dialect().get_pool_class(url), QueuePool):
        return dict(options)  # e.g. SQLite in memory: one per thread
    return dict(options, pool_size=max_workers)


class Engines(SharedExtension):
    """The engines of a container's SQLAlchemy providers: one per database
    URI and engine options, so providers of the same database share one
    connection pool. Created when a provider sets up; disposed (every
    pooled connection closed) when the container stops or is killed."""

    def __init__(self):
        super().__init__()
        self._engines = {}
        self._lock = threading.Lock()

    def get(self, uri, options):
        """The engine of ``uri`` with ``options``, made on first use.

        :param options: keyword arguments of
            :func:`sqlalchemy.create_engine`; the pool is sized from the
            container's ``max_workers`` unless they say otherwise
            (:func:`sized_engine_options`)
        """
        key = (uri, repr(sorted(options.items())))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = create_engine(
                    uri, **sized_engine_options(
                        uri, options, self.container.max_workers))
            return engine

    def stop(self):
        self._dispose()

    def kill(self):
        self._dispose()

    def _dispose(self):
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            # engine.dispose() closes the connections in the pool, not those
            # still lent to workers that a kill abandoned: returned later,
            # by those workers' teardown, they would stay open in the
            # discarded pool until it is garbage collected. So from now on
            # a connection is closed as it comes back (the listener passes
            # to the pool that dispose() makes, for connections an
            # abandoned worker takes afterwards).
            event.listen(engine.pool, 'checkin', _close_on_checkin)
            engine.dispose()


def _close_on_checkin(dbapi_connection, connection_record):
    """A pool ``checkin`` listener: close the connection (rolled back
    already) instead of keeping it, for pools of a stopped container."""
    connection_record.close()
