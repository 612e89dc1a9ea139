"""Helpers for testing services: unit tests of a worker instance, and
integration tests against a running container.

Workers finish on the container's pool threads, concurrently with the test
thread. The container-level helpers therefore watch workers through a
thread-safe listener list that they attach to the container instance (they
wrap its ``_worker_result`` and ``_worker_teardown`` steps, as Nameko's
helpers do), and their timeouts are bounded waits in the test thread rather
than interruptions of running code.
"""

import inspect
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from unittest.mock import MagicMock

from threadko.exceptions import ContainerBeingKilled, ExtensionNotFound
from threadko.extensions import DependencyProvider, Entrypoint, is_dependency
from threadko.testing.utils import get_extension
from threadko.testing.waiting import Deadline, WaitResult, WaitTimeout

__all__ = [
    'EntrypointWaiterTimeout', 'MockDependencyProvider', 'Once', 'dummy',
    'entrypoint_hook', 'entrypoint_waiter', 'once', 'replace_dependencies',
    'restrict_entrypoints', 'worker_factory',
]

# how often entrypoint_hook checks whether the container died meanwhile
CONTAINER_POLL_INTERVAL = 0.02


class EntrypointWaiterTimeout(WaitTimeout):
    """:func:`entrypoint_waiter` or :func:`entrypoint_hook` waited longer
    than its ``timeout`` for a worker (also ``entrypoint_waiter.Timeout``)."""


# -- watching a container's workers ----------------------------------------

class _WorkerListeners:
    """Wraps one container's ``_worker_result`` and ``_worker_teardown``
    (on the instance) and forwards each call, after the original ran, to
    the registered listeners.

    The wrappers are installed while at least one listener is registered.
    Unlike nested patches, listeners may come and go in any order, from any
    thread, while workers run.
    """

    ATTR = '_threadko_testing_worker_listeners'
    _install_lock = threading.Lock()

    @classmethod
    @contextmanager
    def listening(cls, container, listener):
        """Register ``listener`` (with ``worker_result(worker_ctx, result,
        exc_info)`` and ``worker_teardown(worker_ctx)`` methods) for the
        duration of the block."""
        with cls._install_lock:
            listeners = container.__dict__.get(cls.ATTR)
            if listeners is None:
                listeners = cls(container)
                setattr(container, cls.ATTR, listeners)
            listeners._add(listener)
        try:
            yield
        finally:
            with cls._install_lock:
                listeners._remove(listener)

    def __init__(self, container):
        self.container = container
        self._listeners = []
        self._lock = threading.Lock()
        self._saved = None  # {attr name: instance attr it replaced or None}

    def _snapshot(self):
        with self._lock:
            return list(self._listeners)

    def _add(self, listener):
        with self._lock:
            self._listeners.append(listener)
        if self._saved is None:
            self._install()

    def _remove(self, listener):
        with self._lock:
            self._listeners.remove(listener)
            if self._listeners:
                return
        self._uninstall()

    def _install(self):
        container = self.container
        original_result = container._worker_result
        original_teardown = container._worker_teardown

        def _worker_result(worker_ctx, result=None, exc_info=None):
            original_result(worker_ctx, result, exc_info)
            for listener in self._snapshot():
                listener.worker_result(worker_ctx, result, exc_info)

        def _worker_teardown(worker_ctx):
            original_teardown(worker_ctx)
            for listener in self._snapshot():
                listener.worker_teardown(worker_ctx)

        self._wrappers = {
            '_worker_result': _worker_result,
            '_worker_teardown': _worker_teardown,
        }
        self._saved = {
            name: container.__dict__.get(name) for name in self._wrappers}
        for name, wrapper in self._wrappers.items():
            setattr(container, name, wrapper)

    def _uninstall(self):
        container = self.container
        if any(container.__dict__.get(name) is not wrapper
               for name, wrapper in self._wrappers.items()):
            # someone patched on top of us: stay installed (with no
            # listeners the wrappers only call the originals)
            return
        for name, saved in self._saved.items():
            if saved is None:
                delattr(container, name)
            else:
                setattr(container, name, saved)
        self._saved = None


def _container_death(container):
    """``(True, exc_info_or_None)`` if ``container`` has died, else
    ``(False, None)``; never blocks."""
    # ServiceContainer.wait() can only block; look at its outcome instead
    died = getattr(container, '_died', None)
    if died is None or not died.ready():
        return False, None
    return True, died.exc_info


