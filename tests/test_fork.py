"""Clients, dispatchers and ``ServiceApp`` started before a fork, used in the
child: they reconnect there (or fail at once), and the parent's connections
are not disturbed.

Each test forks with :func:`os.fork` in-process (:func:`in_child`): the child
runs one function, reports what it returned through a pipe and ends with
``os._exit``, so pytest never runs on in it. The last test runs a Flask app
under ``gunicorn --preload``.
"""

import gc
import http.client as http_client
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from werkzeug.test import Client

from threadko.events import event_handler
from threadko.exceptions import (
    ForkedClientError, RpcClientStopped, UnknownService,
)
from threadko.rpc import RpcProxy, rpc
from threadko.runners import ServiceRunner
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.services import entrypoint_hook
from threadko.testing.utils import find_free_port, get_container, get_extension
from threadko.utils import fork
from threadko.web.handlers import http
from threadko.web.wsgi import ServiceApp

from support import (
    BROKER_WAIT, ChildProcess, Received, child_env, closed_port,
)

# Python 3.12+ warns about fork() in a process with threads: that is the
# situation under test
pytestmark = pytest.mark.filterwarnings(
    'ignore:This process .* is multi-threaded:DeprecationWarning')

CHILD_WAIT = 30  # seconds a forked child may take to report
CLIENT_TIMEOUT = 10  # the RPC clients' timeout: a hang would last this long
BROKERS = ['memory', pytest.param('rabbit', marks=pytest.mark.rabbit)]


class ChildFailed(AssertionError):
    pass


def in_child(function, timeout=CHILD_WAIT):
    """Fork; in the child, run ``function()`` and send back what it returns
    (as JSON). Return that in the parent; raise :class:`ChildFailed` with
    the child's traceback if it raised, or if it did not report within
    ``timeout`` seconds (it is killed then)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(read_fd)
            try:
                report = {'result': function()}
            except BaseException as exc:
                report = {'error': '{}: {}'.format(type(exc).__name__, exc),
                          'traceback': traceback.format_exc()}
            data = json.dumps(report).encode('utf-8')
            while data:
                data = data[os.write(write_fd, data):]
            status = 0
        finally:
            os._exit(status)

    os.close(write_fd)
    try:
        data = _read_to_eof(read_fd, timeout)
    finally:
        os.close(read_fd)
    if data is None:
        os.kill(pid, signal.SIGKILL)
    # the pipe is at its end: the child has exited (or was just killed)
    _, status = os.waitpid(pid, 0)
    if data is None:
        raise ChildFailed('the child did not report within {}s'.format(
            timeout))
    if not data:
        raise ChildFailed('the child reported nothing (exit status {})'
                          .format(status))
    report = json.loads(data)
    if 'error' in report:
        raise ChildFailed('the child raised {}\n{}'.format(
            report['error'], report['traceback']))
    assert os.waitstatus_to_exitcode(status) == 0
    return report['result']


def _read_to_eof(fd, timeout):
    """All the pipe carries until its writer closes it; None if that takes
    more than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)


class PidService:
    name = 'fork_pid'

    @rpc
    def pid(self):
        return os.getpid()


def connection_names(connections):
    return sorted(connection['name'] for connection in connections)


def sockets_connected_to(port):
    """How many of this process's TCP sockets are connected to ``port``
    (read from Linux's /proc)."""
    inodes = set()
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/{}'.format(fd))
        except OSError:
            continue  # the directory's own descriptor, gone
        if target.startswith('socket:['):
            inodes.add(target[len('socket:['):-1])
    count = 0
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(':', 1)[1], 16)
                if remote_port == port and fields[9] in inodes:
                    count += 1
    return count


# -- threadko.utils.fork ----------------------------------------------------

class Recording:
    forked_in = None

    def _after_fork_in_child(self):
        self.forked_in = os.getpid()


class Broken:
    def _after_fork_in_child(self):
        raise RuntimeError('broken on purpose')


def test_registered_objects_are_reset_in_child_despite_failing_ones():
    broken, recording = Broken(), Recording()
    fork.register(broken)
    fork.register(recording)

    report = in_child(lambda: [recording.forked_in, os.getpid()])

    forked_in, child_pid = report
    assert forked_in == child_pid != os.getpid()
    assert recording.forked_in is None  # not in the parent


def test_registered_objects_are_held_weakly():
    recording = Recording()
    fork.register(recording)
    ref = weakref.ref(recording)
    del recording
    gc.collect()
    assert ref() is None


