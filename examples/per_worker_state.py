"""Per-worker state in a dependency provider, two ways that are safe when
workers run at once (under Nameko, greenthreads never ran a provider's hooks
at the same time, so state kept on the provider itself seemed to work).

``threadko check-migration`` flags the unsafe way: ``self.started = ...``
in a worker hook, where every worker of the container overwrites the same
attribute.
"""

import time

from threadko.extensions import DependencyProvider
from threadko.rpc import rpc


class CallTimer:
    """The object ``get_dependency`` returns is the worker's own: keep its
    state there."""

    def __init__(self):
        self.started = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.started


class Timing(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return CallTimer()


class Tagging(DependencyProvider):
    """State the hooks need after the method (here, in worker_result):
    a dict keyed by the worker context, which is unique to one worker."""

    def setup(self):
        self.tags = {}  # worker_ctx -> its tag; set up once, not per worker
        self.finished = []

    def get_dependency(self, worker_ctx):
        tag = 'call-{}'.format(worker_ctx.call_id)
        self.tags[worker_ctx] = tag
        return tag

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        self.finished.append((self.tags[worker_ctx], result))

    def worker_teardown(self, worker_ctx):
        del self.tags[worker_ctx]


class Reporter:
    name = 'reporter'

    timer = Timing()
    tag = Tagging()

    @rpc
    def report(self, seconds):
        time.sleep(seconds)
        return self.tag, self.timer.elapsed()