def _timeout_error(container, method_name, timeout):
    return EntrypointWaiterTimeout(
        'Timeout on {}.{} after {} seconds'.format(
            container.service_name, method_name, timeout))


# -- entrypoint_hook ----------------------------------------------------------

class _HookedWorker:
    """Result and completion of the one worker an entrypoint hook spawned."""

    def __init__(self):
        self.worker_ctx = None
        self.result = None
        self.exc_info = None
        self.done = threading.Event()

    def handle_result(self, worker_ctx, result, exc_info):
        # runs on the worker thread, before worker_result and teardown
        self.worker_ctx = worker_ctx
        self.result = result
        self.exc_info = exc_info
        return result, exc_info

    def worker_result(self, worker_ctx, result, exc_info):
        pass

    def worker_teardown(self, worker_ctx):
        if worker_ctx is self.worker_ctx:
            self.done.set()

    def outcome(self):
        if self.exc_info is not None:
            exc_info, self.exc_info = self.exc_info, None
            raise exc_info[1].with_traceback(exc_info[2])
        return self.result


@contextmanager
def entrypoint_hook(container, method_name, context_data=None, timeout=30):
    """Yield a function that calls a service method through its container,
    as if ``method_name``'s entrypoint had fired.

    Calling ``hook(*args, **kwargs)`` spawns a worker on the entrypoint
    (dependencies are injected and their worker hooks run, but nothing goes
    through a transport: no RPC reply, no ack), waits until that worker has
    finished, teardown included, and returns its result or raises its
    exception. The hook tracks its own worker, so it is safe to call from
    several threads at once, and other workers of the same method do not
    confuse it.

    :param container: the :class:`~threadko.containers.ServiceContainer`
        hosting the service (usually started)
    :param method_name: the name of an entrypoint-decorated method
    :param context_data: context data for the call (e.g. ``{'language':
        'en'}``); a copy is passed each time
    :param timeout: seconds to wait for the worker; ``None`` waits forever.
        The worker itself is not interrupted when the time is up. Spawning
        the worker may block first while ``max_workers`` workers are busy,
        as for any entrypoint.
    :yields: ``hook(*args, **kwargs)``
    :raises ExtensionNotFound: the service has no entrypoint on
        ``method_name``

    ``hook()`` raises the worker's exception; the container's exception if
    the container dies before the worker finished (e.g. a dependency
    provider failed in ``worker_setup``);
    :class:`~threadko.exceptions.ContainerBeingKilled` if it was killed
    without one (its result is then discarded); or
    :class:`EntrypointWaiterTimeout` when ``timeout`` runs out.

    Example::

        with entrypoint_hook(container, 'hello') as hello:
            assert hello('Matt') == 'Hello, Matt!'
    """
    entrypoint = get_extension(container, Entrypoint, method_name=method_name)
    if entrypoint is None:
        raise ExtensionNotFound(
            "No entrypoint for '{}' found on container {}.".format(
                method_name, container))

    def hook(*args, **kwargs):
        deadline = Deadline(timeout)
        worker = _HookedWorker()
        data = None if context_data is None else dict(context_data)
        with _WorkerListeners.listening(container, worker):
            container.spawn_worker(
                entrypoint, args, kwargs, context_data=data,
                handle_result=worker.handle_result)
            _wait_for_hooked_worker(
                container, method_name, worker, deadline)
        return worker.outcome()

    yield hook


def _wait_for_hooked_worker(container, method_name, worker, deadline):
    # the worker never finishes if the container dies first, so keep an
    # eye on the container while waiting
    while True:
        remaining = deadline.remaining()
        poll = CONTAINER_POLL_INTERVAL
        if remaining is not None:
            poll = min(poll, remaining)
        if worker.done.wait(poll):
            return
        dead, exc_info = _container_death(container)
        if dead:
            if worker.done.is_set():
                return
            if exc_info is not None:
                raise exc_info[1].with_traceback(exc_info[2])
            raise ContainerBeingKilled(
                '{} was killed before its worker for {!r} finished; the '
                'result was discarded'.format(container, method_name))
        if deadline.passed():
            raise _timeout_error(container, method_name, deadline.timeout)


# -- entrypoint_waiter --------------------------------------------------------

