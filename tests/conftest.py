"""Suite-wide guard: every thread threadko starts must be gone once the test
that started it has torn down (containers stopped or killed, blocked workers
released)."""

import threading
import time

import pytest

from threadko.containers import ServiceContainer

LEAK_GRACE = 5.0  # seconds for threads that are already on their way out


def _threadko_threads():
    return {t for t in threading.enumerate() if t.name.startswith('threadko-')}


@pytest.fixture(autouse=True)
def no_leaked_threadko_threads():
    before = _threadko_threads()
    yield
    deadline = time.monotonic() + LEAK_GRACE
    leaked = _threadko_threads() - before
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sorted(t.name for t in leaked if t.is_alive())
    assert not alive, 'threads left running after the test: {}'.format(alive)


@pytest.fixture
def containers():
    """Containers made by a test; killed at teardown if still alive."""
    made = []

    def make(service_cls, config=None):
        container = ServiceContainer(
            service_cls, {} if config is None else config)
        made.append(container)
        return container

    yield make
    for container in made:
        container.kill()
