"""``threadko run`` answers SIGTERM and SIGINT in every lifecycle state: while
the services start (waiting for a broker that is not up, an extension slow to
start), while they run, while they reconnect and while they stop; and a start
that cannot succeed (a refused declaration, a taken web port, a start
timeout) ends the process instead of leaving it hanging.

The matrix, on real ``threadko run`` processes (see docs/reliability.md):
each state x {SIGTERM, SIGINT, a second signal}, asserting the exit status
and that the process is gone within a few seconds. The first signal is a
graceful stop (status 0), also during start-up; a second one, sent once the
process said it is stopping, kills (status 130). Where a graceful stop takes
no time (nothing is running yet), the second signal may arrive after the
process has already stopped, so 0 is accepted there too.
"""

import signal
import socket
import sys

import pika
import pytest

from support import ChildProcess, child_env, closed_port

GONE_WITHIN = 5  # seconds from the last signal to the process being gone
NOT_RUNNING_YET = 'Error connecting to broker'

SERVICES = '''
import os
import threading

from threadko.amqp.entities import Queue
from threadko.events import EventDispatcher
from threadko.extensions import DependencyProvider, Extension
from threadko.messaging import consume
from threadko.rpc import rpc
from threadko.timer import timer
from threadko.web.handlers import http


def announce(text):
    os.write(2, (text + '\\n').encode())  # one write: lines never interleave


class Plain:
    name = 'plain'

    @rpc
    def ping(self):
        return 'pong'


class SlowToStart(Extension):
    """start() blocks until stopped, killed or (unless the config says
    IGNORE_INTERRUPT) interrupted."""

    def __init__(self):
        self.released = threading.Event()

    def start(self):
        announce('slow start begins')
        self.released.wait()

    def interrupt_start(self):
        if not self.container.config.get('IGNORE_INTERRUPT'):
            self.released.set()

    def stop(self):
        self.released.set()

    def kill(self):
        self.released.set()


class SlowProvider(DependencyProvider):
    slow = SlowToStart()

    def get_dependency(self, worker_ctx):
        return None


class Slow:
    name = 'slow'
    dep = SlowProvider()


class Dispatching:
    """Declares its event exchange at setup, retrying for a long time."""
    name = 'dispatching'
    dispatch = EventDispatcher(retry_policy={'max_retries': 1000})


class Busy:
    """Its timer's first worker runs until the process is killed."""
    name = 'busy'

    @timer(interval=3600, eager=True)
    def forever(self):
        announce('worker running')
        threading.Event().wait()


class Refused:
    name = 'refused'

    @consume(Queue('lifecycle-jobs', queue_arguments={'x-max-length': 5}))
    def job(self, body):
        pass


class Web:
    name = 'web'

    @http('GET', '/')
    def index(self, request):
        return 'ok'
'''

VARIANTS = {
    'SIGTERM': (signal.SIGTERM,),
    'SIGINT': (signal.SIGINT,),
    'second signal': (signal.SIGTERM, signal.SIGINT),
}


def stop_with(process, variant):
    """Send the variant's signals: the second only once the process said it
    is stopping gracefully. Return the exit status."""
    first, *more = VARIANTS[variant]
    process.send_signal(first)
    process.wait_for_line('stopping services gracefully')
    for signum in more:
        process.send_signal(signum)  # does nothing if it has exited
    return process.wait(GONE_WITHIN)


def expected(variant, stop_is_slow):
    if variant != 'second signal':
        return {0}
    return {130} if stop_is_slow else {0, 130}


@pytest.fixture
def unreachable_uri():
    with closed_port() as port:
        yield 'amqp://guest:guest@127.0.0.1:{}/'.format(port)


@pytest.fixture
def run(service_process):
    """``run(target, config=None, args=())``: a ``threadko run`` process of
    one or more ``services:Class`` targets, not waited for."""
    def start(*targets, config=None, args=()):
        return service_process(
            SERVICES, targets[0], config=config,
            args=(*args, *targets[1:]), wait=False)
    return start


# -- while starting -----------------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_waiting_for_a_broker_on_a_closed_port(run, unreachable_uri, variant):
    process = run('services:Plain', config={'AMQP_URI': unreachable_uri})
    process.wait_for_line(NOT_RUNNING_YET)

    assert stop_with(process, variant) in expected(variant, False)
    assert 'during start-up' in process.output
    assert 'running services' not in process.output


@pytest.mark.parametrize('variant', VARIANTS)
def test_a_declaration_retrying_at_setup(run, unreachable_uri, variant):
    process = run('services:Dispatching', config={'AMQP_URI': unreachable_uri})
    process.wait_for_line('Error publishing to broker')

    assert stop_with(process, variant) in expected(variant, False)
    assert 'during start-up' in process.output


@pytest.mark.parametrize('variant', VARIANTS)
def test_an_extension_slow_to_start(run, variant):
    process = run('services:Slow', config={'AMQP_URI': 'memory://'})
    process.wait_for_line('slow start begins')

    assert stop_with(process, variant) in expected(variant, False)
    assert 'during start-up' in process.output


@pytest.mark.parametrize('variant', VARIANTS)
def test_an_extension_that_ignores_the_interrupt_of_its_start(run, variant):
    # the graceful stop waits THREAD_JOIN_TIMEOUT for the start, then goes
    # on without it; a second signal meanwhile kills
    process = run('services:Slow', config={
        'AMQP_URI': 'memory://', 'IGNORE_INTERRUPT': True,
        'THREAD_JOIN_TIMEOUT': 2})
    process.wait_for_line('slow start begins')

    assert stop_with(process, variant) in expected(variant, True)
    if variant != 'second signal':
        assert 'still starting' in process.output