def test_sockets_are_closed_in_child_only():
    left, right = socket.socketpair()
    with left, right:
        fork.close_in_child(left)

        def child():
            closed = left.fileno() == -1
            try:
                left.send(b'from the child')
            except OSError:
                return [closed, 'refused']
            return [closed, 'sent']

        assert in_child(child) == [True, 'refused']
        # the parent's socket is open, and nothing came from the child
        left.sendall(b'ping')
        assert right.recv(16) == b'ping'
        right.setblocking(False)
        with pytest.raises(BlockingIOError):
            right.recv(16)


# -- standalone RPC clients ---------------------------------------------------

@pytest.mark.rabbit
def test_cluster_rpc_proxy_started_before_fork_reconnects_in_child(
        rabbit_config, rabbit_manager, runner_factory):
    runner_factory(rabbit_config, PidService).start()
    vhost = rabbit_config['vhost']
    parent = os.getpid()
    client = ClusterRpcProxy(rabbit_config, timeout=CLIENT_TIMEOUT)
    proxy = client.start()
    try:
        assert proxy.fork_pid.pid() == parent
        # the service's consumer connection and the client's
        before = connection_names(
            rabbit_manager.wait_for_connections(vhost, 2))
        broker_port = urlsplit(rabbit_config['AMQP_URI']).port or 5672
        assert sockets_connected_to(broker_port) >= 2

        def child():
            inherited = sockets_connected_to(broker_port)
            started = time.monotonic()
            first = proxy.fork_pid.pid()  # the proxy made before the fork
            elapsed = time.monotonic() - started
            reply = proxy.fork_pid.pid.call_async()
            later = reply.result()
            client.stop()  # the child's own connections
            return {'first': first, 'elapsed': elapsed, 'later': later,
                    'inherited': inherited}

        report = in_child(child)
        assert report['inherited'] == 0  # the child closed its copies
        assert report['first'] == report['later'] == parent
        assert report['elapsed'] < CLIENT_TIMEOUT / 4

        # the parent's connections were not disturbed
        assert proxy.fork_pid.pid() == parent
        assert proxy.fork_pid.pid.call_async().result() == parent
        after = connection_names(
            rabbit_manager.wait_for_connections(vhost, 2))
        assert after == before
    finally:
        client.stop()


@pytest.mark.rabbit
def test_stopping_an_inherited_client_in_child_leaves_the_parent_alone(
        rabbit_config, runner_factory):
    runner_factory(rabbit_config, PidService).start()
    parent = os.getpid()
    client = ClusterRpcProxy(rabbit_config, timeout=CLIENT_TIMEOUT)
    proxy = client.start()
    try:
        assert proxy.fork_pid.pid() == parent

        def child():
            client.stop()  # as an atexit handler in a worker would
            try:
                proxy.fork_pid.pid()
            except RpcClientStopped:
                return 'stopped'
            return 'called'

        assert in_child(child) == 'stopped'
        assert proxy.fork_pid.pid() == parent
    finally:
        client.stop()


@pytest.mark.rabbit
def test_start_in_child_restarts_an_inherited_client(
        rabbit_config, runner_factory):
    runner_factory(rabbit_config, PidService).start()
    parent = os.getpid()
    client = ClusterRpcProxy(rabbit_config, timeout=CLIENT_TIMEOUT)
    old_proxy = client.start()
    try:
        assert old_proxy.fork_pid.pid() == parent

        def child():
            proxy = client.start()  # as a request handler calls it
            result = [proxy.fork_pid.pid(), old_proxy.fork_pid.pid()]
            client.stop()
            return result

        assert in_child(child) == [parent, parent]
        assert old_proxy.fork_pid.pid() == parent
    finally:
        client.stop()


@pytest.mark.rabbit
def test_client_in_child_tries_again_after_a_failed_first_connection(
        rabbit_config, runner_factory):
    runner_factory(rabbit_config, PidService).start()
    parent = os.getpid()
    client = ClusterRpcProxy(rabbit_config, timeout=CLIENT_TIMEOUT)
    proxy = client.start()
    try:
        assert proxy.fork_pid.pid() == parent

        def child():
            config = client.config
            with closed_port() as port:
                client.config = dict(
                    config, TRANSPORT_OPTIONS={'max_retries': 0},
                    AMQP_URI='amqp://guest:guest@127.0.0.1:{}/'.format(port))
                try:
                    proxy.fork_pid.pid()
                except Exception as exc:
                    failed = type(exc).__name__
                else:
                    failed = None
            client.config = config
            result = proxy.fork_pid.pid()
            client.stop()
            return [failed, result]

        failed, result = in_child(child)
        assert failed == 'AMQPConnectionError'
        assert result == parent
        assert proxy.fork_pid.pid() == parent
    finally:
        client.stop()


