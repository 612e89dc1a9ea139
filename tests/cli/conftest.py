"""Fixtures for running the real ``threadko`` command line in a subprocess
(``python -m threadko``), with service modules written to ``tmp_path``."""

import subprocess
import sys
import textwrap

import pytest

from support import ChildProcess, child_env

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


@pytest.fixture
def start_threadko(workdir):
    """``start_threadko(*args, env=None)``: start ``threadko <args>`` in the
    background; the child is killed at teardown if still running."""
    processes = []

    def start(*args, env=None):
        process = ChildProcess(
            [sys.executable, '-m', 'threadko', *args], str(workdir),
            child_env(**(env or {})), timeout=WAIT)
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

