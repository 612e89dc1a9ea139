"""Fork awareness: what a child process must not inherit from its parent.

A process that forks (gunicorn ``--preload``, uWSGI without lazy apps,
:mod:`multiprocessing`) gives its child copies of the parent's objects, but
not its threads: a client's consumer thread, and the broker connection it
owns, stay with the parent. Objects that hold such state :func:`register`
and get ``_after_fork_in_child()`` called in the child, right after the
fork, to forget it (new locks, no connection); they reconnect or fail on
their next use.

The child must never speak on a connection it inherited: its socket is the
parent's, and a ``Connection.Close`` (or any frame) sent from the child
would break the parent's connection. :func:`close_in_child` closes the
child's copy of a socket instead.
"""

import logging
import os
import threading
import weakref

_log = logging.getLogger(__name__)

_lock = threading.Lock()
# keyed by id(): registered objects need not be hashable
_objects = weakref.WeakValueDictionary()
_sockets = weakref.WeakValueDictionary()


def register(obj):
    """Call ``obj._after_fork_in_child()`` in every child process forked
    from now on, for as long as ``obj`` lives (it is held weakly).

    The method runs in the child right after the fork, while the child has
    one thread; it must not block, and must not touch connections or file
    descriptors it shares with the parent (closing its own copy of a
    descriptor is fine). Exceptions it raises are logged and ignored.
    """
    with _lock:
        _objects[id(obj)] = obj


def close_in_child(sock):
    """Close ``sock`` in every child process forked from now on, for as long
    as it lives (it is held weakly).

    This only drops the child's file descriptor: nothing is sent, the
    parent's connection is unaffected (for TLS sockets too), and any later
    use of the socket in the child fails with ``EBADF``. Without it the
    child would keep the parent's connections open: when the parent closed
    one, the TCP connection would linger until every child had exited.
    """
    with _lock:
        _sockets[id(sock)] = sock


def _before():
    # no thread may be changing the registries while the process forks
    _lock.acquire()


def _after_in_parent():
    _lock.release()


def _after_in_child():
    global _lock
    _lock = threading.Lock()  # the old one is held, by a thread now gone
    sockets = list(_sockets.values())
    objects = list(_objects.values())
    for sock in sockets:
        try:
            sock.close()
        except Exception:
            pass
    for obj in objects:
        try:
            obj._after_fork_in_child()
        except Exception:
            # the child must come up: it fails later, on first use
            _log.warning('Could not reset %r after fork', obj, exc_info=True)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                    after_in_child=_after_in_child)
