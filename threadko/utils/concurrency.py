"""Run the same call on many objects at once, on short-lived threads.

Nameko runs extension lifecycle hooks (``setup``, ``start``, ``stop``,
``kill``) concurrently; that is required for correctness, not speed: a
shared consumer's ``stop`` waits until *every* entrypoint using it has
stopped, so calling the hooks one after another would deadlock.
"""

import sys
import threading


def call_each(items, fn, name, on_first_error=None):
    """Call ``fn(item)`` for every item at once, one thread each (named
    ``threadko-<name>-<n>``; a single item runs on the calling thread).

    Blocks until every call returned. If any raised, the first exception
    (in time) is re-raised then. ``on_first_error()``, if given, is called
    as soon as the first call raises, while the others may still be
    running: it should make them return (they are not interrupted
    otherwise). Returns the list of results in ``items`` order.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        # no hand-off needed; keeps tracebacks and thread dumps simple
        return [fn(items[0])]

    done = threading.Condition()
    results = [None] * len(items)
    errors = []  # exc_info triples, in the order they happened
    pending = [len(items)]

    def run(index, item):
        try:
            result, exc_info = fn(item), None
        except BaseException:
            result, exc_info = None, sys.exc_info()
        with done:
            results[index] = result
            if exc_info is not None:
                errors.append(exc_info)
            pending[0] -= 1
            done.notify_all()

    threads = [
        threading.Thread(
            target=run, args=(index, item), daemon=True,
            name='threadko-{}-{}'.format(name, index))
        for index, item in enumerate(items)
    ]
    for thread in threads:
        thread.start()
    with done:
        done.wait_for(lambda: not pending[0] or (
            on_first_error is not None and errors))
        interrupt = on_first_error is not None and errors and pending[0]
    if interrupt:
        on_first_error()
    for thread in threads:
        thread.join()
    if errors:
        exc_info = errors[0]
        raise exc_info[1].with_traceback(exc_info[2])
    return results


def call_all(items, method_name, *args, **kwargs):
    """Call ``item.<method_name>(*args, **kwargs)`` for every item at once
    (see :func:`call_each`); returns the results in ``items`` order."""
    return call_each(
        items, lambda item: getattr(item, method_name)(*args, **kwargs),
        method_name)


def wait_first_error(items, method_name):
    """Call ``item.<method_name>()`` on every item concurrently and wait.

    Returns when all calls returned, or raises as soon as one of them raises
    (the other calls keep running in their daemon threads: they are expected
    to be blocking waits such as ``container.wait()`` that the caller ends
    next, e.g. by stopping the containers).
    """
    items = list(items)
    if not items:
        return
    done = threading.Condition()
    outcomes = []

    def fn(item):
        try:
            getattr(item, method_name)()
        except BaseException:
            outcome = sys.exc_info()
        else:
            outcome = None
        with done:
            outcomes.append(outcome)
            done.notify_all()

    threads = [
        threading.Thread(
            target=fn, args=(item,), daemon=True,
            name='threadko-{}-{}'.format(method_name, index))
        for index, item in enumerate(items)
    ]
    for thread in threads:
        thread.start()
    with done:
        while True:
            errors = [o for o in outcomes if o is not None]
            if errors:
                exc_info = errors[0]
                raise exc_info[1].with_traceback(exc_info[2])
            if len(outcomes) == len(items):
                break
            done.wait()
    for thread in threads:
        thread.join()


class SpawningProxy:
    """``SpawningProxy(items).method(...)`` calls ``method`` on every item
    concurrently and waits for all (see :func:`call_all`)."""

    def __init__(self, items, abort_on_error=False):
        self._items = items
        self.abort_on_error = abort_on_error

    def __getattr__(self, name):
        def spawning_method(*args, **kwargs):
            if self.abort_on_error and not args and not kwargs:
                return wait_first_error(self._items, name)
            return call_all(self._items, name, *args, **kwargs)
        return spawning_method


class SpawningSet(set):
    """A set whose ``.all.<method>(...)`` calls the method on every member
    concurrently and waits for all of them."""

    @property
    def all(self):
        return SpawningProxy(self)
