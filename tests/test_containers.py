import contextvars
import logging
import threading
from concurrent.futures import Future

import pytest

from support import (
    WAIT, Fire, Received, Recorder, RecordingProvider, entrypoint_for, fire,
)

from threadko import config as global_config
from threadko.containers import (
    ServiceContainer, WorkerContext, get_container_cls, get_service_name,
)
from threadko.contextdata import Language, UserId
from threadko.dependency_providers import Config
from threadko.exceptions import ConfigurationError, ContainerBeingKilled
from threadko.extensions import DependencyProvider, Extension


def threadko_threads(container):
    prefix = 'threadko-'
    return [
        t for t in threading.enumerate()
        if t.name.startswith(prefix) and container.service_name in t.name]


# -- construction ---------------------------------------------------------

def test_service_class_needs_a_string_name():
    class Nameless:
        pass

    class BadName:
        name = 42

    with pytest.raises(ConfigurationError, match='must define a `name`'):
        get_service_name(Nameless)
    with pytest.raises(ConfigurationError, match='must be a string'):
        ServiceContainer(BadName, {})


@pytest.mark.parametrize('config, expected', [
    ({}, 10), ({'max_workers': None}, 10), ({'max_workers': 0}, 10),
    ({'max_workers': 3}, 3),
])
def test_max_workers_from_config(config, expected):
    class Svc:
        name = 'svc'

    assert ServiceContainer(Svc, config).max_workers == expected


def test_container_without_config_reads_the_global_config():
    class Svc:
        name = 'svc'

    with global_config.patch({'max_workers': 4}):
        container = ServiceContainer(Svc)
    assert container.config is global_config
    assert container.max_workers == 4


def test_unknown_serializer_is_a_configuration_error():
    class Svc:
        name = 'svc'

    with pytest.raises(ConfigurationError, match='register a serializer'):
        ServiceContainer(Svc, {'serializer': 'nope'})


def test_get_container_cls_honours_service_container_cls():
    assert get_container_cls({}) is ServiceContainer
    path = '{}.CustomContainer'.format(__name__)
    assert get_container_cls({'SERVICE_CONTAINER_CLS': path}) is \
        CustomContainer


class CustomContainer(ServiceContainer):
    pass


# -- start / stop ordering -----------------------------------------------

class OrderedEntrypoint(Fire):
    def __init__(self, record, **kwargs):
        self.record = record
        super().__init__(**kwargs)

    def setup(self):
        self.record('setup', 'entrypoint')

    def start(self):
        self.record('start', 'entrypoint')

    def stop(self):
        self.record('stop', 'entrypoint')

    def kill(self):
        self.record('kill', 'entrypoint')


class OrderedSub(Extension):
    def __init__(self, record):
        self.record = record

    def setup(self):
        self.record('setup', 'sub')

    def start(self):
        self.record('start', 'sub')

    def stop(self):
        self.record('stop', 'sub')

    def kill(self):
        self.record('kill', 'sub')


def make_ordered_service(record):
    class WithSub(RecordingProvider):
        sub = OrderedSub(record)

    class Svc:
        name = 'ordered'
        dep = WithSub(record)

        @OrderedEntrypoint.decorator(record)
        def method(self, gate=None):
            record('method', threading.get_ident())
            if gate is not None:
                assert gate.wait(WAIT)
            return 'done'

    return Svc


def test_every_setup_runs_before_any_start(containers):
    record = Recorder()
    container = containers(make_ordered_service(record))
    container.start()

    phases = [e[0] for e in record.events]
    assert sorted(phases[:3]) == ['setup'] * 3
    assert sorted(phases[3:]) == ['start'] * 3
    assert container.started


def test_failing_setup_is_reraised_and_no_start_hook_runs(containers):
    record = Recorder()

    class Broken(Extension):
        def setup(self):
            raise ValueError('cannot set up')

    class BrokenProvider(RecordingProvider):
        broken = Broken()

    class Svc:
        name = 'svc'
        dep = BrokenProvider(record)

    container = containers(Svc)
    with pytest.raises(ValueError, match='cannot set up'):
        container.start()
    assert ('setup', 'dep') in record.events
    assert not any(e[0] == 'start' for e in record.events)


