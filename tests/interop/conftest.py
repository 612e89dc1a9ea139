"""Harness for the Nameko interoperability tests: real Nameko 2.14.1
processes next to threadko, on the test's own RabbitMQ vhost.

- ``nameko_python`` (session): the python of an isolated virtualenv holding
  :data:`NAMEKO_PINS` -- ``<repo>/.nameko-venv``, or ``$THREADKO_NAMEKO_VENV``.
  It is created on first use and reused while the stamp file inside it
  records the same pins (and Python version). Failing to create it fails
  the tests, with pip's output.
- ``nameko_services(*names, config=None)``: runs ``nameko_peer/serve.py``
  with the named services of ``nameko_peer/services.py`` and waits for its
  ``READY`` line; returns a :class:`NamekoServices`.
- ``nameko_driver(config=None, timeout=10)``: runs ``nameko_peer/driver.py``,
  a Nameko ``ClusterRpcProxy`` client driven by JSON lines; returns a
  :class:`NamekoDriver`.

Both factories pass the vhost's ``AMQP_URI`` on the command line. At
teardown, before the vhost goes, drivers are told to exit and services the
test did not stop are killed (a graceful Nameko stop takes seconds); every
process is reaped. Each process's stderr (Nameko's log) is kept in
``tmp_path`` and shown when a wait fails. Every test under this directory
is marked ``interop`` and ``rabbit``.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / 'nameko_peer'
REPO_ROOT = HERE.parent.parent

VENV_ENV_VAR = 'THREADKO_NAMEKO_VENV'

VENV_BUILD_TIMEOUT = 600  # seconds for `venv` + `pip install`, at most
START_TIMEOUT = 30  # seconds for a Nameko process to print READY
REPLY_TIMEOUT = 30  # seconds for the driver to answer one request
STOP_TIMEOUT = 15  # seconds for a Nameko process to exit once told to
LOG_TAIL = 60  # stderr lines shown in failure messages


# -- markers -------------------------------------------------------------


def _is_interop(item):
    return HERE in Path(str(item.path)).resolve().parents


def pytest_itemcollected(item):
    if _is_interop(item):
        item.add_marker(pytest.mark.interop)
        item.add_marker(pytest.mark.rabbit)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """When the virtualenv must be built, give the first test that needs
    it extra time for that (pytest-timeout counts fixture setup)."""
    if not config.pluginmanager.hasplugin('timeout'):
        return
    for item in items:
        if _is_interop(item) and 'nameko_python' in item.fixturenames:
            if _venv_ready(venv_dir()):
                return
            marker = item.get_closest_marker('timeout')
            current = config.getini('timeout')
            if marker is not None:
                current = marker.args[0] if marker.args else \
                    marker.kwargs.get('timeout', current)
            current = float(current or 0)
            if current > 0:
                item.add_marker(
                    pytest.mark.timeout(current + VENV_BUILD_TIMEOUT),
                    append=False)
            return


# -- the Nameko virtualenv ---------------------------------------------------
# built by scripts/nameko_venv.py, shared with the benchmarks

sys.path.insert(0, str(REPO_ROOT / 'scripts'))
from nameko_venv import (  # noqa: E402
    NAMEKO_PINS, VenvError, clean_env as _clean_env, ensure_venv,
    venv_ready)


def venv_dir():
    """Where the Nameko virtualenv lives."""
    return Path(os.environ.get(VENV_ENV_VAR) or REPO_ROOT / '.nameko-venv')


def _venv_ready(path):
    return venv_ready(path, NAMEKO_PINS)


def ensure_nameko_venv(path):
    """The python of the Nameko virtualenv at ``path`` (made if needed)."""
    return ensure_venv(path, NAMEKO_PINS)


@pytest.fixture(scope='session')
def nameko_python():
    """The python of the Nameko 2.14.1 virtualenv (made if needed)."""
    try:
        return ensure_nameko_venv(venv_dir())
    except VenvError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


# -- Nameko-side processes ---------------------------------------------------


class PeerProcess:
    """A Nameko-side child process. Its stdout lines are collected by a
    reader thread; its stderr goes to ``log_path``."""

    def __init__(self, label, argv, log_path):
        self.label = label
        self.log_path = log_path
        self._log = open(log_path, 'w')
        self.proc = subprocess.Popen(
            [str(arg) for arg in argv], cwd=str(PEER_DIR), env=_clean_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, encoding='utf-8', bufsize=1)
        self._lines = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(
            target=self._read, daemon=True,
            name='threadko-interop-{}-{}'.format(label, self.proc.pid))
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip('\n'))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def lines(self):
        with self._cond:
            return list(self._lines)

    def describe(self):
        """The process's state, stdout and the tail of its stderr."""
        try:
            with open(self.log_path, errors='replace') as log:
                tail = log.read().splitlines()[-LOG_TAIL:]
        except OSError:
            tail = []
        return '{} (pid {}, exit status {})\n--- stdout:\n{}\n--- stderr ' \
            '(last {} lines of {}):\n{}'.format(
                self.label, self.proc.pid, self.proc.poll(),
                '\n'.join(self.lines), LOG_TAIL, self.log_path,
                '\n'.join(tail))

    def wait_for_line(self, match, timeout, what):
        """Return the first stdout line for which ``match(line)`` is true;
        fail if none comes within ``timeout`` seconds (or the output
        ends)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if match(line):
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise AssertionError('{}: never got {}\n{}'.format(
            self.label, what, self.describe()))

    def wait_ready(self, timeout=START_TIMEOUT):
        self.wait_for_line(lambda line: line == 'READY', timeout, 'READY')
        return self

    def _ask_to_exit(self):
        self.proc.kill()

    def close(self):
        """End the process (see :meth:`_ask_to_exit`), kill it if it does
        not exit, reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._ask_to_exit()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._log.close()


