"""An entrypoint with a background loop on a managed thread
(docs/concepts.rst): ``@poll(interval)`` calls its method every
``interval`` seconds until the container stops.

Run it with ``threadko run examples.poller``.
"""

import threading

from threadko.exceptions import ContainerBeingKilled
from threadko.extensions import Entrypoint


class Poller(Entrypoint):
    def __init__(self, interval, **kwargs):
        self.interval = interval
        self._stop_event = threading.Event()
        self._thread = None
        super().__init__(**kwargs)

    def start(self):
        self._stop_event.clear()
        self._thread = self.container.spawn_managed_thread(
            self._run, identifier='poller.{}'.format(self.method_name))

    def stop(self):
        self._stop_event.set()
        self._thread.join()  # stop() returns once the loop has ended

    def kill(self):
        self._stop_event.set()  # don't wait: kill must return promptly

    def _run(self):
        while not self._stop_event.wait(self.interval):
            try:
                self.container.spawn_worker(self, (), {})
            except ContainerBeingKilled:
                return


poll = Poller.decorator


class Inbox:
    name = 'inbox'

    @poll(interval=1)
    def check(self):
        print('inbox: checking for new mail', flush=True)
