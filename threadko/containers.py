"""Service containers: host one service class, its extensions and workers.

Thread model (see ``docs/concepts.rst``):

- every call of a service method runs on a thread of the container's
  bounded :class:`~concurrent.futures.ThreadPoolExecutor`; the whole worker
  lifecycle (inject, ``worker_setup``, method, ``handle_result``,
  ``worker_result``, ``worker_teardown``) happens on that one thread;
- :meth:`ServiceContainer.spawn_worker` blocks while ``max_workers``
  workers are busy, so no unbounded backlog builds up in the process;
- extensions run their background loops in *managed threads*
  (:meth:`ServiceContainer.spawn_managed_thread`) which the container
  names, watches and joins.
"""

import contextvars
import inspect
import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from operator import methodcaller

from threadko import serialization
from threadko.config_validation import validate_config
from threadko.configuration import config as global_config
from threadko.constants import (
    CALL_ID_STACK_CONTEXT_KEY, DEFAULT_MAX_WORKERS,
    DEFAULT_PARENT_CALLS_TRACKED, DEFAULT_THREAD_JOIN_TIMEOUT,
    MAX_WORKERS_CONFIG_KEY, PARENT_CALLS_CONFIG_KEY,
    SERVICE_CONTAINER_CLS_CONFIG_KEY, THREAD_JOIN_TIMEOUT_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError, ContainerBeingKilled
from threadko.extensions import (
    ENTRYPOINT_EXTENSIONS_ATTR, is_dependency, iter_extensions,
)
from threadko.log_helpers import make_timing_logger
from threadko.observability import instrument_container
from threadko.utils import import_from_path
from threadko.utils.concurrency import SpawningSet, call_each
from threadko.utils.ids import random_uuid

_log = logging.getLogger(__name__)
_log_time = make_timing_logger(_log)


def _untimed(message, *args):
    """``_log_time``'s stand-in when debug logging is off."""
    return _NOT_TIMED


_NOT_TIMED = nullcontext()

# after kill(), managed threads get this long to notice before we give up
KILL_JOIN_TIMEOUT = 1.0


def get_service_name(service_cls):
    """Return the ``name`` attribute of a service class, or raise
    :class:`~threadko.exceptions.ConfigurationError`."""
    service_name = getattr(service_cls, 'name', None)
    if service_name is None:
        raise ConfigurationError(
            'Service class must define a `name` attribute ({}.{})'.format(
                service_cls.__module__, service_cls.__name__))
    if not isinstance(service_name, str):
        raise ConfigurationError(
            'Service name attribute must be a string ({}.{}.name)'.format(
                service_cls.__module__, service_cls.__name__))
    return service_name


def get_container_cls(config=None):
    """The container class named by ``SERVICE_CONTAINER_CLS``, or
    :class:`ServiceContainer`."""
    if config is None:
        config = global_config
    class_path = config.get(SERVICE_CONTAINER_CLS_CONFIG_KEY)
    return import_from_path(class_path) or ServiceContainer


#: the WorkerContext of the worker running in this context (each worker runs
#: in a contextvars context of its own)
_current_worker = contextvars.ContextVar('threadko_worker', default=None)


def get_worker_context():
    """The :class:`WorkerContext` of the worker this code runs in, or
    ``None`` outside a worker (on an extension's thread, say). Code the
    worker runs on other threads it starts sees it only if they run in a
    copy of its context (``contextvars.copy_context().run``)."""
    return _current_worker.get()


def new_call_id():
    """A new unique id for a call (patch this for predictable ids)."""
    return random_uuid()


class WorkerContext:
    """Everything about one call of a service method.

    :param container: the :class:`ServiceContainer` running the worker
    :param service: the fresh service instance for this call
    :param entrypoint: the bound entrypoint that fired
    :param args: positional call arguments
    :param kwargs: keyword call arguments
    :param data: context data that arrived with the call; a
        ``call_id_stack`` key in it is popped out (the dict is changed) and
        becomes the parent call stack
    """

    _call_id = None
    _call_id_stack = None
    _parent_call_id_stack = None
    #: which attempt at the work this is (entrypoints that retry set it)
    attempt = 1
    #: what fired the entrypoint, as the entrypoint passed it to
    #: ``spawn_worker``: the AMQP message, the HTTP request, or None.
    #: Tracing reads the incoming trace context from it
    origin = None

    def __init__(self, container, service, entrypoint, args=None,
                 kwargs=None, data=None):
        self.container = container
        self.config = container.config
        self.service = service
        self.entrypoint = entrypoint
        self.service_name = container.service_name

        self.args = args if args is not None else ()
        self.kwargs = kwargs if kwargs is not None else {}
        self.data = data if data is not None else {}

        self._parent_call_id_stack = self.data.pop(
            CALL_ID_STACK_CONTEXT_KEY, [])

    @property
    def call_id_stack(self):
        """Parent call ids plus this call's id, keeping the last
        ``parent_calls_tracked + 1`` entries. A new list each time."""
        if self._call_id_stack is None:
            parent_calls_tracked = self.config.get(
                PARENT_CALLS_CONFIG_KEY, DEFAULT_PARENT_CALLS_TRACKED)
            stack = deque(maxlen=parent_calls_tracked + 1)
            stack.extend(self._parent_call_id_stack)
            stack.append(self.call_id)
            self._call_id_stack = stack
        return list(self._call_id_stack)

    @property
    def call_id(self):
        """``"<service>.<method>.<uuid>"``, made once and then stable."""
        if self._call_id is None:
            self._call_id = '{}.{}.{}'.format(
                self.service_name, self.entrypoint.method_name,
                new_call_id())
        return self._call_id

    @property
    def context_data(self):
        """The context data to send onward: :attr:`data` plus the call
        stack."""
        data = self.data.copy()
        data[CALL_ID_STACK_CONTEXT_KEY] = self.call_id_stack
        return data

    @property
    def origin_call_id(self):
        """The first call of the chain this call belongs to, or ``None``."""
        if self._parent_call_id_stack:
            return self._parent_call_id_stack[0]
        return None

    @property
    def immediate_parent_call_id(self):
        """The call that made this one, or ``None``."""
        if self._parent_call_id_stack:
            return self._parent_call_id_stack[-1]
        return None

    def __repr__(self):
        return '<{} [{}.{}] at 0x{:x}>'.format(
            type(self).__name__, self.service_name,
            self.entrypoint.method_name, id(self))


class _Reservation:
    """:meth:`ServiceContainer.reserved_worker_slot` (a class: it is on
    the hot path of every consumer)."""

    __slots__ = ('_slots', '_reserved')

    def __init__(self, slots):
        self._slots = slots
        self._reserved = False

    def __enter__(self):
        self._reserved = self._slots.try_reserve()
        return self._reserved

    def __exit__(self, *exc_info):
        if self._reserved:
            self._slots.cancel_reservation()


class _WorkerSlots:
    """Counts busy workers; ``acquire`` blocks while all slots are taken.

    Unlike a semaphore it can be closed, which wakes every blocked
    ``acquire`` with :class:`ContainerBeingKilled`, and it can be waited on
    until idle.
    """

    def __init__(self, size):
        self.size = size
        self.busy = 0
        self.closed_reason = None
        # the hot path takes the bare lock; a condition is only notified
        # when a thread waits on it. A freed slot wakes one waiting
        # acquire (waking them all would make the others go back to sleep)
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._acquiring = 0
        self._idle_waiting = 0
        self._reserved = threading.local()

    def acquire(self):
        if getattr(self._reserved, 'held', False):
            self._reserved.held = False  # taken by try_reserve, on this thread
            return
        with self._lock:
            while self.busy >= self.size and self.closed_reason is None:
                self._acquiring += 1
                try:
                    self._slot_freed.wait()
                finally:
                    self._acquiring -= 1
            if self.closed_reason is not None:
                raise ContainerBeingKilled(self.closed_reason)
            self.busy += 1

    def try_reserve(self):
        """Take a slot now if one is free, for the next :meth:`acquire` on
        this thread; returns whether it did."""
        with self._lock:
            if self.busy >= self.size or self.closed_reason is not None:
                return False
            self.busy += 1
        self._reserved.held = True
        return True

    def cancel_reservation(self):
        """Give back a slot :meth:`try_reserve` took and no :meth:`acquire`
        used."""
        if getattr(self._reserved, 'held', False):
            self._reserved.held = False
            self.release()

    def release(self):
        with self._lock:
            self.busy -= 1
            if self._acquiring:
                self._slot_freed.notify()
            if self._idle_waiting and not self.busy:
                self._idle.notify_all()

    def wait_idle(self):
        """Block until no worker is busy, or the slots were closed."""
        with self._lock:
            while self.busy and self.closed_reason is None:
                self._idle_waiting += 1
                try:
                    self._idle.wait()
                finally:
                    self._idle_waiting -= 1

    def close(self, reason):
        with self._lock:
            if self.closed_reason is None:
                self.closed_reason = reason
            self._slot_freed.notify_all()
            self._idle.notify_all()


class _Outcome:
    """A one-shot outcome: set once, with or without an exception; every
    waiter sees the same outcome."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.exc_info = None

    def ready(self):
        return self._event.is_set()

    def send(self, exc_info=None):
        """Set the outcome; returns False if it was already set."""
        with self._lock:
            if self._event.is_set():
                return False
            self.exc_info = exc_info
            self._event.set()
            return True

    def wait(self, timeout=None):
        """Wait for the outcome; re-raise its exception if it has one.
        Returns False on timeout."""
        if not self._event.wait(timeout):
            return False
        if self.exc_info is not None:
            exc = self.exc_info[1]
            raise exc.with_traceback(self.exc_info[2])
        return True


class ServiceContainer:
    """Hosts one service class: binds its extensions, runs its workers on a
    bounded thread pool and manages the background threads of its
    extensions.

    :param service_cls: the service class (it must have a ``name``)
    :param config: a config dict (Nameko 2 style); when omitted the global
        :data:`threadko.config` is used (Nameko 3 style)
    :raises ConfigurationError: for a class without a ``name`` or an
        invalid serializer configuration
    """

    def __init__(self, service_cls, config=None):
        self.service_cls = service_cls
        self.config = global_config if config is None else config
        validate_config(self.config)

        self.service_name = get_service_name(service_cls)
        self.shared_extensions = {}

        self.max_workers = (
            self.config.get(MAX_WORKERS_CONFIG_KEY) or DEFAULT_MAX_WORKERS)
        self.thread_join_timeout = self.config.get(
            THREAD_JOIN_TIMEOUT_CONFIG_KEY, DEFAULT_THREAD_JOIN_TIMEOUT)

        self.serializer, self.accept = serialization.setup(self.config)

        self.entrypoints = SpawningSet()
        self.dependencies = SpawningSet()
        self.subextensions = SpawningSet()

        for attr_name, dependency in inspect.getmembers(
                service_cls, is_dependency):
            bound = dependency.bind(self.interface, attr_name)
            self.dependencies.add(bound)
            self.subextensions.update(iter_extensions(bound))

        for method_name, method in inspect.getmembers(
                service_cls, inspect.isfunction):
            entrypoints = getattr(method, ENTRYPOINT_EXTENSIONS_ATTR, [])
            for entrypoint in entrypoints:
                bound = entrypoint.bind(self.interface, method_name)
                self.entrypoints.add(bound)
                self.subextensions.update(iter_extensions(bound))

        self.started = False
        self._being_killed = False
        self._stopping = False  # stop() began: no new workers
        self._lifecycle_lock = threading.Lock()
        self._died = _Outcome()
        # while start() runs: an event set when it returns
        self._starting = None
        self._start_interrupted = False
        self._ever_started = False
        # stopped or killed before its first start: it never starts
        self._cancelled = False

        self._worker_count = 0  # only used to name worker threads
        # the running workers: worker_ctx -> its thread, as Nameko's
        # ``_worker_threads`` (worker_ctx -> greenthread), which extensions
        # read (nameko-prometheus counts the running workers with it)
        self._worker_threads = {}
        self._make_worker_pool()
        # start() returned without error, and no stop() or kill() began
        self._running = False

        #: the observers of every worker (metrics, tracing), when switched
        #: on by the config (see threadko.observability)
        self.instruments = instrument_container(self)

        self._managed_threads = {}  # thread -> identifier
        self._managed_threads_lock = threading.Lock()

    def _make_worker_pool(self):
        self._worker_slots = _WorkerSlots(self.max_workers)
        self._worker_pool = ThreadPoolExecutor(
            max_workers=self.max_workers,
            thread_name_prefix='threadko-worker-{}'.format(
                self.service_name))

    @property
    def extensions(self):
        """Every bound extension: entrypoints, dependencies and their
        sub-extensions."""
        return SpawningSet(
            self.entrypoints | self.dependencies | self.subextensions)

    @property
    def running(self):
        """True from the moment :meth:`start` returned successfully until
        :meth:`stop` or :meth:`kill` begins (what a readiness probe
        reports)."""
        return self._running

    @property
    def stopping(self):
        """True from the moment :meth:`stop` or :meth:`kill` began (until
        a later :meth:`start`)."""
        return self._stopping or self._being_killed

    @property
    def busy_workers(self):
        """How many worker slots are taken now."""
        return self._worker_slots.busy

    @property
    def workers_waiting(self):
        """How many threads wait for a free worker slot now (HTTP
        requests, timers, the AMQP dispatcher)."""
        return self._worker_slots._acquiring

    def running_workers(self):
        """A list of the :class:`WorkerContext` of every worker running
        now."""
        for _ in range(3):
            try:
                # copied in C, without other threads running in between
                return list(self._worker_threads)
            except RuntimeError:  # changed size meanwhile (not on CPython)
                continue
        return []

    @property
    def interface(self):
        """The object extensions bind to (the container itself)."""
        return self

    # -- lifecycle -------------------------------------------------------

    def start(self):
        """Start the container: ``setup()`` every extension (concurrently),
        then ``start()`` every extension (concurrently).

        Blocks until all returned. If a hook raises, the hooks still
        running are interrupted (see
        :meth:`~threadko.extensions.Extension.interrupt_start`) and, once
        they returned, the exception is re-raised; the container is then
        neither started nor killed automatically (kill it).

        :meth:`stop` or :meth:`kill`, called from another thread while
        this runs, interrupts it the same way; ``start()`` then returns
        without an error. A container stopped or killed before it was ever
        started does not start: ``start()`` returns at once.
        """
        with self._lifecycle_lock:
            if self._cancelled:
                _log.debug('not starting %s: it was stopped before it '
                           'started', self)
                return
            if self._worker_slots.closed_reason is not None:
                # restarted after a stop: the old pool is shut down
                self._make_worker_pool()
                self._died = _Outcome()
                self._being_killed = False
                self._stopping = False
            self.started = True
            self._ever_started = True
            self._start_interrupted = False
            starting = self._starting = threading.Event()

        _log.debug('starting %s', self)
        began = time.monotonic()
        started = False
        try:
            self._run_start_phase('setup')
            if not self._start_interrupted:
                self._run_start_phase('start')
            started = True
        finally:
            with self._lifecycle_lock:
                self._starting = None
                if started:
                    self._running = not (
                        self._start_interrupted or self._stopping
                        or self._being_killed)
            starting.set()
        if not self._start_interrupted:
            _log.debug('started %s in %.3fs', self, time.monotonic() - began)

    def _run_start_phase(self, hook):
        """Call ``hook`` (``'setup'`` or ``'start'``) on every extension
        concurrently; the first failure interrupts the others."""
        try:
            call_each(self.extensions, methodcaller(hook), hook,
                      on_first_error=self._interrupt_start)
        except Exception:
            if not (self._stopping or self._being_killed):
                raise
            # interrupted by stop() or kill(), which own what happens next
            _log.debug('%s of %s failed after it was stopped', hook, self,
                       exc_info=True)

    def _interrupt_start(self):
        """Ask every extension to make its setup or start hook return
        (once per start); :meth:`start` then skips a phase not yet
        begun."""
        with self._lifecycle_lock:
            if self._starting is None or self._start_interrupted:
                return
            self._start_interrupted = True
        _log.debug('interrupting the start of %s', self)
        for extension in self.extensions:
            try:
                extension.interrupt_start()
            except Exception:
                _log.warning('%s raised in interrupt_start()', extension,
                             exc_info=True)

    def _wait_for_start(self, starting, timeout):
        """After :meth:`_interrupt_start`: wait for ``start()`` to return,
        for up to ``timeout`` seconds."""
        if not starting.wait(timeout):
            _log.warning(
                '%s is still starting %.1fs after its start was interrupted '
                '(an extension\'s setup() or start() blocks, and does not '
                'end on interrupt_start()); going on without waiting for it',
                self, timeout)

    def stop(self):
        """Stop the container gracefully.

        1. entrypoints stop (no new work is accepted);
        2. running workers finish (there is no timeout: workers cannot be
           interrupted);
        3. dependency providers stop, then the remaining extensions;
        4. the worker pool's threads and every managed thread are joined.

        When ``stop()`` returns, no thread the container started is alive,
        unless an extension left a managed thread running past
        ``THREAD_JOIN_TIMEOUT`` seconds, which is logged as a warning.
        If a kill is in progress, waits for it instead. Called while
        :meth:`start` runs (on another thread), it first interrupts the
        start and waits for it to return, then stops what did start.
        """
        with self._lifecycle_lock:
            if self._died.ready():
                _log.debug('already stopped %s', self)
                return
            being_killed = self._being_killed
            # from here on, work an entrypoint received but has not yet
            # handed to a worker (waiting for a free slot, say) goes back
            # to its source
            self._stopping = True
            self._running = False
            starting = self._starting
            if not self._ever_started:
                self._cancelled = True

        if being_killed:
            _log.debug('already being killed %s', self)
            self._wait_quietly()
            return

        _log.debug('stopping %s', self)
        if starting is not None:
            _log.debug('%s is starting: interrupting it', self)
            self._interrupt_start()
            self._wait_for_start(starting, self.thread_join_timeout)

        with _log_time('stopped %s', self):
            self.entrypoints.all.stop()
            self._worker_slots.wait_idle()
            if self._being_killed:
                # a kill started while we were stopping (e.g. a worker
                # failed): it finishes the job and its outcome counts
                self._wait_quietly()
                return
            self.dependencies.all.stop()
            self.subextensions.all.stop()

            # no entrypoint is left to spawn workers: close the pool and let
            # its (idle) threads exit
            self._worker_slots.close('{} is stopped'.format(self))
            self._worker_pool.shutdown(wait=not self._being_killed)
            self._join_managed_threads(self.thread_join_timeout)
            self.started = False

        with self._lifecycle_lock:
            being_killed = self._being_killed
        if being_killed:
            self._wait_quietly()
        else:
            self._died.send(None)

    def kill(self, exc_info=None):
        """Kill the container, semi-gracefully, and return promptly.

        OS threads cannot be interrupted, so unlike Nameko this does not
        stop running service code. Instead it:

        - refuses new work (``spawn_worker`` raises
          :class:`~threadko.exceptions.ContainerBeingKilled`);
        - interrupts a :meth:`start` in progress (waiting at most a second
          for it to return);
        - calls ``kill()`` on the entrypoints, then on every extension
          (exceptions are logged and swallowed), which closes broker
          connections so unacknowledged messages go back to the broker;
        - abandons running workers: each one finishes its current method
          call on its own, and its result is discarded (no reply, no ack,
          no further dependency hooks);
        - gives managed threads a short time to end, without waiting for
          running workers.

        :param exc_info: a ``sys.exc_info()`` triple; if given,
            :meth:`wait` re-raises that exception.
        """
        with self._lifecycle_lock:
            if self._being_killed:
                already_killing = True
            else:
                already_killing = False
                self._being_killed = True
                self._running = False
                already_dead = self._died.ready()
                starting = self._starting
                if not self._ever_started:
                    self._cancelled = True

        if already_killing:
            _log.debug('already killing %s ... waiting for death', self)
            self._wait_quietly()
            return
        if already_dead:
            _log.debug('already stopped %s', self)
            return

        if exc_info is not None:
            _log.info('killing %s due to %s', self, exc_info[1])
        else:
            _log.info('killing %s', self)

        self._worker_slots.close('{} is being killed'.format(self))
        if starting is not None:
            self._interrupt_start()
            self._wait_for_start(
                starting, min(KILL_JOIN_TIMEOUT, self.thread_join_timeout))

        def safely_kill_extensions(extensions):
            try:
                extensions.all.kill()
            except Exception as exc:
                _log.warning('Extension raised `%s` during kill', exc)

        safely_kill_extensions(self.entrypoints)
        busy = self._worker_slots.busy
        if busy:
            _log.warning(
                'abandoning %s active worker(s): their results will be '
                'discarded', busy)
        safely_kill_extensions(self.extensions)

        # don't wait for abandoned workers; idle pool threads exit by
        # themselves once the pool is shut down
        self._worker_pool.shutdown(wait=False)
        self._join_managed_threads(
            min(KILL_JOIN_TIMEOUT, self.thread_join_timeout))
        self.started = False
        self._died.send(exc_info)

    def wait(self):
        """Block until the container has stopped or been killed.

        Returns ``None`` after a graceful stop; re-raises the exception
        the container was killed with (for example one that escaped a
        managed thread or a dependency provider's worker hook).
        """
        self._died.wait()

    def _wait_quietly(self):
        try:
            self._died.wait()
        except Exception:
            pass  # the killer reports the error, not us

    # -- workers ---------------------------------------------------------

    def spawn_worker(self, entrypoint, args, kwargs, context_data=None,
                     handle_result=None, attempt=None, origin=None):
        """Run the service method behind ``entrypoint`` on a worker thread.

        Blocks while ``max_workers`` workers are busy, then returns the
        :class:`WorkerContext` as soon as the worker is scheduled (not when
        it finished).

        :param entrypoint: the bound entrypoint that fired
        :param args: positional arguments for the method
        :param kwargs: keyword arguments for the method
        :param context_data: context data that came with the call
        :param handle_result: optional ``fn(worker_ctx, result, exc_info)``
            run on the worker thread after the method; it must return
            ``(result, exc_info)``, which dependencies' ``worker_result``
            then receive. Entrypoints send replies and acks here.
        :param attempt: which attempt at the work this is, for entrypoints
            that retry (``worker_ctx.attempt``; 1 when not given)
        :param origin: what fired the entrypoint (the
            :class:`~threadko.amqp.consumer.Message`, the werkzeug
            ``Request``), as ``worker_ctx.origin``: tracing continues the
            trace its headers carry
        :raises ContainerBeingKilled: the container is stopping, being
            killed or has stopped; react as if the work had never arrived
            (requeue a message, say).
        """
        worker_ctx = self._new_worker(
            entrypoint, args, kwargs, context_data, origin)
        if attempt is not None:
            worker_ctx.attempt = attempt
        _log.debug('spawning %s', worker_ctx)
        try:
            # a fresh contextvars context per worker: nothing set by one
            # worker leaks into the next one that reuses the pool thread
            self._worker_pool.submit(
                contextvars.Context().run,
                self._run_worker_thread, worker_ctx, handle_result)
        except BaseException:
            self._worker_slots.release()
            if self._being_killed:
                raise ContainerBeingKilled()
            raise
        return worker_ctx

    def reserved_worker_slot(self):
        """For a thread that must not block on a busy pool (a consumer
        thread): a context manager giving True if a worker slot was free
        and is now reserved for this thread's next :meth:`spawn_worker` or
        :meth:`run_worker`, which then does not block; False if none was
        free. A reservation no worker used is given back on exit."""
        return _Reservation(self._worker_slots)

    def run_worker(self, entrypoint, args, kwargs, context_data=None,
                   handle_result=None, origin=None):
        """Like :meth:`spawn_worker`, but run the worker on the calling
        thread and return its :class:`WorkerContext` when it is done.

        For entrypoints whose caller would only wait for the worker anyway
        (an HTTP request thread): it saves two thread switches per call.
        The worker still takes one of the ``max_workers`` slots (blocking
        while none is free), gets a fresh ``contextvars`` context, and runs
        the same lifecycle; ``stop()`` waits for it like any other.

        :raises ContainerBeingKilled: as :meth:`spawn_worker`
        """
        worker_ctx = self._new_worker(
            entrypoint, args, kwargs, context_data, origin)
        _log.debug('running %s inline', worker_ctx)
        # releases the slot when done
        contextvars.Context().run(
            self._run_worker_thread, worker_ctx, handle_result)
        return worker_ctx

    def _new_worker(self, entrypoint, args, kwargs, context_data, origin):
        """Take a worker slot (blocking while none is free) and make the
        worker's context; whoever gets it must run it, which releases the
        slot."""
        if self._being_killed:
            _log.info('Worker spawn prevented due to being killed')
            raise ContainerBeingKilled()
        if self._stopping:
            raise ContainerBeingKilled('{} is stopping'.format(self))
        self._worker_slots.acquire()
        if self._stopping:  # it began while we waited for the slot
            self._worker_slots.release()
            raise ContainerBeingKilled('{} is stopping'.format(self))
        try:
            service = self.service_cls()
            worker_ctx = WorkerContext(
                self, service, entrypoint, args, kwargs, data=context_data)
            if origin is not None:
                worker_ctx.origin = origin
            return worker_ctx
        except BaseException:
            self._worker_slots.release()
            if self._being_killed:
                raise ContainerBeingKilled()
            raise

    def _run_worker_thread(self, worker_ctx, handle_result):
        self._worker_threads[worker_ctx] = threading.current_thread()
        _current_worker.set(worker_ctx)
        try:
            if self.instruments:
                self._run_instrumented_worker(worker_ctx, handle_result)
            else:
                self._run_worker(worker_ctx, handle_result)
        except Exception:
            if self._being_killed:
                _log.debug('%s failed after its container was killed',
                           worker_ctx, exc_info=True)
            else:
                _log.critical('%s thread exited with error', self,
                              exc_info=True)
                # a failure in the worker lifecycle (not in the service
                # method) is a bug in an extension: the container dies of it
                self.kill(sys.exc_info())
        finally:
            self._worker_threads.pop(worker_ctx, None)
            self._worker_slots.release()

    def _run_instrumented_worker(self, worker_ctx, handle_result):
        started = [(instrument, instrument.worker_started(worker_ctx))
                   for instrument in self.instruments]
        error = None
        try:
            error = self._run_worker(worker_ctx, handle_result)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for instrument, token in reversed(started):
                instrument.worker_finished(worker_ctx, token, error)
            del error  # the traceback holds this frame

    def _run_worker(self, worker_ctx, handle_result):
        """Run the worker's lifecycle; return what the service method
        raised (None if it returned)."""
        error = None
        try:
            # debug logging and timing only when enabled: the hot path
            debug = _log.isEnabledFor(logging.DEBUG)
            timed = _log_time if debug else _untimed
            if self._being_killed:
                _log.debug('discarding %s: container was killed',
                           worker_ctx)
                return

            if debug:
                _log.debug('setting up %s', worker_ctx)
                _log.debug('call stack for %s: %s',
                           worker_ctx, '->'.join(worker_ctx.call_id_stack))

            with timed('ran worker %s', worker_ctx):
                self._inject_dependencies(worker_ctx)
                self._worker_setup(worker_ctx)

                result = exc_info = None
                method = getattr(worker_ctx.service,
                                 worker_ctx.entrypoint.method_name)
                try:
                    if debug:
                        _log.debug('calling handler for %s', worker_ctx)
                    with timed('ran handler for %s', worker_ctx):
                        result = method(
                            *worker_ctx.args, **worker_ctx.kwargs)
                except Exception as exc:
                    if isinstance(
                            exc, worker_ctx.entrypoint.expected_exceptions):
                        _log.warning(
                            '(expected) error handling worker %s: %s',
                            worker_ctx, _describe(exc), exc_info=True)
                    else:
                        _log.exception(
                            'error handling worker %s: %s', worker_ctx,
                            _describe(exc))
                    exc_info = sys.exc_info()
                    error = exc

                if self._being_killed:
                    # the worker was abandoned by kill(): its result must
                    # not reach the caller (no handle_result, no
                    # worker_result); worker_teardown still runs, here on
                    # the worker's own thread, so that what the providers
                    # lent this worker (a database session, say) goes back
                    _log.debug(
                        'discarding result of %s: container was killed',
                        worker_ctx)
                    del exc_info
                    self._teardown_abandoned(worker_ctx)
                    return error

                if handle_result is not None:
                    if debug:
                        _log.debug('handling result for %s', worker_ctx)
                    with timed('handled result for %s', worker_ctx):
                        result, exc_info = handle_result(
                            worker_ctx, result, exc_info)

                with timed('tore down worker %s', worker_ctx):
                    if debug:
                        _log.debug('signalling result for %s', worker_ctx)
                    self._worker_result(worker_ctx, result, exc_info)
                    # break the traceback -> frame -> exc_info cycle now
                    del exc_info
                    self._worker_teardown(worker_ctx)
            return error
        finally:
            del error  # its traceback holds this frame

    def _teardown_abandoned(self, worker_ctx):
        try:
            self._worker_teardown(worker_ctx)
        except Exception:
            # the providers are killed already: nothing to report to
            _log.debug('worker_teardown of abandoned %s failed', worker_ctx,
                       exc_info=True)

    def _inject_dependencies(self, worker_ctx):
        for provider in self.dependencies:
            dependency = provider.get_dependency(worker_ctx)
            setattr(worker_ctx.service, provider.attr_name, dependency)

    def _worker_setup(self, worker_ctx):
        for provider in self.dependencies:
            provider.worker_setup(worker_ctx)

    def _worker_result(self, worker_ctx, result, exc_info):
        for provider in self.dependencies:
            provider.worker_result(worker_ctx, result, exc_info)

    def _worker_teardown(self, worker_ctx):
        for provider in self.dependencies:
            provider.worker_teardown(worker_ctx)

    # -- managed threads -------------------------------------------------

    def spawn_managed_thread(self, fn, identifier=None):
        """Run ``fn()`` in a background thread owned by this container.

        An exception escaping ``fn`` is logged CRITICAL and kills the
        container (unless it is already being killed, when it is only
        logged at DEBUG).

        The extension that spawns the thread must end it in its
        ``stop()``/``kill()`` (set an event, close a socket): threads
        cannot be killed. ``stop()`` joins whatever is still running and
        logs any thread that does not end in time. Managed threads are
        daemon threads, so a stuck one cannot keep the process alive.

        :param fn: a callable taking no arguments
        :param identifier: used in the thread's name and in logs; defaults
            to ``fn.__name__``
        :returns: the :class:`threading.Thread`
        """
        if identifier is None:
            identifier = getattr(fn, '__name__', '<unknown>')

        thread = threading.Thread(
            target=self._run_managed_thread, args=(fn,), daemon=True,
            name='threadko-{}-{}'.format(self.service_name, identifier))
        with self._managed_threads_lock:
            self._managed_threads[thread] = identifier
        thread.start()
        return thread

    def _run_managed_thread(self, fn):
        try:
            fn()
        except Exception:
            if self._being_killed:
                _log.debug('%s thread ended with error during kill', self,
                           exc_info=True)
            else:
                _log.critical('%s thread exited with error', self,
                              exc_info=True)
                self.kill(sys.exc_info())
        finally:
            with self._managed_threads_lock:
                self._managed_threads.pop(threading.current_thread(), None)

    def _join_managed_threads(self, timeout):
        current = threading.current_thread()
        with self._managed_threads_lock:
            threads = [
                (thread, identifier)
                for thread, identifier in self._managed_threads.items()
                if thread is not current
            ]
        if not threads:
            return
        deadline = time.monotonic() + timeout
        for thread, _ in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        survivors = [
            identifier for thread, identifier in threads
            if thread.is_alive()]
        if survivors:
            _log.warning(
                '%s managed thread(s) of %s still running after %.1fs, '
                'left behind as daemon threads: %s',
                len(survivors), self, timeout, ', '.join(survivors))

    def __repr__(self):
        return '<{} [{}] at 0x{:x}>'.format(
            type(self).__name__, self.service_name, id(self))


def _describe(exc):
    """``str(exc)`` for a log line, or a placeholder when the exception's
    own ``__str__`` fails (the log record would be lost otherwise)."""
    try:
        return str(exc)
    except Exception:
        return '<{} with an unprintable message>'.format(type(exc).__name__)