def test_stop_order_entrypoints_workers_dependencies_subextensions(
        containers):
    record = Recorder()
    container = containers(make_ordered_service(record))
    container.start()
    gate = threading.Event()
    handle = entrypoint_for(container, 'method').fire(gate)
    record.wait_for_kind('method')

    stopper = threading.Thread(
        target=container.stop, name='test-stopper')
    stopper.start()
    record.wait_for(('stop', 'entrypoint'))
    # the running worker holds the rest of the shutdown
    assert not any(
        e in record.events for e in [('stop', 'dep'), ('stop', 'sub')])
    gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert handle.result() == 'done'

    stops = [e for e in record.events if e[0] == 'stop']
    assert stops == [('stop', 'entrypoint'), ('stop', 'dep'), ('stop', 'sub')]
    assert record.index_of_kind('worker_teardown') < record.events.index(
        ('stop', 'dep'))
    assert not container.started


def test_no_container_thread_is_alive_after_stop(containers):
    class Looper(Extension):
        def start(self):
            self.stopping = threading.Event()
            self.container.spawn_managed_thread(self.loop)

        def loop(self):
            self.stopping.wait()

        def stop(self):
            self.stopping.set()

    class LoopingProvider(DependencyProvider):
        looper = Looper()

    class Svc:
        name = 'threads_svc'
        dep = LoopingProvider()

        @fire
        def method(self):
            return threading.current_thread().name

    container = containers(Svc, {'max_workers': 3})
    container.start()
    handles = [entrypoint_for(container, 'method').fire() for _ in range(6)]
    names = {h.result() for h in handles}
    assert all(n.startswith('threadko-worker-threads_svc') for n in names)
    assert threadko_threads(container)

    container.stop()
    assert threadko_threads(container) == []
    assert container.wait() is None


def test_stop_is_idempotent(containers):
    record = Recorder()
    container = containers(make_ordered_service(record))
    container.start()
    container.stop()
    container.stop()
    assert [e for e in record.events if e[0] == 'stop'].count(
        ('stop', 'dep')) == 1


def test_stop_logs_managed_threads_that_do_not_end(containers, caplog):
    release = threading.Event()

    class Stubborn(Extension):
        def start(self):
            self.container.spawn_managed_thread(
                lambda: release.wait(WAIT), identifier='stubborn')

    class Provider(DependencyProvider):
        stubborn = Stubborn()

    class Svc:
        name = 'svc'
        dep = Provider()

    container = containers(Svc, {'THREAD_JOIN_TIMEOUT': 0.05})
    container.start()
    try:
        with caplog.at_level(logging.WARNING):
            container.stop()
        assert 'still running' in caplog.text
        assert 'stubborn' in caplog.text
    finally:
        release.set()


# -- worker lifecycle ----------------------------------------------------

def test_worker_lifecycle_order_on_one_thread(containers):
    record = Recorder()
    container = containers(make_ordered_service(record))
    container.start()
    handle = entrypoint_for(container, 'method').fire()
    assert handle.result() == 'done'
    container.stop()

    worker_events = [
        e for e in record.events
        if e[0] in ('get_dependency', 'worker_setup', 'method',
                    'worker_result', 'worker_teardown')]
    assert [e[0] for e in worker_events] == [
        'get_dependency', 'worker_setup', 'method', 'worker_result',
        'worker_teardown']
    # one thread, and not the caller's
    thread_ids = {e[1] for e in worker_events}
    assert len(thread_ids) == 1
    assert thread_ids != {threading.get_ident()}


def test_handle_result_runs_after_the_method_and_before_worker_result(
        containers):
    record = Recorder()

    class Svc:
        name = 'svc'
        dep = RecordingProvider(record)

        @fire
        def method(self):
            record('method')
            return 1

    container = containers(Svc)
    container.start()

    def handle_result(worker_ctx, result, exc_info):
        record('handle_result')
        return result * 10, exc_info

    container.spawn_worker(
        entrypoint_for(container, 'method'), (), {},
        handle_result=handle_result)
    container.stop()  # waits for the worker

    order = [e for e in record.events
             if e in ('method', 'handle_result')
             or (isinstance(e, tuple) and e[0] == 'worker_result')]
    assert order[:2] == ['method', 'handle_result']
    assert order[2][0] == 'worker_result'
    # dependencies see what handle_result returned
    assert ('worker_result_args', 10, None) in record.events


