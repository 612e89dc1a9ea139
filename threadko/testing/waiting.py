"""Wait, from a test, for something to be called on another thread.

Nameko bounds these waits with ``eventlet.Timeout``, which interrupts
whatever the waiting greenthread is doing. OS threads cannot be interrupted,
so threadko's timeouts are bounded waits at the waiting point: the ``with``
block runs to its end, then the exit waits for whatever time is left of the
timeout (counted from entering the block) and raises :class:`WaitTimeout`
if the call has not happened by then.
"""

import sys
import threading
import time
from contextlib import contextmanager
from unittest.mock import patch


class WaitTimeout(Exception):
    """A testing helper waited longer than its ``timeout`` for something
    that did not happen."""


class WaitResult:
    """The outcome of the first awaited call: a return value or an
    exception.

    Thread-safe: the call may happen on any thread; the first
    :meth:`send` wins and later ones are ignored.
    """

    sentinel = object()

    res = sentinel
    exc_info = None

    class NotReady(Exception):
        """:meth:`WaitResult.get` was called before a result arrived."""

    def __init__(self):
        self._lock = threading.Lock()

    @property
    def has_result(self):
        """True once a value or an exception was sent."""
        return self.res is not self.sentinel or self.exc_info is not None

    def send(self, res, exc_info):
        """Record ``res``, or ``exc_info`` (a ``sys.exc_info()`` triple),
        unless a result was recorded already.

        :returns: True if this call recorded the result
        """
        with self._lock:
            if self.has_result:
                return False
            self.res = res
            self.exc_info = exc_info
            return True

    def get(self):
        """Return the recorded value, or re-raise the recorded exception.

        :raises WaitResult.NotReady: nothing was recorded yet
        """
        if not self.has_result:
            raise WaitResult.NotReady()
        if self.exc_info is not None:
            exc = self.exc_info[1]
            raise exc.with_traceback(self.exc_info[2])
        return self.res


class Deadline:
    """``timeout`` seconds from now; ``None`` means never."""

    def __init__(self, timeout):
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self):
        """Seconds left (never negative), or ``None`` for no deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def passed(self):
        return self._end is not None and time.monotonic() >= self._end


@contextmanager
def wait_for_call(obj, target, callback=None, timeout=30):
    """Patch ``obj.<target>`` for the duration of the block, then wait, on
    exit, for it to be called.

    The patched attribute calls the original and returns its value (or
    raises its exception) unchanged, from whichever thread calls it. The
    wait ends at the first completed call for which ``callback(args,
    kwargs, result, exc_info)`` returns truthy (any call, when no callback
    is given); calls made before the block are not counted.

    If ``callback`` raises, the caller of the patched attribute is not
    affected: the wait ends and the callback's exception is raised when the
    block exits. ``callback`` may run on several threads at once.

    :param obj: the object (instance, class or module) to patch
    :param target: the attribute name
    :param callback: optional filter, see above
    :param timeout: seconds, counted from entering the block, that the exit
        waits at most; ``None`` waits forever
    :yields: a :class:`WaitResult` holding the awaited call's return value
        or exception (``get()`` returns or re-raises it)
    :raises WaitTimeout: no matching call within ``timeout``

    Example::

        with wait_for_call(container, 'spawn_worker') as result:
            trigger_something()
        worker_ctx = result.get()
    """
    deadline = Deadline(timeout)
    result = WaitResult()
    matched = threading.Event()
    callback_errors = []
    unpatched = getattr(obj, target)

    def note_call(args, kwargs, res, exc_info):
        if matched.is_set():
            return
        try:
            is_match = True
            if callable(callback):
                is_match = callback(args, kwargs, res, exc_info)
        except Exception:
            callback_errors.append(sys.exc_info())
            matched.set()
            return
        if is_match:
            result.send(res, exc_info)
            matched.set()

    def wrapper(*args, **kwargs):
        res = None
        exc_info = None
        try:
            res = unpatched(*args, **kwargs)
        except Exception:
            exc_info = sys.exc_info()

        note_call(args, kwargs, res, exc_info)

        if exc_info is not None:
            exc = exc_info[1]
            del exc_info  # no frame -> traceback -> frame cycle
            raise exc
        return res

    with patch.object(obj, target, new=wrapper):
        yield result
        if not matched.wait(deadline.remaining()):
            raise WaitTimeout(
                'No call of {!r}.{} within {} seconds'.format(
                    obj, target, timeout))
    if callback_errors:
        exc_info = callback_errors[0]
        raise exc_info[1].with_traceback(exc_info[2])
