"""Small building blocks shared by the tests: an entrypoint that fires on
demand, a recorder that notes which lifecycle hooks ran, child processes with
output deadlines, and raw access to the broker under test."""

import contextlib
import http.client
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pika
import pika.exceptions

from threadko.amqp import memory
from threadko.extensions import DependencyProvider, Entrypoint
from threadko.web.server import WebServer

WAIT = 5  # seconds: the longest any test waits for something that must happen
BROKER_WAIT = 10  # the same, for something that crosses a real broker


class Fire(Entrypoint):
    """An entrypoint that fires when the test calls :meth:`fire`."""

    def fire(self, *args, context_data=None, **kwargs):
        """Spawn a worker and return a handle whose ``result()`` waits for
        the worker's ``handle_result`` stage."""
        handle = WorkerHandle()
        self.container.spawn_worker(
            self, args, kwargs, context_data=context_data,
            handle_result=handle.handle_result)
        return handle


fire = Fire.decorator


class WorkerHandle:
    def __init__(self):
        self.done = threading.Event()
        self.result_value = None
        self.exc_info = None
        self.worker_ctx = None

    def handle_result(self, worker_ctx, result, exc_info):
        self.worker_ctx = worker_ctx
        self.result_value = result
        self.exc_info = exc_info
        self.done.set()
        return result, exc_info

    def result(self, timeout=WAIT):
        assert self.done.wait(timeout), 'worker did not finish'
        if self.exc_info is not None:
            raise self.exc_info[1]
        return self.result_value


def entrypoint_for(container, method_name):
    return next(
        ep for ep in container.entrypoints if ep.method_name == method_name)


class Recorder:
    """A thread-safe list of events, with a way to wait for one."""

    def __init__(self):
        self.events = []
        self._cond = threading.Condition()

    def __call__(self, *event):
        with self._cond:
            self.events.append(event if len(event) > 1 else event[0])
            self._cond.notify_all()

    def kinds(self):
        return [e[0] if isinstance(e, tuple) else e for e in self.events]

    def index_of_kind(self, kind):
        return self.kinds().index(kind)

    def wait_for_kind(self, kind, timeout=WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: kind in self.kinds(), timeout), (
                'never saw {!r}; saw {!r}'.format(kind, self.events))

    def wait_for(self, event, timeout=WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: event in self.events, timeout), (
                'never saw {!r}; saw {!r}'.format(event, self.events))


class Journal:
    """A thread-safe list that tests wait on: :meth:`wait_for` returns
    once it holds ``count`` items (what workers saw, say)."""

    def __init__(self):
        self._items = []
        self._changed = threading.Condition()

    def add(self, item):
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def clear(self):
        with self._changed:
            self._items = []

    def wait_for(self, count, timeout=BROKER_WAIT):
        with self._changed:
            assert self._changed.wait_for(
                lambda: len(self._items) >= count, timeout), (
                'expected {} items, got {!r}'.format(count, self._items))
            return list(self._items)


class RecordingProvider(DependencyProvider):
    """Records every lifecycle hook it sees into ``self.record`` (a
    :class:`Recorder` given at declaration time)."""

    def __init__(self, record):
        self.record = record

    def setup(self):
        self.record('setup', self.attr_name)

    def start(self):
        self.record('start', self.attr_name)

    def stop(self):
        self.record('stop', self.attr_name)

    def kill(self):
        self.record('kill', self.attr_name)

    def get_dependency(self, worker_ctx):
        self.record('get_dependency', threading.get_ident())
        return self.attr_name

    def worker_setup(self, worker_ctx):
        self.record('worker_setup', threading.get_ident())

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        self.record('worker_result', threading.get_ident())
        self.record('worker_result_args', result,
                    None if exc_info is None else exc_info[0])

    def worker_teardown(self, worker_ctx):
        self.record('worker_teardown', threading.get_ident())