def test_worker_result_receives_exc_info_and_the_container_lives_on(
        containers, caplog):
    record = Recorder()

    class Svc:
        name = 'svc'
        dep = RecordingProvider(record)

        @fire
        def method(self):
            raise ValueError('boom')

    container = containers(Svc)
    container.start()
    with caplog.at_level(logging.ERROR):
        handle = entrypoint_for(container, 'method').fire()
        with pytest.raises(ValueError, match='boom'):
            handle.result()
    record.wait_for(('worker_result_args', None, ValueError))
    assert 'error handling worker' in caplog.text

    # still serving
    assert entrypoint_for(container, 'method').fire().done.wait(WAIT)
    container.stop()
    assert container.wait() is None


def test_an_exception_whose_str_fails_is_still_logged(containers, caplog):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError('no str for you')

    class Svc:
        name = 'svc'

        @fire
        def method(self):
            raise Unprintable()

    container = containers(Svc)
    container.start()
    with caplog.at_level(logging.ERROR, logger='threadko.containers'):
        with pytest.raises(Unprintable):
            entrypoint_for(container, 'method').fire().result()
    messages = [r.getMessage() for r in caplog.records]
    assert any('<Unprintable with an unprintable message>' in message
               for message in messages), messages
    assert entrypoint_for(container, 'method').fire().done.wait(WAIT)
    container.stop()
    assert container.wait() is None


def test_expected_exceptions_are_logged_as_warnings(containers, caplog):
    class Svc:
        name = 'svc'

        @fire(expected_exceptions=KeyError)
        def method(self):
            raise KeyError('expected')

    container = containers(Svc)
    container.start()
    with caplog.at_level(logging.WARNING, logger='threadko.containers'):
        handle = entrypoint_for(container, 'method').fire()
        with pytest.raises(KeyError):
            handle.result()
        container.stop()
    records = [r for r in caplog.records if 'expected' in r.getMessage()]
    assert records and all(r.levelno == logging.WARNING for r in records)


@pytest.mark.parametrize('failing_hook', [
    'get_dependency', 'worker_setup', 'worker_result', 'worker_teardown'])
def test_provider_raising_in_a_worker_hook_kills_the_container(
        containers, failing_hook):
    handle_result_ran = threading.Event()

    class Failing(DependencyProvider):
        pass

    def fail(self, *args, **kwargs):
        raise RuntimeError('hook {} failed'.format(failing_hook))

    setattr(Failing, failing_hook, fail)

    class Svc:
        name = 'svc'
        dep = Failing()

        @fire
        def method(self):
            return 'ok'

    container = containers(Svc)
    container.start()

    def handle_result(worker_ctx, result, exc_info):
        handle_result_ran.set()
        return result, exc_info

    container.spawn_worker(
        entrypoint_for(container, 'method'), (), {},
        handle_result=handle_result)

    with pytest.raises(RuntimeError, match='hook {} failed'.format(
            failing_hook)):
        container.wait()
    # a failure before the method means no reply/ack is ever sent
    before_method = failing_hook in ('get_dependency', 'worker_setup')
    assert handle_result_ran.is_set() is not before_method


def test_worker_runs_in_a_fresh_contextvars_context(containers):
    var = contextvars.ContextVar('var', default='unset')

    class Svc:
        name = 'svc'

        @fire
        def method(self, value):
            seen = var.get()
            var.set(value)
            return seen

    container = containers(Svc, {'max_workers': 1})
    container.start()
    entrypoint = entrypoint_for(container, 'method')
    var.set('caller')
    assert entrypoint.fire('first').result() == 'unset'
    assert entrypoint.fire('second').result() == 'unset'
    container.stop()


# -- bounded pool ----------------------------------------------------------

def test_a_spawn_waiting_for_a_slot_when_stop_begins_is_refused(containers):
    """Work an entrypoint received but could not yet hand to a worker goes
    back (ContainerBeingKilled: AMQP entrypoints requeue it) instead of
    starting after stop() began."""
    gate = threading.Event()
    started = Received()
    entrypoint_stopped = threading.Event()

    class NotesStop(Fire):
        def stop(self):
            entrypoint_stopped.set()

    class Svc:
        name = 'svc'

        @NotesStop.decorator
        def method(self, label):
            started.add(label)
            assert gate.wait(WAIT)

    container = containers(Svc, {'max_workers': 1})
    container.start()
    entrypoint = entrypoint_for(container, 'method')
    running = entrypoint.fire('running')
    started.wait_for('running')

    waiting = Future()

    def spawn_when_a_slot_is_free():
        try:
            waiting.set_result(entrypoint.fire('waiting'))
        except BaseException as exc:
            waiting.set_exception(exc)

    spawner = threading.Thread(target=spawn_when_a_slot_is_free,
                               name='test-spawner')
    spawner.start()
    stopper = threading.Thread(target=container.stop, name='test-stopper')
    stopper.start()
    # stop() is waiting for the running worker once the entrypoints stopped
    assert entrypoint_stopped.wait(WAIT)
    gate.set()
    assert running.result() is None
    with pytest.raises(ContainerBeingKilled, match='is stopp(ing|ed)'):
        waiting.result(WAIT)
    stopper.join(WAIT)
    spawner.join(WAIT)
    assert not stopper.is_alive()
    assert started.items == ['running']


