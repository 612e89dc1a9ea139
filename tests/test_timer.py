"""The @timer entrypoint, run in real containers."""

import logging
import threading
import time

import pytest

from support import WAIT

from threadko.timer import Timer, timer

# long enough that a timer which sleeps it never fires again during a test
FOREVER = 1000

# how long a test waits to see that something does NOT happen; what it
# guards against would happen within microseconds
NEGATIVE_WINDOW = 0.3


class Ticks:
    """What the workers of a timer saw, in firing order, and how many ran at
    the same time."""

    def __init__(self):
        self.records = []
        self.running = 0
        self.max_running = 0
        self._cond = threading.Condition()

    def enter(self, record=None):
        """Note the start of a worker; returns its tick number (from 0)."""
        with self._cond:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.records.append(record)
            self._cond.notify_all()
            return len(self.records) - 1

    def leave(self):
        with self._cond:
            self.running -= 1
            self._cond.notify_all()

    @property
    def count(self):
        with self._cond:
            return len(self.records)

    def wait_for(self, count, timeout=WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self.records) >= count, timeout), (
                'expected {} ticks, saw {}'.format(count, len(self.records)))


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self):
        self._now = 0.0
        self._lock = threading.Lock()

    def now(self):
        with self._lock:
            return self._now

    def advance(self, seconds):
        with self._lock:
            self._now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(Timer, 'clock', staticmethod(clock.now))
    return clock


class InThread:
    """Run ``fn`` on a named thread; ``done`` is set when it returned."""

    def __init__(self, fn, name):
        self.done = threading.Event()

        def run():
            fn()
            self.done.set()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def wait(self, timeout=WAIT):
        finished = self.done.wait(timeout)
        if finished:
            self.thread.join()
        return finished


def timer_entrypoint(container):
    return next(ep for ep in container.entrypoints if isinstance(ep, Timer))


def test_ticks_repeat_and_the_first_waits_one_interval(containers):
    ticks = Ticks()

    class Service:
        name = 'timer_repeats'

        @timer(interval=0.05)
        def tick(self):
            ticks.enter(time.monotonic())
            ticks.leave()

    container = containers(Service)
    started_at = time.monotonic()
    container.start()
    try:
        ticks.wait_for(3)
    finally:
        container.stop()

    first, second, third = ticks.records[:3]
    # lower bounds only: they hold however slow the machine is (a small
    # allowance for the OS timer's rounding)
    assert first - started_at >= 0.045
    assert second - started_at >= 0.095
    assert third - started_at >= 0.145


def test_eager_timer_fires_at_once_with_positional_arguments(containers):
    ticks = Ticks()

    class Service:
        name = 'timer_eager'

        @timer(FOREVER, True)
        def tick(self):
            ticks.enter()
            ticks.leave()

    container = containers(Service)
    container.start()
    try:
        ticks.wait_for(1)
    finally:
        container.stop()
    assert ticks.count == 1


def test_never_runs_two_workers_at_once(containers):
    ticks = Ticks()
    release_first = threading.Event()
    second_started = threading.Event()

    class Service:
        name = 'timer_no_overlap'

        @timer(interval=0.01)
        def tick(self):
            number = ticks.enter()
            try:
                if number == 0:
                    # hold the first tick for many intervals
                    release_first.wait(WAIT)
                elif number == 1:
                    second_started.set()
            finally:
                ticks.leave()

    container = containers(Service)
    container.start()
    try:
        ticks.wait_for(1)
        assert not second_started.wait(NEGATIVE_WINDOW)
        release_first.set()
        ticks.wait_for(4)
    finally:
        release_first.set()
        container.stop()
    assert ticks.max_running == 1