def test_memory_cluster_rpc_proxy_in_child_reaches_only_child_services(
        memory_config, runner_factory):
    runner_factory(memory_config, PidService).start()
    parent = os.getpid()
    with ClusterRpcProxy(memory_config, timeout=CLIENT_TIMEOUT) as proxy:
        assert proxy.fork_pid.pid() == parent

        def child():
            started = time.monotonic()
            try:
                proxy.fork_pid.pid()
            except UnknownService as exc:
                error = str(exc)
            else:
                error = None
            elapsed = time.monotonic() - started
            # services started in the child are reachable
            runner = ServiceRunner(memory_config)
            runner.add_service(PidService)
            runner.start()
            try:
                own = proxy.fork_pid.pid()
            finally:
                runner.stop()
            return {'error': error, 'elapsed': elapsed, 'own': own,
                    'pid': os.getpid()}

        report = in_child(child)
        assert report['error'] == 'Unknown service `fork_pid`'
        assert report['elapsed'] < CLIENT_TIMEOUT / 4
        assert report['own'] == report['pid'] != parent
        assert proxy.fork_pid.pid() == parent


# -- RpcProxy of a container inherited from the parent --------------------

class Caller:
    name = 'fork_caller'

    other = RpcProxy('fork_pid')

    @rpc
    def relay(self):
        return self.other.pid()


@pytest.mark.parametrize('broker_kind', BROKERS)
def test_rpc_proxy_of_a_parent_container_fails_at_once_in_child(
        request, broker_kind):
    config = request.getfixturevalue(broker_kind + '_config')
    runner_factory = request.getfixturevalue('runner_factory')
    runner = runner_factory(config, PidService, Caller)
    runner.start()
    container = get_container(runner, Caller)
    parent = os.getpid()
    with entrypoint_hook(container, 'relay') as relay:
        assert relay() == parent
    proxy = get_extension(container, RpcProxy).get_dependency(
        SimpleNamespace(context_data={}))

    def child():
        outcomes = []
        for call in (proxy.pid, proxy.pid.call_async):
            started = time.monotonic()
            try:
                call()
            except ForkedClientError as exc:
                outcomes.append(
                    [exc.pid, str(exc), time.monotonic() - started])
        return outcomes

    outcomes = in_child(child)
    assert len(outcomes) == 2
    for pid, message, elapsed in outcomes:
        assert pid == parent
        assert 'started in process {}'.format(parent) in message
        assert 'post_fork' in message
        assert elapsed < 1
    with entrypoint_hook(container, 'relay') as relay:
        assert relay() == parent


# -- event dispatchers ------------------------------------------------------

@pytest.mark.rabbit
def test_event_dispatcher_used_before_fork_dispatches_from_child(
        rabbit_config, runner_factory):
    received = Received()

    class Listener:
        name = 'fork_listener'

        @event_handler('fork_source', 'hello')
        def hello(self, payload):
            received.add(payload)

    runner_factory(rabbit_config, Listener).start()
    dispatch = event_dispatcher(rabbit_config)
    try:
        dispatch('fork_source', 'hello', 'from the parent')
        received.wait_for('from the parent')

        def child():
            dispatch('fork_source', 'hello', 'from {}'.format(os.getpid()))
            dispatch.close()  # the child's own connection
            return os.getpid()

        child_pid = in_child(child)
        received.wait_for('from {}'.format(child_pid))
        dispatch('fork_source', 'hello', 'from the parent again')
        received.wait_for('from the parent again')
    finally:
        dispatch.close()


# -- ServiceApp ---------------------------------------------------------------

class PidApp:
    name = 'fork_app'

    @http('GET', '/pid')
    def pid(self, request):
        return str(os.getpid())

    @rpc
    def rpc_pid(self):
        return os.getpid()


def get_text(app, path):
    return Client(app).get(path).get_data(as_text=True)