class ChildProcess:
    """A child process whose output lines (stderr, stdout with
    ``stream='stdout'``, or both with ``stream='both'``) are collected by a
    reader thread, so the test can wait for a line with a deadline."""

    def __init__(self, argv, cwd, env, stream='stderr', timeout=WAIT):
        self.timeout = timeout
        if stream == 'both':
            pipes = {'stdout': subprocess.PIPE, 'stderr': subprocess.STDOUT}
            stream = 'stdout'
        else:
            pipes = {'stdout': subprocess.DEVNULL,
                     'stderr': subprocess.DEVNULL}
            pipes[stream] = subprocess.PIPE
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
            **pipes)
        self.stream = getattr(self.proc, stream)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(
            target=self._read, name='test-child-output-reader', daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.stream:
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

    def wait_for_line(self, text, timeout=None):
        """Return the first output line containing ``text``; fail if the
        child does not print one within ``timeout`` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)

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
        raise AssertionError('child never printed {!r}; output:\n{}'.format(
            text, self.output))

    def send_signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=None):
        """Wait for the child to exit and for its output to be read;
        return the exit status."""
        status = self.proc.wait(timeout or self.timeout)
        self._reader.join(timeout or self.timeout)
        return status

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(self.timeout)
        self._reader.join(self.timeout)
        self.stream.close()


def drain_queue(channel, queue):
    """Take every ready message off ``queue`` (auto-acked); return the
    bodies in order."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


# -- the broker under test (the ``broker`` fixture), used from outside ------

class Received:
    """A thread-safe list of what handlers got, with waits."""

    def __init__(self):
        self.items = []
        self._cond = threading.Condition()

    def add(self, item):
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, item, timeout=BROKER_WAIT):
        with self._cond:
            assert self._cond.wait_for(lambda: item in self.items, timeout), (
                'never got {!r}; got {!r}'.format(item, self.items))
            return list(self.items)

    def wait_for_count(self, count, timeout=BROKER_WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self.items) >= count, timeout), (
                'expected {} items; got {!r}'.format(count, self.items))
            return list(self.items)


@contextlib.contextmanager
def raw_channel(broker):
    """A pika(-like) channel on the broker under test, outside threadko."""
    if broker.kind == 'memory':
        connection = memory.connect(broker.config['vhost'])
    else:
        connection = pika.BlockingConnection(
            pika.URLParameters(broker.config['AMQP_URI']))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def queue_state(broker, queue):
    """``(ready message count, consumer count)`` of ``queue``, or ``None``
    if it does not exist."""
    with raw_channel(broker) as channel:
        try:
            ok = channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return None
    return ok.method.message_count, ok.method.consumer_count


def poll(check, what, timeout=BROKER_WAIT, interval=0.1):
    """Call ``check()`` every ``interval`` seconds until it returns
    something true, and return that; fail, naming ``what``, after
    ``timeout`` seconds. For what nothing signals: other processes'
    progress, the broker's statistics."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, 'timed out waiting for ' + what
        time.sleep(interval)


def until(predicate, timeout=BROKER_WAIT):
    """Poll ``predicate`` (each call a broker round trip) until it holds:
    RabbitMQ deletes auto-delete queues and forgets cancelled consumers a
    moment after the client's call returns, and nothing signals when."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition never held'


class RawRpcCaller:
    """A Nameko-style RPC caller written with pika only: it publishes
    exactly the body and properties it is given, and reads replies from a
    reply queue of its own, declared as Nameko's standalone proxy does."""

    def __init__(self, uri):
        self.connection = pika.BlockingConnection(pika.URLParameters(uri))
        self.channel = self.connection.channel()
        self.reply_key = str(uuid.uuid4())
        self.reply_queue = 'rpc.reply-raw-{}'.format(self.reply_key)
        self.channel.exchange_declare(
            'nameko-rpc', exchange_type='topic', durable=True)
        self.channel.queue_declare(
            self.reply_queue, durable=True,
            arguments={'x-expires': 300000})
        self.channel.queue_bind(
            self.reply_queue, 'nameko-rpc', routing_key=self.reply_key)

    def publish(self, routing_key, body, content_type='application/json',
                reply=True, headers=None):
        """Publish a request; return its correlation id. ``reply=False``
        leaves out ``reply_to``; ``content_type=None`` leaves out the
        content type and encoding."""
        correlation_id = str(uuid.uuid4())
        self.channel.basic_publish(
            'nameko-rpc', routing_key, body,
            pika.BasicProperties(
                content_type=content_type,
                content_encoding='utf-8' if content_type else None,
                correlation_id=correlation_id,
                reply_to=self.reply_key if reply else None,
                delivery_mode=2, headers=headers or {}))
        return correlation_id

    def next_reply(self, timeout=BROKER_WAIT):
        """``(method, properties, body)`` of the next reply (acked)."""
        for method, properties, body in self.channel.consume(
                self.reply_queue, inactivity_timeout=timeout):
            assert method is not None, 'no reply within {}s'.format(timeout)
            self.channel.basic_ack(method.delivery_tag)
            self.channel.cancel()
            return method, properties, body

    def reply(self, correlation_id, timeout=BROKER_WAIT):
        """The decoded JSON body of the reply to ``correlation_id``
        (replies to other calls are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            _, properties, body = self.next_reply(
                max(0.1, deadline - time.monotonic()))
            if properties.correlation_id == correlation_id:
                assert properties.content_type == 'application/json'
                return json.loads(body)

    def close(self):
        self.connection.close()


def child_env(**extra):
    """The environment for a child Python process: unbuffered output, no
    warning filters inherited from pytest, plus ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('PYTHONWARNINGS', None)
    env.update(extra)
    return env