def test_missed_slots_fire_back_to_back_then_the_schedule_resumes(
        containers, fake_clock):
    ticks = Ticks()
    # how far (in timer intervals) each tick moves the clock, by tick number
    takes = {0: 3.5, 3: 0.5}

    class Service:
        name = 'timer_catch_up'

        @timer(interval=FOREVER, eager=True)
        def tick(self):
            number = ticks.enter(fake_clock.now())
            fake_clock.advance(takes.get(number, 0) * FOREVER)
            ticks.leave()

    container = containers(Service)
    container.start()
    try:
        # tick 0 at t0 ran until 3.5 intervals: the slots at 1, 2 and 3
        # intervals are overdue and fire at once; tick 3 ran until 4
        # intervals, which is exactly the next slot, so tick 4 fires at
        # once too. The slot at 5 intervals is FOREVER away.
        ticks.wait_for(5)
    finally:
        container.stop()

    assert ticks.records == [
        0, 3.5 * FOREVER, 3.5 * FOREVER, 3.5 * FOREVER, 4 * FOREVER]


def test_a_failing_worker_does_not_stop_the_timer(containers, caplog):
    ticks = Ticks()

    class Boom(Exception):
        pass

    class Service:
        name = 'timer_failing'

        @timer(interval=0.01)
        def tick(self):
            ticks.enter()
            ticks.leave()
            raise Boom('tick failed')

    container = containers(Service)
    with caplog.at_level(logging.ERROR):
        container.start()
        try:
            ticks.wait_for(3)
        finally:
            container.stop()

    container.wait()  # a graceful stop: the container did not die of it
    assert any(
        record.exc_info and record.exc_info[0] is Boom
        for record in caplog.records)


def test_stop_wakes_a_sleeping_timer_at_once(containers):
    ticks = Ticks()

    class Service:
        name = 'timer_sleeping'

        @timer(interval=FOREVER)
        def tick(self):
            ticks.enter()
            ticks.leave()

    container = containers(Service)
    container.start()
    stopping = InThread(container.stop, name='test-stop-timer_sleeping')
    assert stopping.wait(), 'stop() did not wake the sleeping timer'
    assert ticks.count == 0


def test_stop_waits_for_the_running_worker(containers):
    events = []
    entered = threading.Event()
    release = threading.Event()

    class Service:
        name = 'timer_stop_waits'

        @timer(interval=FOREVER, eager=True)
        def tick(self):
            entered.set()
            release.wait(WAIT)
            events.append('worker finished')

    container = containers(Service)
    container.start()
    entrypoint = timer_entrypoint(container)
    try:
        assert entered.wait(WAIT)

        def stop_timer():
            entrypoint.stop()
            events.append('timer stopped')

        stopping = InThread(stop_timer, name='test-stop-timer_stop_waits')
        assert not stopping.done.wait(NEGATIVE_WINDOW)
        release.set()
        assert stopping.wait()
    finally:
        release.set()
        container.stop()

    assert events == ['worker finished', 'timer stopped']


def test_no_thread_is_left_after_stop(containers):
    ticks = Ticks()

    class Service:
        name = 'timer_threads'

        @timer(interval=0.01, eager=True)
        def tick(self):
            ticks.enter()
            ticks.leave()

    before = set(threading.enumerate())
    container = containers(Service)
    container.start()
    try:
        ticks.wait_for(2)
        timer_threads = [
            t for t in threading.enumerate()
            if t.name == 'threadko-timer_threads-timer.tick']
        assert len(timer_threads) == 1
    finally:
        container.stop()

    left = [
        t.name for t in threading.enumerate()
        if t not in before and t.name.startswith('threadko')]
    assert left == []


def test_kill_returns_without_waiting_for_a_blocked_worker(containers):
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    class Service:
        name = 'timer_killed'

        @timer(interval=FOREVER, eager=True)
        def tick(self):
            entered.set()
            release.wait(WAIT)
            finished.set()

    container = containers(Service)
    container.start()
    try:
        assert entered.wait(WAIT)
        timer_thread = next(
            t for t in threading.enumerate()
            if t.name == 'threadko-timer_killed-timer.tick')

        killing = InThread(container.kill, name='test-kill-timer_killed')
        assert killing.wait(), 'kill() waited for the blocked worker'
        assert not finished.is_set()
        # the timer thread was told to end and did not wait for the worker
        assert not timer_thread.is_alive()
    finally:
        release.set()
    assert finished.wait(WAIT)
