"""Stopping or killing from another thread while a container, a runner, a
``ServiceApp`` or a standalone client is still starting: the start is interrupted, the stop
returns promptly, and no thread is left behind.

The broker these tests cannot reach is a loopback port that refuses
connections, so the consumer retries forever and a publisher's declaration
retries per its policy, as they would while RabbitMQ is down."""

import threading
import time

import pytest

from support import WAIT, LogWatcher, Recorder, closed_port, fire

from threadko.containers import ServiceContainer
from threadko.events import EventDispatcher
from threadko.exceptions import ConfigurationError, RpcClientStopped
from threadko.extensions import DependencyProvider, Extension
from threadko.rpc import rpc
from threadko.runners import ServiceRunner
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.web.wsgi import ServiceApp

# a stop that interrupts a start returns well within this; the retries it
# interrupts would take longer (the consumer's forever)
PROMPTLY = 3.0


@pytest.fixture
def unreachable_config():
    with closed_port() as port:
        yield {
            'AMQP_URI': 'amqp://guest:guest@127.0.0.1:{}/'.format(port),
            'TRANSPORT_OPTIONS': {'interval_start': 0.2, 'interval_step': 0,
                                  'interval_max': 0.2},
            'WEB_SERVER_ADDRESS': None,
        }


class Consuming:
    name = 'consuming'

    @rpc
    def method(self):
        pass  # pragma: no cover (never reached: no broker)


class Dispatching:
    name = 'dispatching'

    dispatch = EventDispatcher(retry_policy={'max_retries': 100})

    @fire
    def method(self):
        pass  # pragma: no cover


class Starter:
    """Runs ``target.start()`` on a thread; ``error`` is what it raised."""

    def __init__(self, target):
        self.target = target
        self.error = None
        self.thread = threading.Thread(
            target=self._run, name='test-starter', daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.target.start()
        except Exception as exc:
            self.error = exc

    def join(self, timeout=WAIT):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'start() never returned'


def start_until_logged(target, text):
    """A :class:`Starter` of ``target``, once threadko logged ``text``
    (that it waits for the broker, say)."""
    with LogWatcher(text) as logged:
        starter = Starter(target)
        logged.wait()
    return starter


def threadko_threads():
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith('threadko-'))


def timed(fn):
    began = time.monotonic()
    fn()
    return time.monotonic() - began


@pytest.fixture
def container(unreachable_config):
    made = []

    def make(service_cls, **config):
        made.append(ServiceContainer(
            service_cls, dict(unreachable_config, **config)))
        return made[-1]

    yield make
    for each in made:
        each.kill()


# -- containers ---------------------------------------------------------------

@pytest.mark.parametrize('how', ['stop', 'kill'])
def test_a_container_waiting_for_the_broker_stops_at_once(container, how):
    service = container(Consuming)
    starter = start_until_logged(service, 'Error connecting to broker')

    assert timed(getattr(service, how)) < PROMPTLY
    starter.join()
    assert starter.error is None  # a stop is not a failure to start
    assert not service.started
    assert threadko_threads() == []
    service.wait()  # it has stopped


def test_a_stop_interrupts_a_declaration_retrying_at_setup(container):
    # EventDispatcher declares its exchange in setup(); with the broker
    # away it retries per its retry policy (here 100 times)
    service = container(Dispatching)
    starter = start_until_logged(service, 'Error publishing to broker')

    assert timed(service.stop) < PROMPTLY
    starter.join()
    assert starter.error is None
    assert threadko_threads() == []


class SlowToStart(Extension):
    """``start()`` waits until released or interrupted."""

    def __init__(self, record, honours_interrupt=True):
        self.record = record
        self.honours_interrupt = honours_interrupt
        self.released = threading.Event()

    def start(self):
        self.record('start begins')
        if not self.released.wait(WAIT):
            self.record('start timed out')
        self.record('start returns')

    def interrupt_start(self):
        self.record('interrupt_start')
        if self.honours_interrupt:
            self.released.set()

    def stop(self):
        self.record('stop')
        self.released.set()

    def kill(self):
        self.record('kill')
        self.released.set()


class SlowProvider(DependencyProvider):
    def __init__(self, record, honours_interrupt=True):
        self.record = record
        self.slow = SlowToStart(record, honours_interrupt)

    def get_dependency(self, worker_ctx):
        return None  # pragma: no cover