class _WaiterResult(WaitResult):
    """What :func:`entrypoint_waiter` yields: ``get()`` returns the awaited
    worker's result or re-raises its exception; ``worker_ctx`` is its
    :class:`~threadko.containers.WorkerContext`."""

    worker_ctx = None

    def send(self, worker_ctx, result, exc_info):
        with self._lock:
            if self.has_result:
                return False
            self.worker_ctx = worker_ctx
            self.res = result
            self.exc_info = exc_info
            return True


class _EntrypointListener:
    def __init__(self, method_name, callback):
        self.method_name = method_name
        self.callback = callback
        self.result = _WaiterResult()
        self.done = threading.Event()
        self.callback_error = None

    def worker_result(self, worker_ctx, result, exc_info):
        if self.result.has_result or self.done.is_set():
            return
        if worker_ctx.entrypoint.method_name != self.method_name:
            return
        if callable(self.callback):
            try:
                complete = self.callback(worker_ctx, result, exc_info)
            except Exception:
                # report it in the test thread rather than kill the
                # container from the worker thread
                self.callback_error = sys.exc_info()
                self.done.set()
                return
        else:
            complete = True
        if complete:
            self.result.send(worker_ctx, result, exc_info)

    def worker_teardown(self, worker_ctx):
        if self.result.worker_ctx is worker_ctx:
            self.done.set()


@contextmanager
def entrypoint_waiter(container, method_name, timeout=30, callback=None):
    """Wait, when the block exits, until a worker of ``method_name`` has
    produced its result and has been torn down.

    Workers that are already running when the block is entered count too,
    provided their result comes after that. With a ``callback``, only a
    worker for which ``callback(worker_ctx, result, exc_info)`` returns
    truthy ends the wait (``exc_info`` is a ``sys.exc_info()`` triple or
    ``None``). The callback runs on worker threads, possibly on several at
    once; if it raises, the wait ends and its exception is raised when the
    block exits.

    If the block itself raises, nothing is awaited and its exception
    propagates.

    :param container: the :class:`~threadko.containers.ServiceContainer`
        hosting the service
    :param method_name: the name of an entrypoint-decorated method
    :param timeout: seconds, counted from entering the block, to wait at
        most; ``None`` waits forever. Nothing is interrupted when it runs
        out: the exit stops waiting and raises.
    :param callback: optional filter, see above
    :yields: a result object whose ``get()`` returns the worker's result
        or re-raises its exception (the waiter does not raise it), and
        whose ``worker_ctx`` is the worker's context
    :raises RuntimeError: the service has no entrypoint on ``method_name``
    :raises EntrypointWaiterTimeout: (also ``entrypoint_waiter.Timeout``)
        no matching worker finished within ``timeout``

    Example::

        with entrypoint_waiter(container, 'handle_event') as result:
            dispatch('srcservice', 'eventtype', 'payload')
        assert result.get() == 'payload'
    """
    if get_extension(container, Entrypoint, method_name=method_name) is None:
        raise RuntimeError('{} has no entrypoint `{}`'.format(
            container.service_name, method_name))

    deadline = Deadline(timeout)
    listener = _EntrypointListener(method_name, callback)
    with _WorkerListeners.listening(container, listener):
        yield listener.result
        finished = listener.done.wait(deadline.remaining())
    if listener.callback_error is not None:
        exc_info, listener.callback_error = listener.callback_error, None
        raise exc_info[1].with_traceback(exc_info[2])
    if not finished:
        raise _timeout_error(container, method_name, timeout)


entrypoint_waiter.Timeout = EntrypointWaiterTimeout


# -- unit level ---------------------------------------------------------------

def worker_factory(service_cls, **dependencies):
    """Return an instance of ``service_cls`` with each dependency provider
    attribute replaced by a :class:`~unittest.mock.MagicMock`, or by the
    object given for it in ``dependencies``.

    Entrypoint decorators leave methods unchanged, so the instance's
    methods can be called directly, with the arguments the service expects.

    :param service_cls: the service class
    :param dependencies: replacement objects, by attribute name
    :returns: the service instance
    :raises ExtensionNotFound: a name in ``dependencies`` is not a
        dependency provider of ``service_cls``

    Example::

        service = worker_factory(ConversionService)
        service.maths_rpc.multiply.side_effect = lambda x, y: x * y
        assert service.inches_to_cm(300) == 762
    """
    service = service_cls()
    for name, _ in inspect.getmembers(service_cls, is_dependency):
        if name in dependencies:
            dependency = dependencies.pop(name)
        else:
            dependency = MagicMock()
        setattr(service, name, dependency)

    if dependencies:
        raise ExtensionNotFound(
            "DependencyProvider(s) {} not found on {}.".format(
                _names(dependencies), service_cls))
    return service


