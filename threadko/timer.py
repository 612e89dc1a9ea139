"""The ``@timer`` entrypoint: call a service method every ``interval``
seconds.

Each timer runs its schedule in one managed thread of the container. That
thread fires a worker, waits for the worker to finish, then sleeps until the
next slot (``Event.wait`` on a stop event, so ``stop()`` wakes it at once).
"""

import itertools
import logging
import threading
import time

from threadko.exceptions import ContainerBeingKilled
from threadko.extensions import Entrypoint

_log = logging.getLogger(__name__)


class Timer(Entrypoint):
    """Fires the decorated method every ``interval`` seconds, or as soon as
    the previous worker finished if that took longer.

    Ticks aim at ``t0 + n * interval``, where ``t0`` is when the timer
    started and ``n`` counts from 1 (from 0 with ``eager=True``). A timer
    never runs two workers at once: after each tick it waits for the worker
    to finish before it sleeps until the next slot. Slots missed while a
    worker ran long are not skipped; they fire back to back until the
    schedule has caught up, and the schedule does not drift.

    A worker that raises is logged by the container and the timer carries
    on. Timers are not cluster-aware: every running instance of the service
    fires its own ticks.

    Example::

        from threadko.timer import timer

        class Service:
            name = "service"

            @timer(interval=5)
            def tick(self):
                pass

    :param interval: seconds between ticks (an ``int`` or a ``float``)
    :param eager: fire as soon as the service starts instead of one
        ``interval`` later
    :param expected_exceptions: see :class:`~threadko.extensions.Entrypoint`
    :param sensitive_arguments: see :class:`~threadko.extensions.Entrypoint`
    """

    #: The clock the schedule is computed with. It must be monotonic;
    #: tests may replace it to control the schedule.
    clock = staticmethod(time.monotonic)

    def __init__(self, interval, eager=False, **kwargs):
        self.interval = interval
        self.eager = eager
        self._thread = None
        self._stop_event = threading.Event()
        self._worker_state = threading.Condition(threading.Lock())
        self._worker_running = False
        self._killed = False
        super().__init__(**kwargs)

    def start(self):
        """Start the timer thread; ``t0`` of the schedule is now."""
        _log.debug('starting %s', self)
        # fresh state, so a container can be started again after a stop
        self._stop_event = threading.Event()
        with self._worker_state:
            self._worker_running = False
            self._killed = False
        self._thread = self.container.spawn_managed_thread(
            self._run, identifier='timer.{}'.format(self.method_name))

    def stop(self):
        """Stop firing: wake the timer if it sleeps, wait for its running
        worker (if any) to finish, and return once the timer thread has
        ended."""
        _log.debug('stopping %s', self)
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def kill(self):
        """Tell the timer thread to end and return without waiting, even if
        a worker is still running (the container abandons it)."""
        _log.debug('killing %s', self)
        with self._worker_state:
            self._killed = True
            self._worker_state.notify_all()
        self._stop_event.set()

    def handle_result(self, worker_ctx, result, exc_info):
        """Runs on the worker thread once the method returned or raised:
        lets the timer schedule the next tick."""
        with self._worker_state:
            self._worker_running = False
            self._worker_state.notify_all()
        return result, exc_info

    def _run(self):
        start_time = self.clock()
        first = 0 if self.eager else 1
        for count in itertools.count(first):
            target = start_time + count * self.interval
            # computed only now, after the previous worker finished, so a
            # long worker makes the overdue slots fire back to back
            sleep_time = max(target - self.clock(), 0)
            if self._stop_event.wait(sleep_time):
                break
            if not self._fire_and_wait():
                break
        _log.debug('timer thread of %s ended', self)

    def _fire_and_wait(self):
        """Fire one worker and wait until it finished. Returns False if the
        timer must end (the container is being killed)."""
        with self._worker_state:
            if self._killed:
                return False
            self._worker_running = True
        try:
            self.container.spawn_worker(
                self, (), {}, handle_result=self.handle_result)
        except ContainerBeingKilled:
            _log.debug('%s: container is being killed, timer ends', self)
            return False
        with self._worker_state:
            self._worker_state.wait_for(
                lambda: not self._worker_running or self._killed)
            return not self._killed


timer = Timer.decorator