def test_spawn_worker_blocks_while_all_slots_are_busy(containers):
    gate = threading.Event()
    running = []
    lock = threading.Lock()
    peak = []

    class Svc:
        name = 'svc'

        @fire
        def method(self):
            with lock:
                running.append(1)
                peak.append(len(running))
            assert gate.wait(WAIT)
            with lock:
                running.pop()

    container = containers(Svc, {'max_workers': 2})
    container.start()
    entrypoint = entrypoint_for(container, 'method')
    first, second = entrypoint.fire(), entrypoint.fire()

    third_spawned = threading.Event()
    spawner = threading.Thread(
        target=lambda: (entrypoint.fire(), third_spawned.set()),
        name='test-spawner')
    spawner.start()
    assert not third_spawned.wait(0.2)  # still waiting for a slot
    gate.set()
    assert third_spawned.wait(WAIT)
    spawner.join(WAIT)
    container.stop()
    assert max(peak) == 2
    assert len(peak) == 3


def test_never_more_than_max_workers_at_once(containers):
    lock = threading.Lock()
    state = {'running': 0, 'peak': 0}

    class Svc:
        name = 'svc'

        @fire
        def method(self):
            with lock:
                state['running'] += 1
                state['peak'] = max(state['peak'], state['running'])
            # give other workers every chance to overlap
            threading.Event().wait(0.001)
            with lock:
                state['running'] -= 1

    container = containers(Svc, {'max_workers': 4})
    container.start()
    entrypoint = entrypoint_for(container, 'method')
    spawners = [
        threading.Thread(
            target=lambda: [entrypoint.fire() for _ in range(25)],
            name='test-spawner-{}'.format(i))
        for i in range(4)]
    for s in spawners:
        s.start()
    for s in spawners:
        s.join(WAIT)
    container.stop()
    assert 1 <= state['peak'] <= 4
    assert state['running'] == 0


def test_worker_threads_maps_running_workers_to_their_threads(containers):
    # Nameko's container._worker_threads (worker_ctx -> greenthread), read
    # by extensions: nameko-prometheus reports len() of it from
    # worker_result, so the worker being reported is in it then
    seen = {}
    release = threading.Event()

    class Counting(DependencyProvider):
        def worker_result(self, worker_ctx, result=None, exc_info=None):
            seen['at_result'] = dict(self.container._worker_threads)

    class Svc:
        name = 'svc'
        counting = Counting()

        @fire
        def method(self):
            seen['thread'] = threading.current_thread()
            release.wait(WAIT)

    container = containers(Svc, {})
    assert container._worker_threads == {}
    container.start()
    handle = entrypoint_for(container, 'method').fire()
    release.set()
    handle.result()
    assert seen['at_result'] == {handle.worker_ctx: seen['thread']}
    container.stop()
    assert container._worker_threads == {}


# -- managed threads -----------------------------------------------------

def test_exception_in_a_managed_thread_kills_the_container(
        containers, caplog):
    record = Recorder()

    class Crashing(Extension):
        def start(self):
            self.container.spawn_managed_thread(self.crash, 'crasher')

        def crash(self):
            raise ValueError('managed thread crashed')

    class Provider(RecordingProvider):
        crashing = Crashing()

    class Svc:
        name = 'svc'
        dep = Provider(record)

    container = containers(Svc)
    with caplog.at_level(logging.CRITICAL):
        container.start()
        with pytest.raises(ValueError, match='managed thread crashed'):
            container.wait()
    assert ('kill', 'dep') in record.events
    assert 'thread exited with error' in caplog.text


def test_managed_threads_are_named_daemons(containers):
    seen = {}
    done = threading.Event()

    class Svc:
        name = 'named'

    container = containers(Svc)

    def fn():
        seen['thread'] = threading.current_thread()
        done.set()

    thread = container.spawn_managed_thread(fn, identifier='worker-loop')
    assert done.wait(WAIT)
    thread.join(WAIT)
    assert seen['thread'] is thread
    assert thread.name == 'threadko-named-worker-loop'
    assert thread.daemon