# -- HTTP -------------------------------------------------------------------

class Reply:
    """What came back: ``status``, ``headers`` (an ``HTTPMessage``:
    case-insensitive ``get``, ``get_all``) and ``body`` (bytes)."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self):
        return self.body.decode('utf-8')

    def __repr__(self):
        return '<Reply {} {!r}>'.format(self.status, self.body[:200])


def http_fetch(port, method, path, body=None, headers=None,
               host='127.0.0.1'):
    """One request on a new connection; the :class:`Reply`, read to the
    end."""
    connection = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def web_port(container):
    """The port ``container``'s ``@http`` routes are served on."""
    return next(ext for ext in container.extensions
                if isinstance(ext, WebServer)).port


# -- an unreachable broker, and waiting for log lines --------------------------

@contextlib.contextmanager
def closed_port():
    """A loopback port that refuses connections: bound, so nothing else
    takes it meanwhile, but not listening."""
    sock = socket.socket()
    try:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def open_files_limit(needed):
    """Within the block, the soft RLIMIT_NOFILE raised to the hard limit if
    it is below ``needed`` (put back after); skips the calling test when
    the hard limit is below ``needed``."""
    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip('needs {} file descriptors; the hard limit is {}'.format(
            needed, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class LogWatcher(logging.Handler):
    """Notes log records of ``logger`` (and its children) whose message
    contains ``text``: ``with LogWatcher('Error connecting') as seen:
    ...; seen.wait()``."""

    def __init__(self, text, logger='threadko'):
        super().__init__(logging.DEBUG)
        self.text = text
        self.logger = logging.getLogger(logger)
        self.seen = threading.Event()

    def emit(self, record):
        if self.text in record.getMessage():
            self.seen.set()

    def wait(self, timeout=WAIT):
        assert self.seen.wait(timeout), 'never logged {!r}'.format(self.text)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info):
        self.logger.removeHandler(self)


class LogCollector(logging.Handler):
    """Collects every record of a logger; :meth:`wait_for` blocks until
    ``count`` of them contain a text (the ``log_collector`` fixture)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self._cond = threading.Condition()

    def emit(self, record):
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def matching(self, text, level=logging.DEBUG):
        return [record for record in self.records
                if text in record.getMessage() and record.levelno >= level]

    def wait_for(self, text, count=1, level=logging.DEBUG,
                 timeout=BROKER_WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self.matching(text, level)) >= count, timeout), (
                'no {!r} logged; got {}'.format(
                    text, [record.getMessage() for record in self.records]))
            return self.matching(text, level)


# -- packages installed for a test, kept between runs -------------------------

CACHE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.cache')
PIP_TARGET_STAMP = '.threadko-stamp'  # written once the install succeeded
PIP_TARGET_TIMEOUT = 300  # seconds


def pip_target(name, requirements, timeout=PIP_TARGET_TIMEOUT):
    """The directory ``.cache/<name>`` (git ignores ``.cache/``) with
    exactly ``requirements`` installed in it (``pip install --no-deps
    --target``: none of their own dependencies come along), for a child
    process's PYTHONPATH.

    It is installed once, from PyPI, and reused while its stamp (the
    requirements and the Python they were installed for) is the same; a
    change to either installs it again. Fails the calling test when pip
    fails (is PyPI reachable?).
    """
    import pytest

    target = os.path.join(CACHE, name)
    stamp = json.dumps({
        'requirements': list(requirements),
        'python': sys.implementation.cache_tag,
        'platform': sys.platform,
    }, indent=1)
    try:
        with open(os.path.join(target, PIP_TARGET_STAMP)) as file:
            if file.read() == stamp:
                return target
    except OSError:
        pass  # not installed yet, or only partly
    os.makedirs(CACHE, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=name + '.', dir=CACHE)
    try:
        try:
            result = subprocess.run(
                [sys.executable, '-m', 'pip', 'install', '--quiet',
                 '--disable-pip-version-check', '--no-deps',
                 '--target', staging] + list(requirements),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail('`pip install --target .cache/{}` took more than {} '
                        's (is PyPI reachable?)'.format(name, timeout),
                        pytrace=False)
        if result.returncode != 0:
            pytest.fail('could not install {} from PyPI (is it reachable?):'
                        '\n{}'.format(' '.join(requirements), result.stdout),
                        pytrace=False)
        with open(os.path.join(staging, PIP_TARGET_STAMP), 'w') as file:
            file.write(stamp)
        shutil.rmtree(target, ignore_errors=True)  # an older or broken one
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