# -- container level ----------------------------------------------------------

class MockDependencyProvider(DependencyProvider):
    """Injects ``dependency`` (a new :class:`~unittest.mock.MagicMock` if
    none is given) into every worker as ``attr_name``."""

    def __init__(self, attr_name, dependency=None):
        self.attr_name = attr_name
        self.dependency = MagicMock() if dependency is None else dependency

    def get_dependency(self, worker_ctx):
        return self.dependency


def replace_dependencies(container, *dependencies, **dependency_map):
    """Replace dependency providers of ``container`` with
    :class:`MockDependencyProvider` instances.

    Each name in ``dependencies`` gets a new
    :class:`~unittest.mock.MagicMock`; each keyword in ``dependency_map``
    gets the given object. Only this container changes; the service class
    and other containers are untouched.

    :param container: an unstarted
        :class:`~threadko.containers.ServiceContainer`
    :param dependencies: attribute names to replace with mocks
    :param dependency_map: attribute names to replace with given objects
    :returns: the mock if exactly one name was given positionally,
        otherwise a generator of the positional mocks in order (keyword
        replacements are not returned)
    :raises RuntimeError: the container has started, or a name was given
        both positionally and by keyword
    :raises ExtensionNotFound: a name is not a dependency of the container

    Example::

        container = ServiceContainer(ConversionService)
        maths_rpc = replace_dependencies(container, 'maths_rpc')
        maths_rpc.divide.return_value = 39.37
        container.start()
    """
    if set(dependencies).intersection(dependency_map):
        raise RuntimeError(
            'Cannot replace the same dependency via both args and kwargs.')

    arg_replacements = OrderedDict(
        (name, MagicMock()) for name in dependencies)
    replacements = dict(dependency_map)
    replacements.update(arg_replacements)
    _replace_dependencies(container, replacements)

    mocks = (mock for mock in arg_replacements.values())
    if len(arg_replacements) == 1:
        return next(mocks)
    return mocks


def _replace_dependencies(container, replacements):
    if container.started:
        raise RuntimeError(
            'You must replace dependencies before the container is '
            'started.')

    providers = {dep.attr_name: dep for dep in container.dependencies}
    missing = set(replacements) - set(providers)
    if missing:
        raise ExtensionNotFound('Dependency(s) {} not found on {}.'.format(
            _names(missing), container))

    for name, replacement in replacements.items():
        replacement_provider = MockDependencyProvider(
            name, dependency=replacement).bind(container, name)
        container.dependencies.remove(providers[name])
        container.dependencies.add(replacement_provider)


def restrict_entrypoints(container, *entrypoints):
    """Remove every entrypoint of ``container`` except those on the
    methods named in ``entrypoints`` (all entrypoints of a named method
    stay).

    :param container: an unstarted
        :class:`~threadko.containers.ServiceContainer`
    :param entrypoints: method names to keep
    :raises RuntimeError: the container has started
    :raises ExtensionNotFound: a name has no entrypoint on the container
    """
    if container.started:
        raise RuntimeError(
            'You must restrict entrypoints before the container is '
            'started.')

    current = list(container.entrypoints)
    missing = set(entrypoints) - {ep.method_name for ep in current}
    if missing:
        raise ExtensionNotFound('Entrypoint(s) {} not found on {}.'.format(
            _names(missing), container))

    for entrypoint in current:
        if entrypoint.method_name not in entrypoints:
            container.entrypoints.remove(entrypoint)


def _names(names):
    return ', '.join(repr(name) for name in sorted(names))


class Once(Entrypoint):
    """Entrypoint that spawns one worker, with the declared arguments, when
    the container starts.

    ``@once`` or ``@once(*args, **kwargs)``; ``expected_exceptions`` and
    ``sensitive_arguments`` are the entrypoint options, every other keyword
    goes to the method.
    """

    def __init__(self, *args, **kwargs):
        options = {
            key: kwargs.pop(key)
            for key in ('expected_exceptions', 'sensitive_arguments',
                        'sensitive_variables')
            if key in kwargs
        }
        self.args = args
        self.kwargs = kwargs
        super().__init__(**options)

    def start(self):
        self.container.spawn_worker(self, self.args, self.kwargs)


once = Once.decorator

dummy = Entrypoint.decorator
"""An entrypoint that never fires; use it to reach a method with
:func:`entrypoint_hook`."""