class NamekoServices(PeerProcess):
    """``serve.py`` running some Nameko services.

    At teardown a still running process is killed: a graceful Nameko stop
    takes about 3 s (its consumer loop notices each step once a second).
    Tests that care call :meth:`stop`.
    """

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM (a graceful stop); wait for the exit and return the exit
        status. Fails, after killing it, if it does not exit in time."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise AssertionError('{} did not stop within {}s\n{}'.format(
                self.label, timeout, self.describe()))
        self._reader.join(STOP_TIMEOUT)
        return status


class NamekoError(Exception):
    """The Nameko client raised; ``error`` describes it (``class``,
    ``module``, ``exc_type``, ``value``, ``exc_path``, ``exc_args``,
    ``str``)."""

    def __init__(self, error):
        self.error = error
        super().__init__('Nameko client raised {class} ({exc_type}: '
                         '{value})'.format(**error))


class NamekoDriver(PeerProcess):
    """``driver.py``: a Nameko ``ClusterRpcProxy`` client taking requests
    over stdin (see that module for the ops)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ids = iter(range(1, 1 << 62))

    def _ask_to_exit(self):
        self.proc.stdin.close()  # EOF: the driver stops its proxy and exits

    def send(self, op, **fields):
        """Send one request without waiting; returns its id for
        :meth:`answer`."""
        request_id = next(self._ids)
        try:
            self.proc.stdin.write(
                json.dumps(dict(fields, id=request_id, op=op)) + '\n')
            self.proc.stdin.flush()
        except OSError as exc:
            raise AssertionError('{}: cannot send {!r}: {}\n{}'.format(
                self.label, op, exc, self.describe()))
        return request_id

    def answer(self, request_id, reply_timeout=REPLY_TIMEOUT):
        """Wait for the driver's whole response to request ``request_id``.
        """
        def answers(line):
            try:
                response = json.loads(line)
            except ValueError:
                return False
            return isinstance(response, dict) and \
                response.get('id') == request_id

        line = self.wait_for_line(
            answers, reply_timeout,
            'an answer to request {}'.format(request_id))
        return json.loads(line)

    def request(self, op, reply_timeout=REPLY_TIMEOUT, **fields):
        """Send one request and return the driver's whole response."""
        return self.answer(self.send(op, **fields), reply_timeout)

    @staticmethod
    def result(response):
        """The ``result`` of a response; :class:`NamekoError` if it is an
        error."""
        if 'error' in response:
            raise NamekoError(response['error'])
        return response['result']

    @staticmethod
    def error(response):
        """The ``error`` of a response; fails if it has a result."""
        assert 'error' in response, \
            'expected the Nameko client to raise, got {!r}'.format(response)
        return response['error']

    @staticmethod
    def _call_fields(service, method, args, kwargs, context_data):
        fields = dict(service=service, method=method, args=list(args),
                      kwargs=kwargs or {})
        if context_data is not None:
            fields['context_data'] = context_data
        return fields

    def call(self, service, method, args=(), kwargs=None, context_data=None):
        """``service.method(*args, **kwargs)`` through the Nameko client
        (a new one with ``context_data``, if given); raises
        :class:`NamekoError` if the client raised."""
        return self.result(self.request('call', **self._call_fields(
            service, method, args, kwargs, context_data)))

    def call_error(self, service, method, args=(), kwargs=None,
                   context_data=None):
        """As :meth:`call` for a call that must raise: returns the error
        description (``class``, ``module``, ``exc_type``, ``value``,
        ``exc_path``, ``exc_args``, ``str``)."""
        return self.error(self.request('call', **self._call_fields(
            service, method, args, kwargs, context_data)))

    def send_call(self, service, method, args=(), kwargs=None,
                  context_data=None):
        """Start a call without waiting for it; pass the returned id to
        :meth:`answer` (then :meth:`result`)."""
        return self.send('call', **self._call_fields(
            service, method, args, kwargs, context_data))

    def call_async(self, calls):
        """``calls``: ``(service, method, args, kwargs)`` tuples, published
        before any reply is read; returns ``{"result"}``/``{"error"}`` dicts
        in call order."""
        return self.result(self.request('call_async', calls=[
            dict(service=s, method=m, args=list(a), kwargs=k or {})
            for s, m, a, k in calls]))

    def dispatch(self, source, event_type, data, **options):
        """Nameko's standalone ``event_dispatcher``."""
        return self.result(self.request(
            'dispatch', source=source, event_type=event_type, data=data,
            options=options))

    def publish(self, body, routing_key, exchange=None, queue=None,
                headers=None, serializer='json'):
        """A kombu publish (``exchange``/``queue``: dicts of kombu
        ``Exchange``/``Queue`` arguments, declared first)."""
        return self.result(self.request(
            'publish', body=body, routing_key=routing_key, exchange=exchange,
            queue=queue, headers=headers, serializer=serializer))

    def get(self, queue, timeout=0):
        """One message taken off ``queue`` (waiting up to ``timeout``
        seconds), or ``None``."""
        return self.result(self.request(
            'get', reply_timeout=REPLY_TIMEOUT + timeout, queue=queue,
            timeout=timeout))


