import sys
import threading

import pytest

from support import WAIT, Recorder, RecordingProvider, entrypoint_for, fire

from threadko import config as global_config
from threadko.extensions import Extension, DependencyProvider
from threadko.runners import ServiceRunner, run_services


def make_service(name, record):
    class Svc:
        dep = RecordingProvider(record)

        @fire
        def method(self):
            return name

    Svc.name = name
    Svc.__name__ = name
    return Svc


@pytest.fixture
def runners():
    made = []

    def make(config=None):
        runner = ServiceRunner({} if config is None else config)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.kill()


def test_add_service_creates_containers_by_name(runners):
    record = Recorder()
    runner = runners()
    foo, bar = make_service('foo', record), make_service('bar', record)
    runner.add_service(foo)
    runner.add_service(bar)
    assert set(runner.service_names) == {'foo', 'bar'}
    assert {c.service_cls for c in runner.containers} == {foo, bar}


def test_adding_a_class_with_the_same_name_replaces_the_container(runners):
    record = Recorder()
    runner = runners()
    first, second = make_service('foo', record), make_service('foo', record)
    runner.add_service(first)
    runner.add_service(second)
    (container,) = runner.containers
    assert container.service_cls is second


def test_add_service_surfaces_construction_errors_at_once(runners):
    class Nameless:
        pass

    from threadko.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError):
        runners().add_service(Nameless)


def test_start_and_stop_every_container(runners):
    record = Recorder()
    runner = runners()
    for name in ('foo', 'bar'):
        runner.add_service(make_service(name, record))
    runner.start()
    assert all(c.started for c in runner.containers)
    for container in runner.containers:
        handle = entrypoint_for(container, 'method').fire()
        assert handle.result() == container.service_name
    runner.stop()
    assert not any(c.started for c in runner.containers)
    assert record.events.count(('stop', 'dep')) == 2
    runner.wait()  # returns: everything stopped cleanly


def test_runner_starts_containers_concurrently(runners):
    # each container's setup waits for the other's: only a concurrent
    # start can get through
    barrier = threading.Barrier(2, timeout=WAIT)

    class Rendezvous(Extension):
        def setup(self):
            barrier.wait()

    class Provider(DependencyProvider):
        rendezvous = Rendezvous()

    runner = runners()
    for name in ('foo', 'bar'):
        runner.add_service(type(name, (), {'name': name, 'dep': Provider()}))
    runner.start()
    runner.stop()


def test_wait_reraises_the_first_error_and_stops_the_others(runners):
    record = Recorder()
    runner = runners()
    healthy = make_service('healthy', record)
    doomed = make_service('doomed', Recorder())
    runner.add_service(healthy)
    runner.add_service(doomed)
    runner.start()

    errors = []

    def wait():
        try:
            runner.wait()
        except Exception as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait, name='test-runner-wait')
    waiter.start()
    doomed_container = next(
        c for c in runner.containers if c.service_name == 'doomed')
    try:
        raise LookupError('doomed died')
    except LookupError:
        doomed_container.kill(sys.exc_info())
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert [str(e) for e in errors] == ['doomed died']
    assert ('stop', 'dep') in record.events  # healthy was stopped


def test_kill_kills_every_container(runners):
    record = Recorder()
    runner = runners()
    runner.add_service(make_service('foo', record))
    runner.add_service(make_service('bar', record))
    runner.start()
    runner.kill()
    assert record.events.count(('kill', 'dep')) == 2
    runner.wait()


def test_run_services_nameko_2_signature_stops_on_exit():
    record = Recorder()
    with run_services({'max_workers': 2}, make_service('foo', record)) as r:
        (container,) = r.containers
        assert container.started
        assert container.max_workers == 2
    assert ('stop', 'dep') in record.events
    assert not container.started


def test_run_services_nameko_3_signature_uses_global_config():
    record = Recorder()
    with global_config.patch({'max_workers': 3}):
        with run_services(make_service('foo', record)) as runner:
            (container,) = runner.containers
            assert container.config is global_config
            assert container.max_workers == 3


def test_run_services_kill_on_exit():
    record = Recorder()
    with run_services({}, make_service('foo', record), kill_on_exit=True):
        pass
    assert ('kill', 'dep') in record.events
    assert ('stop', 'dep') not in record.events
