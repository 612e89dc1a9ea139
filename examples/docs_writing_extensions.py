"""Extensions of your own: an entrypoint, the shared extension behind it, and
a dependency provider. Together they run a service method for every file
dropped into a spool directory.

Run it with a directory to watch::

    threadko run -d SPOOL_DIR=/tmp/spool examples.docs_writing_extensions

then ``printf 'a\\nb\\n' > /tmp/spool/.x && mv /tmp/spool/.x /tmp/spool/x.csv``
(files whose name starts with ``.`` are ignored, so write under such a name
and rename). A file is deleted once its worker succeeded, and moved to
``failed/`` if the worker raised.
"""

import contextlib
import fnmatch
import functools
import os
import threading

from threadko.exceptions import ContainerBeingKilled
from threadko.extensions import (
    DependencyProvider, Entrypoint, ProviderCollector, SharedExtension,
)


class SpoolWatcher(ProviderCollector, SharedExtension):
    """Looks for new files in the spool directory and hands each to the
    first :class:`FileEntrypoint` whose pattern matches its name.

    Shared: one per container, however many entrypoints use it, with one
    managed thread that scans the directory.
    """

    def __init__(self):
        super().__init__()
        # cheap, inert objects only: __init__ also runs at declaration
        self._stop_event = threading.Event()
        self._thread = None

    def setup(self):
        config = self.container.config
        self.directory = config["SPOOL_DIR"]
        self.interval = config.get("SPOOL_POLL_INTERVAL", 1.0)
        os.makedirs(os.path.join(self.directory, "failed"), exist_ok=True)
        # files handed to a worker and not finished yet: the scanning
        # thread adds them, worker threads remove them
        self._claimed = set()
        self._claimed_lock = threading.Lock()

    def start(self):
        self._stop_event.clear()
        self._thread = self.container.spawn_managed_thread(
            self._run, identifier="spool-watcher")

    def stop(self):
        self.wait_for_providers()  # the entrypoints stop first
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()  # returns within one scan

    def kill(self):
        self._stop_event.set()  # and don't wait: kill returns promptly

    def release(self, path):
        """Called once a file's worker is done with it."""
        with self._claimed_lock:
            self._claimed.discard(path)

    def _run(self):
        while not self._stop_event.wait(self.interval):
            try:
                self._scan()
            except ContainerBeingKilled:
                return

    def _scan(self):
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            with self._claimed_lock:
                if path in self._claimed:
                    continue
                self._claimed.add(path)
            for entrypoint in self.providers:
                if fnmatch.fnmatch(name, entrypoint.pattern):
                    try:
                        # blocks while every worker is busy
                        entrypoint.handle_file(path)
                    except ContainerBeingKilled:
                        self.release(path)  # the file stays for next time
                        raise
                    break
            else:
                self.release(path)  # no entrypoint wants it


class FileEntrypoint(Entrypoint):
    """``@on_file(pattern)``: call the method with the path of each new
    file of the spool directory whose name matches ``pattern``."""

    watcher = SpoolWatcher()

    def __init__(self, pattern, **kwargs):
        self.pattern = pattern
        super().__init__(**kwargs)

    def setup(self):
        self.watcher.register_provider(self)

    def stop(self):
        self.watcher.unregister_provider(self)

    def kill(self):
        self.watcher.unregister_provider(self)

    def handle_file(self, path):
        """Runs on the watcher's thread: start a worker for ``path``. Raises
        ContainerBeingKilled once the container is stopping or dying."""
        self.container.spawn_worker(
            self, (path,), {},
            handle_result=functools.partial(self.handle_result, path))

    def handle_result(self, path, worker_ctx, result, exc_info):
        """Runs on the worker's thread once the method returned or raised.
        An exception escaping it would kill the container."""
        with contextlib.suppress(FileNotFoundError):
            if exc_info is None:
                os.remove(path)
            else:
                failed = os.path.join(
                    os.path.dirname(path), "failed", os.path.basename(path))
                os.replace(path, failed)
        self.watcher.release(path)
        return result, exc_info


on_file = FileEntrypoint.decorator


class SpoolWriter(DependencyProvider):
    """Injects ``write(name, text)``, which adds a file to the spool.

    The provider keeps no state that changes while workers run, so it is
    thread-safe as it is; the file is written under a hidden name and
    renamed, so the watcher never sees it half-written.
    """

    def setup(self):
        self.directory = self.container.config["SPOOL_DIR"]

    def get_dependency(self, worker_ctx):
        return self.write

    def write(self, name, text):
        hidden = os.path.join(self.directory, "." + name)
        with open(hidden, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(hidden, os.path.join(self.directory, name))


class Importer:
    name = "importer"

    write_to_spool = SpoolWriter()

    @on_file("*.csv")
    def count_rows(self, path):
        with open(path, encoding="utf-8") as file:
            rows = file.read().splitlines()
        if not rows:
            raise ValueError("{} is empty".format(path))
        name = os.path.basename(path)[:-len(".csv")]
        self.write_to_spool(name + ".count", str(len(rows)))

    @on_file("*.count")
    def report(self, path):
        with open(path, encoding="utf-8") as file:
            count = file.read()
        name = os.path.basename(path)[:-len(".count")]
        print("importer: {}.csv has {} rows".format(name, count), flush=True)
        return int(count)