@pytest.fixture
def nameko_services(nameko_python, rabbit_config, tmp_path):
    """``start(*service_names, config=None, wait=True)``: run the named
    services of ``nameko_peer/services.py`` in one Nameko process on the
    test's vhost; returns its :class:`NamekoServices` (READY unless
    ``wait=False``; then call ``wait_ready()``)."""
    started = []

    def start(*names, config=None, wait=True):
        process = NamekoServices(
            'nameko-services-{}'.format(len(started)),
            [nameko_python, 'serve.py',
             '--amqp-uri', rabbit_config['AMQP_URI'],
             '--config', json.dumps(config or {}), *names],
            tmp_path / 'nameko-services-{}.log'.format(len(started)))
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in reversed(started):
        process.close()


@pytest.fixture
def nameko_driver(nameko_python, rabbit_config, tmp_path):
    """``start(config=None, timeout=10, wait=True)``: run a Nameko client
    (``nameko_peer/driver.py``) on the test's vhost; returns its
    :class:`NamekoDriver`. ``timeout`` is its RPC reply timeout."""
    started = []

    def start(config=None, timeout=10, wait=True):
        process = NamekoDriver(
            'nameko-driver-{}'.format(len(started)),
            [nameko_python, 'driver.py',
             '--amqp-uri', rabbit_config['AMQP_URI'],
             '--timeout', timeout, '--config', json.dumps(config or {})],
            tmp_path / 'nameko-driver-{}.log'.format(len(started)))
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in reversed(started):
        process.close()
