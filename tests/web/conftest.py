"""Shared helpers of the HTTP tests: a plain HTTP client (stdlib), the
port a container serves on, test threads that are always joined, and a
count of the service methods running at once."""

import threading
from concurrent.futures import Future

import pytest

from support import WAIT, http_fetch, web_port


@pytest.fixture
def local_config():
    """A config serving on loopback, on a port the OS picks."""
    return {'WEB_SERVER_ADDRESS': '127.0.0.1:0'}


@pytest.fixture
def fetch():
    """``fetch(port, method, path, body=None, headers=None)``: one request
    on a new connection; the :class:`Reply`, read to the end."""
    return http_fetch


@pytest.fixture
def port_of():
    """``port_of(container)``: the port its ``@http`` routes are served on
    (``None`` when it serves none)."""
    return web_port


@pytest.fixture
def background():
    """``background(fn, *args, **kwargs)`` runs ``fn`` on a thread named
    ``threadko-test-*`` and returns a ``Future`` of its outcome. Every
    thread is joined at teardown."""
    threads = []

    def run_in_background(fn, *args, **kwargs):
        future = Future()

        def run():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(
            target=run, daemon=True,
            name='threadko-test-{}-{}'.format(
                getattr(fn, '__name__', 'call'), len(threads)))
        threads.append(thread)
        thread.start()
        return future

    yield run_in_background
    for thread in threads:
        thread.join(WAIT * 2)
    assert not [t.name for t in threads if t.is_alive()]


class InFlight:
    """Counts the service methods running at once; each one waits for a
    permit before it returns."""

    def __init__(self):
        self.cond = threading.Condition()
        self.running = self.peak = self.finished = 0
        self.permits = threading.Semaphore(0)

    def enter(self):
        with self.cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.cond.notify_all()
        try:
            assert self.permits.acquire(timeout=WAIT), 'never released'
        finally:
            with self.cond:
                self.running -= 1
                self.finished += 1
                self.cond.notify_all()

    def wait(self, predicate, timeout=WAIT):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), timeout), (
                'running={} finished={}'.format(self.running, self.finished))

    def holds_for_a_moment(self, predicate):
        """True if ``predicate`` stays true while whatever could break it
        gets a fair chance to (a bounded wait for the opposite)."""
        with self.cond:
            return not self.cond.wait_for(
                lambda: not predicate(self), timeout=0.3)


@pytest.fixture
def in_flight():
    """An :class:`InFlight` whose waiting methods are all let go at
    teardown."""
    flight = InFlight()
    yield flight
    flight.permits.release(100)