def test_a_refused_declaration_ends_the_start_of_every_service(
        run, rabbit_config):
    # the queue exists with other arguments: RabbitMQ refuses (406)
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        connection.channel().queue_declare(
            'lifecycle-jobs', durable=True, arguments={'x-max-length': 10})
    finally:
        connection.close()

    # Slow's start would block forever: the refusal interrupts it
    process = run('services:Refused', 'services:Slow')
    assert process.wait(GONE_WITHIN + 5) == 1
    assert 'refused a declaration for service refused' in process.output
    assert 'PRECONDITION_FAILED' in process.output
    assert 'Traceback' not in process.output


def test_a_taken_web_port_ends_the_start_of_every_service(
        run, unreachable_uri):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Plain would wait for the unreachable broker forever
        process = run('services:Web', 'services:Plain', config={
            'AMQP_URI': unreachable_uri,
            'WEB_SERVER_ADDRESS': '127.0.0.1:{}'.format(port)})
        assert process.wait(GONE_WITHIN) == 1
    assert 'the address is already in use' in process.output
    assert 'Traceback' not in process.output


def test_services_not_started_within_the_start_timeout(run, unreachable_uri):
    process = run('services:Plain', config={'AMQP_URI': unreachable_uri},
                  args=('--start-timeout', '1'))
    assert process.wait(GONE_WITHIN) == 1
    assert 'services not started after 1.0s (START_TIMEOUT' in process.output


# -- running and stopping -----------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_running(run, variant):
    process = run('services:Plain', config={'AMQP_URI': 'memory://'})
    process.wait_for_line('running services')

    assert stop_with(process, variant) in expected(variant, False)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stopping_while_a_worker_runs(run, signum):
    # the graceful stop waits for the worker, which never ends: a signal
    # while stopping kills (so does the grace period: test_process_faults)
    process = run('services:Busy', config={'AMQP_URI': 'memory://'},
                  args=('--grace-period', '30'))
    process.wait_for_line('worker running')
    process.send_signal(signal.SIGTERM)
    process.wait_for_line('stopping services gracefully')
    assert process.proc.poll() is None  # waiting for the worker

    process.send_signal(signum)
    assert process.wait(GONE_WITHIN) == 130
    assert 'received again: killing services' in process.output


# -- while RabbitMQ is stopped ------------------------------------------------

@pytest.mark.timeout(180)
def test_while_rabbitmq_is_stopped_starting_and_reconnecting_processes_stop(
        run, rabbitmqctl):
    # three processes running before the outage (they reconnect), three
    # started during it (they wait for their first connection): one of each
    # per variant, all in one outage
    reconnecting = {variant: run('services:Plain') for variant in VARIANTS}
    for process in reconnecting.values():
        process.wait_for_line('running services')

    rabbitmqctl.stop_app()
    starting = {variant: run('services:Plain') for variant in VARIANTS}
    for process in [*reconnecting.values(), *starting.values()]:
        process.wait_for_line(NOT_RUNNING_YET, timeout=30)

    for variant, process in reconnecting.items():
        assert stop_with(process, variant) in expected(variant, False), (
            process.output)
        assert 'Lost connection to broker' in process.output
        assert 'during start-up' not in process.output
    for variant, process in starting.items():
        assert stop_with(process, variant) in expected(variant, False), (
            process.output)
        assert 'during start-up' in process.output


# -- standalone clients in a script -------------------------------------------

CLIENT_SCRIPT = '''
import sys

from threadko.rpc import rpc
from threadko.runners import run_services
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy, ServiceRpcProxy


class Plain:
    name = 'plain'

    @rpc
    def ping(self):
        return 'pong'


kind, uri = sys.argv[1:]
config = {'AMQP_URI': uri, 'TRANSPORT_OPTIONS': {'max_retries': None}}
if kind == 'ClusterRpcProxy':
    ClusterRpcProxy(config).start()
elif kind == 'ServiceRpcProxy':
    ServiceRpcProxy('other', config).start()
elif kind == 'run_services':
    with run_services(config, Plain):
        pass
else:
    dispatch = event_dispatcher(config, retry_policy={'max_retries': None})
    dispatch('source', 'happened', {})
'''


@pytest.mark.parametrize('kind, waiting', [
    ('ClusterRpcProxy', 'Error connecting to broker'),
    ('ServiceRpcProxy', 'Error connecting to broker'),
    ('event_dispatcher', 'Error publishing to broker'),
    ('run_services', 'Error connecting to broker'),
])
def test_ctrl_c_ends_a_script_waiting_for_the_broker(
        tmp_path, unreachable_uri, kind, waiting):
    script = tmp_path / 'client.py'
    script.write_text(CLIENT_SCRIPT)
    process = ChildProcess(
        [sys.executable, str(script), kind, unreachable_uri],
        str(tmp_path), child_env())
    try:
        process.wait_for_line(waiting)
        process.send_signal(signal.SIGINT)
        # Python ends a script on an uncaught KeyboardInterrupt by dying
        # of SIGINT itself
        assert process.wait(GONE_WITHIN) == -signal.SIGINT
    finally:
        process.close()
    assert process.output.splitlines()[-1] == 'KeyboardInterrupt'