@pytest.mark.parametrize('broker_kind', BROKERS)
def test_service_app_started_before_fork_serves_from_fresh_services_in_child(
        request, broker_kind):
    config = request.getfixturevalue(broker_kind + '_config')
    app = ServiceApp([PidApp], config)
    app.start()
    try:
        assert get_text(app, '/pid') == str(os.getpid())
        inherited = app.runner

        def child():
            served_by = int(get_text(app, '/pid'))
            fresh = app.runner is not inherited and app.started
            app.stop()  # the child's services
            return {'pid': os.getpid(), 'served_by': served_by,
                    'fresh': fresh, 'stopped': not app.started}

        report = in_child(child)
        assert report['served_by'] == report['pid'] != os.getpid()
        assert report['fresh'] and report['stopped']
        # the parent's services serve on
        assert app.runner is inherited
        assert get_text(app, '/pid') == str(os.getpid())
    finally:
        app.stop()


def test_stopping_an_inherited_service_app_in_child_only_forgets_it(
        memory_config):
    app = ServiceApp([PidApp], memory_config)
    app.start()
    try:
        inherited = app.runner

        def child():
            app.stop()  # as its atexit handler does when a worker exits
            return [app.started, app.runner is inherited]

        assert in_child(child) == [False, False]
        assert app.started and app.runner is inherited
        assert get_text(app, '/pid') == str(os.getpid())
    finally:
        app.stop()


# -- gunicorn --preload -----------------------------------------------------

GUNICORN_APP = '''\
import json
import os

from flask import Flask, jsonify

from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

config = json.loads(os.environ["THREADKO_FORK_TEST_CONFIG"])

# made and started at import, so in gunicorn's master (--preload)
rpc_client = ClusterRpcProxy(config, timeout=30)
rpc = rpc_client.start()
dispatch = event_dispatcher(config)
dispatch("fork_frontend", "greeting",
         {"pid": os.getpid(), "ping": rpc.fork_backend.ping()})

app = Flask(__name__)


@app.route("/meet")
def meet():
    return jsonify(worker=os.getpid(), met=rpc.fork_backend.meet(os.getpid()))


@app.route("/event")
def event():
    dispatch("fork_frontend", "greeting", {"pid": os.getpid(), "ping": None})
    return jsonify(worker=os.getpid())
'''

BARRIER_WAIT = 20  # seconds the two requests have to meet


def get_json(port, path):
    connection = http_client.HTTPConnection(
        '127.0.0.1', port, timeout=BARRIER_WAIT + 10)
    try:
        connection.request('GET', path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    return json.loads(body)


@pytest.mark.rabbit
@pytest.mark.slow
def test_flask_app_under_gunicorn_preload_calls_services_from_two_workers(
        rabbit_config, runner_factory, tmp_path):
    # a gunicorn sync worker serves one request at a time, so the two
    # requests can only meet at the barrier if two workers serve them
    barrier = threading.Barrier(2, timeout=BARRIER_WAIT)
    greetings = Received()

    class Backend:
        name = 'fork_backend'

        @rpc
        def ping(self):
            return 'pong'

        @rpc
        def meet(self, worker):
            barrier.wait()
            return worker

        @event_handler('fork_frontend', 'greeting')
        def greeting(self, payload):
            greetings.add(payload)

    runner_factory(rabbit_config, Backend).start()
    (tmp_path / 'app.py').write_text(GUNICORN_APP)
    port = find_free_port()
    env = child_env(THREADKO_FORK_TEST_CONFIG=json.dumps(
        {'AMQP_URI': rabbit_config['AMQP_URI']}))
    server = ChildProcess(
        [sys.executable, '-m', 'gunicorn', '--preload', '-w', '2',
         '-b', '127.0.0.1:{}'.format(port), '--graceful-timeout', '5',
         'app:app'],
        cwd=str(tmp_path), env=env, stream='both', timeout=BROKER_WAIT * 2)
    try:
        master = server.proc.pid
        greetings.wait_for({'pid': master, 'ping': 'pong'})
        server.wait_for_line('Listening at')

        try:
            with ThreadPoolExecutor(2) as requests:
                replies = [requests.submit(get_json, port, '/meet')
                           for _ in range(2)]
                results = [reply.result() for reply in replies]
        finally:
            barrier.abort()  # a worker still waiting gives up
        workers = {result['worker'] for result in results}
        assert len(workers) == 2, (results, server.output)
        assert master not in workers
        assert all(result['met'] == result['worker'] for result in results)

        worker = get_json(port, '/event')['worker']
        assert worker in workers
        greetings.wait_for({'pid': worker, 'ping': None})

        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.output
    finally:
        server.close()