# -- kill ------------------------------------------------------------------

def test_kill_abandons_running_workers_and_returns_promptly(containers):
    record = Recorder()
    gate = threading.Event()

    class Svc:
        name = 'svc'
        dep = RecordingProvider(record)

        @fire
        def method(self):
            record('method started')
            assert gate.wait(WAIT)
            record('method returned')

    container = containers(Svc)
    container.start()
    handle = entrypoint_for(container, 'method').fire()
    record.wait_for('method started')

    container.kill()  # returns although the worker is blocked
    assert ('kill', 'dep') in record.events
    with pytest.raises(ContainerBeingKilled):
        entrypoint_for(container, 'method').fire()

    gate.set()
    record.wait_for('method returned')
    # the late result is discarded: no reply, no worker_result; but the
    # providers get their worker_teardown, on the worker's thread
    record.wait_for_kind('worker_teardown')
    assert not handle.done.is_set()
    kinds = {e[0] for e in record.events if isinstance(e, tuple)}
    assert 'worker_result' not in kinds
    assert record.index_of_kind('worker_teardown') > record.events.index(
        'method returned')


def test_kill_with_exc_info_makes_wait_raise(containers):
    class Svc:
        name = 'svc'

    container = containers(Svc)
    container.start()
    try:
        raise KeyError('why it died')
    except KeyError:
        import sys
        container.kill(sys.exc_info())
    with pytest.raises(KeyError, match='why it died'):
        container.wait()
    # every waiter sees the same error
    with pytest.raises(KeyError, match='why it died'):
        container.wait()
    # stop after kill is a no-op
    container.stop()


def test_kill_order_entrypoints_then_all_extensions(containers):
    record = Recorder()
    container = containers(make_ordered_service(record))
    container.start()
    container.kill()
    kills = [e for e in record.events if e[0] == 'kill']
    assert kills[0] == ('kill', 'entrypoint')
    assert sorted(kills[1:]) == sorted(
        [('kill', 'entrypoint'), ('kill', 'dep'), ('kill', 'sub')])
    assert container.wait() is None
    assert not container.started


def test_kill_swallows_extension_errors(containers, caplog):
    class Unkillable(Extension):
        def kill(self):
            raise RuntimeError('kill failed')

    class Provider(DependencyProvider):
        bad = Unkillable()

    class Svc:
        name = 'svc'
        dep = Provider()

    container = containers(Svc)
    container.start()
    with caplog.at_level(logging.WARNING):
        container.kill()
    assert 'raised `kill failed` during kill' in caplog.text
    assert container.wait() is None


def test_worker_spawned_while_blocked_on_a_full_pool_gets_container_being_killed(
        containers):
    gate = threading.Event()
    outcome = []

    class Svc:
        name = 'svc'

        @fire
        def method(self):
            gate.wait(WAIT)

    container = containers(Svc, {'max_workers': 1})
    container.start()
    entrypoint = entrypoint_for(container, 'method')
    entrypoint.fire()

    def spawn():
        try:
            entrypoint.fire()
        except ContainerBeingKilled as exc:
            outcome.append(exc)

    spawner = threading.Thread(target=spawn, name='test-spawner')
    spawner.start()
    container.kill()
    spawner.join(WAIT)
    gate.set()
    assert len(outcome) == 1


def test_kill_during_stop_wins(containers):
    gate = threading.Event()

    class Svc:
        name = 'svc'

        @fire
        def method(self):
            gate.wait(WAIT)

    container = containers(Svc)
    container.start()
    entrypoint_for(container, 'method').fire()
    stopper = threading.Thread(target=container.stop, name='test-stopper')
    stopper.start()
    try:
        raise OSError('fatal')
    except OSError:
        import sys
        container.kill(sys.exc_info())
    stopper.join(WAIT)
    assert not stopper.is_alive()
    gate.set()
    with pytest.raises(OSError, match='fatal'):
        container.wait()


def test_spawn_worker_after_stop_raises_container_being_killed(containers):
    class Svc:
        name = 'svc'

        @fire
        def method(self):
            pass

    container = containers(Svc)
    container.start()
    container.stop()
    with pytest.raises(ContainerBeingKilled):
        entrypoint_for(container, 'method').fire()


