"""A dependency provider that keeps per-worker state, thread-safely
(docs/concepts.rst): its hooks run on many worker threads at once.

Declare it on any service (``call_timer = CallTimer()``); it injects
nothing (``None``) and only watches the workers.
"""

import logging
import threading
import time

from threadko.extensions import DependencyProvider

log = logging.getLogger(__name__)


class CallTimer(DependencyProvider):
    """Logs how long each worker took."""

    def setup(self):
        self._lock = threading.Lock()
        self._started = {}  # worker_ctx -> start time

    def worker_setup(self, worker_ctx):
        with self._lock:
            self._started[worker_ctx] = time.monotonic()

    def worker_teardown(self, worker_ctx):
        with self._lock:
            started = self._started.pop(worker_ctx)
        log.info('%s took %.3fs', worker_ctx.call_id,
                 time.monotonic() - started)