def slow_service(record, honours_interrupt=True):
    class Slow:
        name = 'slow'
        dep = SlowProvider(record, honours_interrupt)

        @fire
        def method(self):
            pass  # pragma: no cover

    return Slow


def test_stop_runs_only_after_the_interrupted_start_returned(container):
    record = Recorder()
    service = container(slow_service(record))
    starter = Starter(service)
    record.wait_for('start begins')

    assert timed(service.stop) < PROMPTLY
    starter.join()
    assert record.events == [
        'start begins', 'interrupt_start', 'start returns', 'stop']
    assert threadko_threads() == []


def test_a_start_that_ignores_the_interrupt_holds_stop_for_the_join_timeout(
        container):
    record = Recorder()
    service = container(slow_service(record, honours_interrupt=False),
                        THREAD_JOIN_TIMEOUT=0.5)
    starter = Starter(service)
    record.wait_for('start begins')

    with LogWatcher('still starting') as warned:
        took = timed(service.stop)
    warned.wait(0)
    assert 0.5 <= took < PROMPTLY
    # stop() went on without it, and its stop() released the start
    starter.join()
    assert record.events[:3] == ['start begins', 'interrupt_start', 'stop']
    assert threadko_threads() == []


class Broken(Extension):
    def start(self):
        raise ConfigurationError('cannot start this')


class BrokenProvider(DependencyProvider):
    broken = Broken()


class ConsumingAndBroken(Consuming):
    broken = BrokenProvider()


class BrokenAlone:
    name = 'broken'
    broken = BrokenProvider()

    @fire
    def method(self):
        pass  # pragma: no cover


def test_a_hook_that_fails_interrupts_the_others_and_start_raises(container):
    service = container(ConsumingAndBroken)
    # without the interrupt the consumer would wait for the broker forever
    starter = Starter(service)
    starter.join(PROMPTLY)
    assert isinstance(starter.error, ConfigurationError)
    service.kill()
    assert threadko_threads() == []


def test_a_container_stopped_before_it_started_never_starts(container):
    record = Recorder()
    service = container(slow_service(record))
    service.stop()
    service.start()
    assert 'start begins' not in record.events
    assert not service.started
    assert threadko_threads() == []


# -- runners ------------------------------------------------------------------

@pytest.fixture
def runner(unreachable_config):
    made = ServiceRunner(unreachable_config)
    yield made
    made.kill()


@pytest.mark.parametrize('how', ['stop', 'kill'])
def test_a_runner_stops_every_container_that_waits_for_the_broker(
        runner, how):
    record = Recorder()
    runner.add_service(Consuming)
    runner.add_service(Dispatching)
    runner.add_service(slow_service(record))
    starter = start_until_logged(runner, 'Error connecting to broker')
    record.wait_for('start begins')

    assert timed(getattr(runner, how)) < PROMPTLY
    starter.join()
    assert starter.error is None
    assert threadko_threads() == []


def test_a_container_that_fails_to_start_ends_the_runners_start(runner):
    runner.add_service(Consuming)  # would wait for the broker forever
    runner.add_service(BrokenAlone)

    starter = Starter(runner)
    starter.join(PROMPTLY)
    assert isinstance(starter.error, ConfigurationError)
    # the failed start killed every container
    assert not any(each.started for each in runner.containers)
    assert threadko_threads() == []


# -- standalone clients -------------------------------------------------------

def test_stopping_an_rpc_client_that_connects_ends_its_start(
        unreachable_config):
    config = dict(unreachable_config,
                  TRANSPORT_OPTIONS={'max_retries': None,
                                     'interval_start': 0.2})
    client = ClusterRpcProxy(config)
    starter = start_until_logged(client, 'Error connecting to broker')

    assert timed(client.stop) < PROMPTLY
    starter.join()
    assert isinstance(starter.error, RpcClientStopped)
    assert threadko_threads() == []


def test_stopping_a_service_app_that_waits_for_the_broker(
        unreachable_config):
    app = ServiceApp([Consuming], unreachable_config)
    starter = start_until_logged(app, 'Error connecting to broker')

    assert timed(app.stop) < PROMPTLY
    starter.join()
    assert starter.error is None
    assert not app.started
    assert threadko_threads() == []