def test_container_can_start_again_after_stop(containers):
    class Svc:
        name = 'svc'

        @fire
        def method(self):
            return 'again'

    container = containers(Svc)
    container.start()
    container.stop()
    container.start()
    assert entrypoint_for(container, 'method').fire().result() == 'again'
    container.stop()


# -- WorkerContext ---------------------------------------------------------

class ContextService:
    name = 'ctx'
    language = Language()
    user_id = UserId()
    config = Config()

    @fire
    def method(self):
        return self.language, self.user_id, self.config


def make_worker_ctx(config=None, data=None):
    container = ServiceContainer(ContextService, config or {})
    entrypoint = entrypoint_for(container, 'method')
    return WorkerContext(
        container, ContextService(), entrypoint, data=data)


def test_call_id_is_service_method_uuid_and_stable():
    worker_ctx = make_worker_ctx()
    call_id = worker_ctx.call_id
    service, method, unique = call_id.split('.')
    assert (service, method) == ('ctx', 'method')
    assert len(unique) == 36
    assert worker_ctx.call_id == call_id


def test_call_id_stack_appends_own_id_to_the_parents():
    data = {'call_id_stack': ['a.x.1', 'b.y.2'], 'language': 'fr'}
    worker_ctx = make_worker_ctx(data=data)
    assert 'call_id_stack' not in data  # popped out of the caller's dict
    assert worker_ctx.call_id_stack == ['a.x.1', 'b.y.2', worker_ctx.call_id]
    assert worker_ctx.origin_call_id == 'a.x.1'
    assert worker_ctx.immediate_parent_call_id == 'b.y.2'
    assert worker_ctx.data == {'language': 'fr'}
    assert worker_ctx.context_data == {
        'language': 'fr', 'call_id_stack': worker_ctx.call_id_stack}


def test_call_id_stack_is_trimmed_to_parent_calls_tracked():
    parents = ['p.m.{}'.format(i) for i in range(5)]
    worker_ctx = make_worker_ctx(
        {'parent_calls_tracked': 2}, {'call_id_stack': parents})
    assert worker_ctx.call_id_stack == ['p.m.3', 'p.m.4', worker_ctx.call_id]
    # a returned list is a copy
    worker_ctx.call_id_stack.append('x')
    assert len(worker_ctx.call_id_stack) == 3


def test_origin_and_parent_are_none_without_parents():
    worker_ctx = make_worker_ctx()
    assert worker_ctx.origin_call_id is None
    assert worker_ctx.immediate_parent_call_id is None
    assert worker_ctx.call_id_stack == [worker_ctx.call_id]
    assert repr(worker_ctx).startswith('<WorkerContext [ctx.method] at 0x')


def test_context_data_and_config_providers_inject_values(containers):
    container = containers(ContextService, {'FOO': 'bar'})
    container.start()
    handle = entrypoint_for(container, 'method').fire(
        context_data={'language': 'en', 'user_id': 7})
    language, user_id, config = handle.result()
    container.stop()
    assert (language, user_id) == ('en', 7)
    assert config == {'FOO': 'bar'}
    config['FOO'] = 'changed'  # a copy: the container's config is intact
    assert container.config['FOO'] == 'bar'


def test_run_worker_runs_on_the_calling_thread_holding_a_slot(containers):
    seen = {}
    release = threading.Event()

    class Svc:
        name = 'svc'

        @fire
        def blocking(self):
            release.wait(WAIT)

        @fire
        def method(self, value):
            seen['thread'] = threading.current_thread()
            return value * 2

    container = containers(Svc, {'max_workers': 1})
    container.start()
    results = []
    worker_ctx = container.run_worker(
        entrypoint_for(container, 'method'), (21,), {},
        handle_result=lambda ctx, result, exc_info: (
            results.append(result) or (result, exc_info)))
    assert seen['thread'] is threading.current_thread()
    assert results == [42]
    assert worker_ctx.args == (21,)

    # the only slot is taken: run_worker waits for it like spawn_worker
    busy = entrypoint_for(container, 'blocking').fire()
    done = threading.Event()
    caller = threading.Thread(
        target=lambda: (container.run_worker(
            entrypoint_for(container, 'method'), (1,), {}), done.set()),
        name='test-inline-caller')
    caller.start()
    assert not done.wait(0.2)
    release.set()
    busy.result()
    assert done.wait(WAIT)
    caller.join(WAIT)
    container.stop()
    with pytest.raises(ContainerBeingKilled):
        container.run_worker(entrypoint_for(container, 'method'), (1,), {})
