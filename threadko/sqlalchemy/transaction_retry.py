"""``transaction_retry``: run a function again when the database
connection failed (nameko-sqlalchemy's decorator)."""

import functools
import operator
import time

from sqlalchemy.exc import OperationalError


def transaction_retry(wrapped=None, session=None, total=1,
                      backoff_factor=0, backoff_max=None):
    """Retry the decorated function when it raises SQLAlchemy's
    :class:`~sqlalchemy.exc.OperationalError` (the connection failed, the
    server restarted), up to ``total`` times.

    Usable bare (``@transaction_retry``) or with arguments::

        @rpc
        @transaction_retry(session=operator.attrgetter('db.session'))
        def create(self, value):
            self.db.session.add(Model(value=value))
            self.db.session.commit()

    :param session: a session to roll back before retrying when the
        connection was invalidated, so the transaction can run again; or an
        :func:`operator.attrgetter` applied to the first argument (``self``
        of a method), for a session that only exists per call
    :param total: how many times to retry (at least 1)
    :param backoff_factor: from the second retry on, wait
        ``backoff_factor * 2 ** (retries - 1)`` seconds first (0: never
        wait)
    :param backoff_max: the longest wait, in seconds (``None``: no limit)
    :raises OperationalError: the last error, once the retries are spent

    Wrap single transactions only: every statement of the function runs
    again on a retry, also the ones that had succeeded.
    """
    if wrapped is None:
        return functools.partial(
            transaction_retry, session=session, total=total,
            backoff_factor=backoff_factor, backoff_max=backoff_max)

    total = max(total, 1)
    backoff_factor = max(backoff_factor, 0)
    backoff_max = (float('inf') if backoff_max is None
                   else max(0, backoff_max))

    @functools.wraps(wrapped)
    def retrying(*args, **kwargs):
        errors = 0
        while True:
            try:
                return wrapped(*args, **kwargs)
            except OperationalError as exc:
                if exc.connection_invalidated:
                    _rollback(session, args)
                errors += 1
                if errors > total:
                    raise
            # the first retry at once: most failures are a connection the
            # server closed, and a new one works
            if errors >= 2:
                time.sleep(min(
                    backoff_factor * 2 ** (errors - 1), backoff_max))

    return retrying


def _rollback(session, args):
    if isinstance(session, operator.attrgetter):
        session = session(args[0])
    if session is not None:
        session.rollback()
