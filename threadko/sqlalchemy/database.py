"""``Database``: sessions for a worker, on demand, on one engine per
container (nameko-sqlalchemy's ``Database``)."""

import logging
import threading
from weakref import WeakKeyDictionary

from sqlalchemy.orm import Session as BaseSession
from sqlalchemy.orm import sessionmaker

from threadko.exceptions import ConfigurationError
from threadko.extensions import DependencyProvider
from threadko.sqlalchemy.engines import Engines

_log = logging.getLogger(__name__)

#: ``{"<service name>:<declarative base class name>": uri}``; a URI may
#: contain ``{0[service_name]}`` and ``{0[declarative_base_name]}``
DB_URIS_CONFIG_KEY = DB_URIS_KEY = 'DB_URIS'
#: keyword arguments of ``sqlalchemy.create_engine``, keyed as DB_URIS
DB_ENGINE_OPTIONS_CONFIG_KEY = DB_ENGINE_OPTIONS_KEY = 'DB_ENGINE_OPTIONS'
#: keyword arguments of ``sqlalchemy.orm.sessionmaker``, keyed as DB_URIS
DB_SESSION_OPTIONS_CONFIG_KEY = DB_SESSION_OPTIONS_KEY = 'DB_SESSION_OPTIONS'


class Session(BaseSession):
    """A SQLAlchemy session that, as a context manager, commits when the
    block succeeds and rolls back when it raises (and when the commit
    fails). With ``close_on_exit=True`` it is closed afterwards too."""

    def __init__(self, *args, close_on_exit=False, **kwargs):
        self.close_on_exit = close_on_exit
        super().__init__(*args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            if exc_type is not None:
                self.rollback()
            else:
                try:
                    self.commit()
                except Exception:
                    self.rollback()
                    raise
        finally:
            if self.close_on_exit:
                self.close()


class DatabaseWrapper:
    """What ``Database`` injects into one worker (used by that worker's
    thread only).

    - ``session``: the worker's session, opened on first use; also a
      context manager that commits or rolls back (not closing it);
    - ``get_session(close_on_exit=False)``: a new session of its own,
      for example ``with self.db.get_session() as session: ...``.

    Every session it made is closed when the worker ends.
    """

    def __init__(self, Session):
        self.Session = Session
        self._worker_session = None
        self._context_sessions = []

    def get_session(self, close_on_exit=False):
        """A new :class:`Session`, closed when the worker ends (or at the
        end of its ``with`` block, with ``close_on_exit=True``)."""
        session = self.Session(close_on_exit=close_on_exit)
        self._context_sessions.append(session)
        return session

    @property
    def session(self):
        """The worker's session, made on first use."""
        if self._worker_session is None:
            self._worker_session = self.Session()
        return self._worker_session

    def close(self):
        """Close every session made; what was not committed is rolled
        back and the connections go back to the pool.

        A session that fails to close (its connection died) does not stop
        the others from closing; the first error is raised once all were
        tried."""
        sessions = self._context_sessions
        if self._worker_session is not None:
            sessions = [self._worker_session] + sessions
        error = None
        for session in sessions:
            try:
                session.close()
            except Exception as exc:
                if error is None:
                    error = exc
        if error is not None:
            try:
                raise error
            finally:
                error = None  # no traceback -> frame -> error cycle


def database_settings(provider, engine_options, session_options):
    """``(uri, engine options, session options)`` of a provider of
    ``provider.declarative_base`` in its container: the URI from
    ``DB_URIS``; the options given to the provider, updated by those of
    ``DB_ENGINE_OPTIONS`` and ``DB_SESSION_OPTIONS`` under the same key.

    :raises ConfigurationError: ``DB_URIS`` has no URI for the provider
    """
    config = provider.container.config
    service_name = provider.container.service_name
    base_name = provider.declarative_base.__name__
    key = '{}:{}'.format(service_name, base_name)
    uris = config.get(DB_URIS_KEY) or {}
    if key not in uris:
        raise ConfigurationError(
            'No database URI for {} of service {}: add {!r} to the config '
            'key {}, e.g. {{{!r}: "postgresql://user:password@host/db"}}'
            .format(base_name, service_name, key, DB_URIS_KEY, key))
    uri = uris[key].format({
        'service_name': service_name,
        'declarative_base_name': base_name,
    })
    engine_options = dict(
        engine_options,
        **(config.get(DB_ENGINE_OPTIONS_KEY) or {}).get(key, {}))
    session_options = dict(
        session_options,
        **(config.get(DB_SESSION_OPTIONS_KEY) or {}).get(key, {}))
    return uri, engine_options, session_options


class WorkerDatabaseProvider(DependencyProvider):
    """What :class:`Database` and
    :class:`~threadko.sqlalchemy.DatabaseSession` share: the database of
    ``declarative_base`` from the config, the engine the container's
    providers of that database share, and an object per worker
    (:meth:`open_for_worker`) closed when the worker ends.

    :param declarative_base: the declarative base of the models; its
        class name selects the URI in ``DB_URIS``
    :param session_options: keyword arguments of
        :func:`sqlalchemy.orm.sessionmaker`
    :param engine_options: keyword arguments of
        :func:`sqlalchemy.create_engine`
    """

    engines = Engines()
    #: the session class the provider's ``sessionmaker`` makes
    session_class = None

    def __init__(self, declarative_base, session_options=None,
                 engine_options=None):
        self.declarative_base = declarative_base
        self.session_options = session_options or {}
        self.engine_options = engine_options or {}
        self._opened = WeakKeyDictionary()  # worker context -> its object
        self._opened_lock = threading.Lock()

    def setup(self):
        self.db_uri, engine_options, session_options = database_settings(
            self, self.engine_options, self.session_options)
        self.engine = self.engines.get(self.db_uri, engine_options)
        if self.session_class is None:
            self.Session = sessionmaker(bind=self.engine, **session_options)
        else:
            self.Session = sessionmaker(
                bind=self.engine, class_=self.session_class, **session_options)

    def stop(self):
        self.__dict__.pop('engine', None)  # disposed by the container's Engines

    kill = stop

    def open_for_worker(self):
        """What a worker gets; it has a ``close()``."""
        raise NotImplementedError

    def get_dependency(self, worker_ctx):
        opened = self.open_for_worker()
        with self._opened_lock:
            self._opened[worker_ctx] = opened
        return opened

    def worker_teardown(self, worker_ctx):
        with self._opened_lock:
            opened = self._opened.pop(worker_ctx, None)
        if opened is not None:
            close_quietly(opened, worker_ctx)


class Database(WorkerDatabaseProvider):
    """Injects a :class:`DatabaseWrapper`: ``self.db.session`` (the
    worker's session, opened on first use) and ``self.db.get_session()``
    (new sessions, e.g. ``with self.db.get_session() as session:``).

    Every session a worker opened is closed when the worker ends (whether
    its method returned, raised, or was abandoned by a kill), rolling back
    what it did not commit. The container's providers of one database
    share one engine, whose pool holds ``max_workers`` connections unless
    the engine options say otherwise.

    Parameters as :class:`WorkerDatabaseProvider`.
    """

    session_class = Session

    @property
    def dbs(self):
        """Worker context -> its :class:`DatabaseWrapper`."""
        return self._opened

    def open_for_worker(self):
        return DatabaseWrapper(self.Session)


def close_quietly(closeable, worker_ctx):
    """``closeable.close()`` at a worker's end; a failure (the database
    went away) is logged, not raised: raising from a provider hook would
    kill the container."""
    try:
        closeable.close()
    except Exception:
        _log.warning('could not close the database session of %s',
                     worker_ctx, exc_info=True)
