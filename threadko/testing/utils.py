"""Small helpers for tests: finding extensions and containers, waiting for a
condition, free ports and matchers for mock assertions.

The waits here poll: they check their condition between attempts, so a
single slow attempt is never interrupted (threads cannot be), and the
timeout is checked once it returns.
"""

import socket
import time
from contextlib import contextmanager
from functools import partial

from threadko.extensions import Entrypoint
from threadko.testing.waiting import Deadline, WaitTimeout

# how often wait_for_call looks at the mock
MOCK_POLL_INTERVAL = 0.005


def get_extension(container, extension_cls, **match_attrs):
    """Return the first of ``container.extensions`` that is an instance of
    ``extension_cls`` and whose attributes equal ``match_attrs``.

    :param container: a :class:`~threadko.containers.ServiceContainer`
    :param extension_cls: the extension class to look for
    :param match_attrs: attribute values the extension must have, e.g.
        ``method_name='hello'``
    :returns: the extension, or ``None`` if there is none
    """
    for ext in container.extensions:
        if not isinstance(ext, extension_cls):
            continue
        if all(getattr(ext, name) == value
               for name, value in match_attrs.items()):
            return ext
    return None


def get_container(runner, service_cls):
    """Return the container of ``runner`` hosting ``service_cls``, or
    ``None``."""
    for container in runner.containers:
        if container.service_cls == service_cls:
            return container
    return None


@contextmanager
def wait_for_call(timeout, mock_method):
    """Wait up to ``timeout`` seconds for ``mock_method`` to have been
    called, then enter the block with it.

    :param timeout: seconds; ``None`` waits forever
    :param mock_method: a :class:`unittest.mock.Mock` (its ``called`` flag
        is watched)
    :yields: ``mock_method``
    :raises WaitTimeout: it was not called within ``timeout`` seconds
    """
    deadline = Deadline(timeout)
    while not mock_method.called:
        if deadline.passed():
            raise WaitTimeout(
                '{!r} was not called within {} seconds'.format(
                    mock_method, timeout))
        time.sleep(MOCK_POLL_INTERVAL)
    yield mock_method


def assert_stops_raising(fn, exception_type=Exception, timeout=10,
                         interval=0.1):
    """Call ``fn()`` every ``interval`` seconds until it returns without
    raising ``exception_type``.

    An exception of another type propagates at once. A call that is
    running when the time is up is not interrupted: the timeout is checked
    after each attempt.

    :param fn: a callable taking no arguments
    :param exception_type: the exception class (or tuple) to retry on
    :param timeout: seconds to keep trying; ``None`` tries forever
    :param interval: seconds between attempts
    :raises WaitTimeout: ``fn`` still raised after ``timeout`` seconds
        (chained from its last exception)
    """
    deadline = Deadline(timeout)
    while True:
        try:
            fn()
        except exception_type as exc:
            if deadline.passed():
                raise WaitTimeout(
                    '{!r} still raised after {} seconds: {!r}'.format(
                        fn, timeout, exc)) from exc
        else:
            return
        remaining = deadline.remaining()
        time.sleep(interval if remaining is None else min(interval, remaining))


def find_free_port(host='127.0.0.1'):
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class AnyInstanceOf:
    """Compares equal to any instance of ``cls``; for mock call
    assertions::

        mock.assert_called_once_with(AnyInstanceOf(WorkerContext))
    """

    def __init__(self, cls):
        self.cls = cls

    def __eq__(self, other):
        return isinstance(self.cls, type) and isinstance(other, self.cls)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        name = getattr(self.cls, '__name__', self.cls)
        return '<AnyInstanceOf-{}>'.format(name)


ANY_PARTIAL = AnyInstanceOf(partial)
"""Compares equal to any :func:`functools.partial` object."""


class DummyProvider(Entrypoint):
    """A stand-in entrypoint for a method, for building a
    :class:`~threadko.containers.WorkerContext` by hand."""

    def __init__(self, method_name=None):
        super().__init__()
        self.method_name = method_name
