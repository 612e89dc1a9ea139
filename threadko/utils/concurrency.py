"""Run the same call on many objects at once, on short-lived threads.

Nameko runs extension lifecycle hooks (``setup``, ``start``, ``stop``,
``kill``) concurrently; that is required for correctness, not speed: a
shared consumer's ``stop`` waits until *every* entrypoint using it has
stopped, so calling the hooks one after another would deadlock.
"""

import sys
import threading


class _Call(threading.Thread):
    """One thread running ``fn(item)`` and keeping its outcome."""

    def __init__(self, fn, item, name):
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._item = item
        self.exc_info = None
        self.result = None

    def run(self):
        try:
            self.result = self._fn(self._item)
        except BaseException:
            self.exc_info = sys.exc_info()
        finally:
            # don't keep the item (and its container) alive via the thread
            self._fn = self._item = None


def call_all(items, method_name, *args, **kwargs):
    """Call ``item.<method_name>(*args, **kwargs)`` for every item at once.

    Blocks until every call returned. If any raised, the first exception (in
    the order of ``items``) is re-raised after all calls finished; the others
    are not interrupted. Returns the list of results in ``items`` order.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        # no hand-off needed; keeps tracebacks and thread dumps simple
        return [getattr(items[0], method_name)(*args, **kwargs)]

    def fn(item):
        return getattr(item, method_name)(*args, **kwargs)

    calls = [
        _Call(fn, item, name='threadko-{}-{}'.format(method_name, index))
        for index, item in enumerate(items)
    ]
    for call in calls:
        call.start()
    for call in calls:
        call.join()
    for call in calls:
        if call.exc_info is not None:
            raise call.exc_info[1].with_traceback(call.exc_info[2])
    return [call.result for call in calls]


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
