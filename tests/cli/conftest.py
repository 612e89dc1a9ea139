"""Fixtures for running the real ``threadko`` command line in a subprocess
(``python -m threadko``), with service modules written to ``tmp_path``."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

WAIT = 10  # seconds: the longest a test waits for the child to do something

SERVICE_MODULE = '''
"""Services for the CLI tests; the worker of BlockingService waits for a
file named 'release' in the current directory."""

import logging
import os
import time

from threadko import config
from threadko.extensions import DependencyProvider, Entrypoint

log = logging.getLogger('svc')


def note(text):
    with open('journal.txt', 'a') as journal:
        journal.write(text + '\\n')


class OnStart(Entrypoint):
    """Fires one worker as soon as the container starts."""

    def start(self):
        self.container.spawn_worker(self, (), {})


class Idle(Entrypoint):
    """Never fires."""


class FailsInBackground(Entrypoint):
    """Its managed thread raises, which kills the container."""

    def start(self):
        self.container.spawn_managed_thread(self.explode, 'explode')

    def explode(self):
        raise RuntimeError('boom in a managed thread')


class Journal(DependencyProvider):
    def stop(self):
        note('dependency stopped')


class BlockingService:
    name = 'blocking'
    journal = Journal()

    @OnStart.decorator
    def work(self):
        log.info('worker started')
        deadline = time.monotonic() + 20
        while not os.path.exists('release'):
            if time.monotonic() > deadline:
                raise RuntimeError('the test never released the worker')
            time.sleep(0.01)
        note('worker done')


class ConfiguredService:
    # read at class-definition time: the CLI loads config before importing
    name = config.get('SERVICE_NAME', 'configured')

    @Idle.decorator
    def idle(self):
        pass


class DyingService:
    name = 'dying'

    @FailsInBackground.decorator
    def never_called(self):
        pass
'''


def child_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('PYTHONWARNINGS', None)
    env.update(extra)
    return env


@pytest.fixture
def workdir(tmp_path):
    """The child's working directory, holding the ``svc`` test module."""
    (tmp_path / 'svc.py').write_text(SERVICE_MODULE)
    return tmp_path


@pytest.fixture
def write(workdir):
    """``write(name, text)``: create a file in the working directory."""
    def write_file(name, text):
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path
    return write_file


@pytest.fixture
def threadko(workdir):
    """Run ``threadko <args>`` to completion and return the
    :class:`subprocess.CompletedProcess` (text output)."""
    def run_cli(*args, env=None):
        return subprocess.run(
            [sys.executable, '-m', 'threadko', *args], cwd=str(workdir),
            env=child_env(**(env or {})), capture_output=True, text=True,
            timeout=WAIT)
    return run_cli


class CliProcess:
    """A running ``threadko`` child whose stderr lines are collected by a
    reader thread, so the test can wait for a line with a deadline."""

    def __init__(self, args, cwd, env):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'threadko', *args], cwd=cwd, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(
            target=self._read, name='test-cli-stderr-reader', daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip('\n'))
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # EOF
            self._cond.notify_all()

    @property
    def output(self):
        with self._cond:
            return '\n'.join(line for line in self.lines if line is not None)

    def wait_for_line(self, text, timeout=WAIT):
        """Return the first stderr line containing ``text``; fail if the
        child does not print one within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout

        def find():
            for line in self.lines:
                if line is None:
                    return None  # EOF: stop waiting
                if text in line:
                    return line
            return False

        with self._cond:
            while True:
                found = find()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if found is None or remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise AssertionError('threadko never printed {!r}; stderr:\n{}'.format(
            text, self.output))

    def send_signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=WAIT):
        """Wait for the child to exit and for its stderr to be read;
        return the exit status."""
        status = self.proc.wait(timeout)
        self._reader.join(timeout)
        return status

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._reader.join(WAIT)
        self.proc.stderr.close()


@pytest.fixture
def start_threadko(workdir):
    """``start_threadko(*args, env=None)``: start ``threadko <args>`` in the
    background; the child is killed at teardown if still running."""
    processes = []

    def start(*args, env=None):
        process = CliProcess(args, str(workdir), child_env(**(env or {})))
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.close()


@pytest.fixture
def journal(workdir):
    """``journal()``: the lines the test services wrote to journal.txt."""
    def read():
        path = workdir / 'journal.txt'
        return path.read_text().splitlines() if path.exists() else []
    return read


@pytest.fixture
def release(workdir):
    """``release()``: let BlockingService's worker finish."""
    def release_worker():
        (workdir / 'release').write_text('')
    return release_worker

