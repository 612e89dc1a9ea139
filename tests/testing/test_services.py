import threading
from contextlib import ExitStack
from unittest.mock import MagicMock

import pytest

from threadko.containers import WorkerContext
from threadko.contextdata import Language
from threadko.exceptions import ContainerBeingKilled, ExtensionNotFound
from threadko.extensions import DependencyProvider, Entrypoint
from threadko.testing.services import (
    EntrypointWaiterTimeout, MockDependencyProvider, dummy, entrypoint_hook,
    entrypoint_waiter, once, replace_dependencies, restrict_entrypoints,
    worker_factory,
)
from threadko.testing.utils import get_extension
from threadko.testing.waiting import WaitResult

WAIT = 5  # seconds: the longest a test waits for something that must happen


class Trigger(Entrypoint):
    """Fires a worker when the test calls :meth:`fire`, without waiting."""

    def fire(self, *args, **kwargs):
        return self.container.spawn_worker(self, args, kwargs)


trigger = Trigger.decorator


def fire(container, method_name, *args, **kwargs):
    entrypoint = get_extension(container, Trigger, method_name=method_name)
    return entrypoint.fire(*args, **kwargs)


class WorkerCtx(DependencyProvider):
    """Injects the worker's own context."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


class Recording(DependencyProvider):
    """Notes worker hooks (``('teardown', args)``) in a shared list."""

    def __init__(self, events):
        self.events = events

    def worker_setup(self, worker_ctx):
        self.events.append(('setup', worker_ctx.args))

    def worker_teardown(self, worker_ctx):
        self.events.append(('teardown', worker_ctx.args))


class FailingSetup(DependencyProvider):
    def worker_setup(self, worker_ctx):
        raise RuntimeError('worker_setup failed')


class Boom(Exception):
    pass


def make_service(events=None):
    events = [] if events is None else events

    class Service:
        name = 'svc'

        language = Language()
        ctx = WorkerCtx()
        record = Recording(events)

        @dummy
        def echo(self, value):
            return value

        @dummy
        def fail(self):
            raise Boom('failed on purpose')

        @dummy
        def speak(self):
            return self.language

        @dummy
        def context(self):
            return self.ctx

        @trigger
        def method(self, value, gate=None):
            if gate is not None:
                assert gate.wait(WAIT)
            return value

        @trigger
        def broken(self):
            raise Boom('broken')

        @trigger
        def other(self, value):
            return value

    return Service


@pytest.fixture
def events():
    return []


@pytest.fixture
def container(container_factory, events):
    container = container_factory(make_service(events))
    container.start()
    return container


# -- worker_factory --------------------------------------------------------

class Maths(DependencyProvider):
    pass


class ConversionService:
    name = 'conversions'
    maths = Maths()
    language = Language()

    @dummy
    def inches_to_cm(self, inches):
        return self.maths.multiply(inches, 2.54)


def test_worker_factory_replaces_every_provider_with_a_magic_mock():
    service = worker_factory(ConversionService)

    assert isinstance(service, ConversionService)
    assert isinstance(service.maths, MagicMock)
    assert isinstance(service.language, MagicMock)
    assert service.maths is not service.language

    service.maths.multiply.side_effect = lambda x, y: x * y
    assert service.inches_to_cm(10) == 25.4
    service.maths.multiply.assert_called_once_with(10, 2.54)


def test_worker_factory_injects_given_objects():
    class StubMaths:
        def multiply(self, x, y):
            return x * y

    stub = StubMaths()
    service = worker_factory(ConversionService, maths=stub)

    assert service.maths is stub
    assert isinstance(service.language, MagicMock)
    assert service.inches_to_cm(2) == 5.08


def test_worker_factory_leaves_the_class_alone():
    worker_factory(ConversionService, maths=object())
    assert isinstance(ConversionService.maths, Maths)


def test_worker_factory_unknown_dependency():
    with pytest.raises(ExtensionNotFound, match="'nope'"):
        worker_factory(ConversionService, nope=object())
    assert issubclass(ExtensionNotFound, AttributeError)


# -- entrypoint_hook -------------------------------------------------------

def test_hook_returns_the_worker_result(container):
    with entrypoint_hook(container, 'echo') as echo:
        assert echo('hello') == 'hello'
        assert echo(value=[1, 2]) == [1, 2]


def test_hook_raises_the_worker_exception(container):
    with entrypoint_hook(container, 'fail') as fail:
        with pytest.raises(Boom, match='failed on purpose'):
            fail()
    # an exception in the service method does not hurt the container
    with entrypoint_hook(container, 'echo') as echo:
        assert echo(1) == 1


def test_hook_passes_context_data(container):
    with entrypoint_hook(container, 'speak') as speak:
        assert speak() is None
    with entrypoint_hook(
            container, 'speak', context_data={'language': 'fr'}) as speak:
        assert speak() == 'fr'


def test_hook_passes_a_copy_of_context_data_each_call(container):
    context_data = {'language': 'en', 'call_id_stack': ['parent.call.0']}
    with entrypoint_hook(
            container, 'context', context_data=context_data) as context:
        first, second = context(), context()
    assert first.immediate_parent_call_id == 'parent.call.0'
    assert second.immediate_parent_call_id == 'parent.call.0'
    assert context_data == {
        'language': 'en', 'call_id_stack': ['parent.call.0']}


def test_hook_returns_after_the_worker_was_torn_down(container, events):
    with entrypoint_hook(container, 'echo') as echo:
        echo('x')
        assert ('teardown', ('x',)) in events


def test_hook_unknown_method(container):
    with pytest.raises(ExtensionNotFound, match="No entrypoint for 'nope'"):
        with entrypoint_hook(container, 'nope'):
            pass  # pragma: no cover


def test_hook_works_on_any_entrypoint(container):
    with entrypoint_hook(container, 'method') as method:
        assert method('via trigger') == 'via trigger'


def test_hook_raises_the_error_the_container_dies_of(container_factory):
    class Service:
        name = 'svc'
        failing = FailingSetup()

        @dummy
        def method(self):
            return 'never'  # pragma: no cover

    container = container_factory(Service)
    container.start()

    with entrypoint_hook(container, 'method', timeout=WAIT) as method:
        with pytest.raises(RuntimeError, match='worker_setup failed'):
            method()
    with pytest.raises(RuntimeError, match='worker_setup failed'):
        container.wait()


def test_hook_raises_if_the_container_is_killed_without_error(
        container_factory):
    class Service:
        name = 'svc'
        ctx = WorkerCtx()

        @dummy
        def kill_my_container(self):
            self.ctx.container.kill()
            return 'discarded'

    container = container_factory(Service)
    container.start()
    with entrypoint_hook(container, 'kill_my_container', timeout=WAIT) as hook:
        with pytest.raises(ContainerBeingKilled, match='result was discarded'):
            hook()
    assert not container.started


def test_hook_timeout(container):
    gate = threading.Event()
    try:
        with entrypoint_hook(container, 'method', timeout=0.1) as method:
            with pytest.raises(
                    EntrypointWaiterTimeout,
                    match=r'^Timeout on svc\.method after 0\.1 seconds$'):
                method('late', gate)
    finally:
        gate.set()


def test_hook_tracks_its_own_worker_across_threads(container):
    callers = 5
    started = threading.Barrier(callers + 1, timeout=WAIT)
    results = {}
    gate = threading.Event()

    def call(value):
        started.wait()
        with entrypoint_hook(container, 'method') as method:
            results[value] = method(value, gate)

    threads = [
        threading.Thread(target=call, args=(i,), name='test-hook-{}'.format(i))
        for i in range(callers)]
    for thread in threads:
        thread.start()
    started.wait()
    # an unrelated worker of the same method finishes first
    with entrypoint_hook(container, 'method') as method:
        assert method('unrelated') == 'unrelated'
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert results == {i: i for i in range(callers)}


# -- entrypoint_waiter -----------------------------------------------------

def test_waiter_result_and_worker_ctx(container):
    with entrypoint_waiter(container, 'method') as result:
        fire(container, 'method', 'value')

    assert result.get() == 'value'
    assert isinstance(result.worker_ctx, WorkerContext)
    assert result.worker_ctx.entrypoint.method_name == 'method'
    assert result.worker_ctx.args == ('value',)


def test_waiter_waits_for_teardown(container, events):
    with entrypoint_waiter(container, 'method'):
        fire(container, 'method', 'value')
        # (the worker may or may not have finished here)
    assert ('teardown', ('value',)) in events


def test_waiter_result_reraises_the_worker_exception(container):
    with entrypoint_waiter(container, 'broken') as result:
        fire(container, 'broken')
    # the waiter exited normally; get() raises
    with pytest.raises(Boom, match='broken'):
        result.get()


def test_waiter_result_is_not_ready_inside_the_block(container):
    with entrypoint_waiter(container, 'method') as result:
        with pytest.raises(WaitResult.NotReady):
            result.get()
        fire(container, 'method', 1)


def test_waiter_ignores_other_methods(container):
    gate = threading.Event()
    with entrypoint_waiter(container, 'method') as result:
        fire(container, 'method', 'wanted', gate)
        with entrypoint_hook(container, 'other') as other:
            assert other('unwanted') == 'unwanted'
        gate.set()
    assert result.get() == 'wanted'


def test_waiter_callback_selects_the_worker(container):
    seen = []

    def callback(worker_ctx, result, exc_info):
        seen.append(result)
        return result == 3

    with entrypoint_waiter(container, 'method', callback=callback) as result:
        for value in range(1, 5):
            fire(container, 'method', value)

    assert result.get() == 3
    assert result.worker_ctx.args == (3,)
    assert 3 in seen


def test_waiter_callback_sees_exc_info(container):
    def callback(worker_ctx, result, exc_info):
        return exc_info is not None and exc_info[0] is Boom

    with entrypoint_waiter(container, 'broken', callback=callback) as result:
        fire(container, 'broken')
    with pytest.raises(Boom):
        result.get()


def test_waiter_raises_callback_errors_at_exit(container):
    def callback(worker_ctx, result, exc_info):
        raise ValueError('bad callback')

    with pytest.raises(ValueError, match='bad callback'):
        with entrypoint_waiter(container, 'method', callback=callback):
            fire(container, 'method', 1)

    # the worker, and the container, were not affected
    with entrypoint_hook(container, 'echo') as echo:
        assert echo(2) == 2


def test_waiter_catches_a_worker_started_before_the_block(container):
    gate = threading.Event()
    fire(container, 'method', 'early', gate)

    with entrypoint_waiter(container, 'method') as result:
        gate.set()

    assert result.get() == 'early'


def test_waiter_timeout(container):
    gate = threading.Event()
    try:
        with pytest.raises(
                entrypoint_waiter.Timeout,
                match=r'^Timeout on svc\.method after 0\.1 seconds$'):
            with entrypoint_waiter(container, 'method', timeout=0.1):
                fire(container, 'method', 'late', gate)
    finally:
        gate.set()
    assert entrypoint_waiter.Timeout is EntrypointWaiterTimeout


def test_waiter_timeout_none_waits_for_the_worker(container):
    gate = threading.Event()
    with entrypoint_waiter(container, 'method', timeout=None) as result:
        fire(container, 'method', 'slow', gate)
        gate.set()
    assert result.get() == 'slow'


def test_waiter_does_not_wait_when_the_block_raises(container):
    with pytest.raises(KeyError):
        with entrypoint_waiter(container, 'method', timeout=None):
            raise KeyError('no worker will come')


def test_waiter_no_such_entrypoint(container):
    with pytest.raises(RuntimeError, match=r'^svc has no entrypoint `nope`$'):
        with entrypoint_waiter(container, 'nope'):
            pass  # pragma: no cover


def test_waiters_may_end_in_any_order(container):
    calls = {'method': 0, 'other': 0}

    def counting(method_name):
        def callback(worker_ctx, result, exc_info):
            calls[method_name] += 1
            return True
        return callback

    first = entrypoint_waiter(container, 'method', callback=counting('method'))
    second = entrypoint_waiter(container, 'other', callback=counting('other'))
    first_result = first.__enter__()
    second_result = second.__enter__()
    fire(container, 'other', 'b')
    fire(container, 'method', 'a')
    first.__exit__(None, None, None)   # not last-in, first-out
    second.__exit__(None, None, None)
    assert (first_result.get(), second_result.get()) == ('a', 'b')

    # both stopped listening: later workers don't reach their callbacks
    with entrypoint_hook(container, 'method') as method:
        method('c')
    with entrypoint_hook(container, 'other') as other:
        other('d')
    assert calls == {'method': 1, 'other': 1}


def test_nested_waiters_on_one_method(container):
    with ExitStack() as stack:
        outer = stack.enter_context(entrypoint_waiter(container, 'method'))
        inner = stack.enter_context(entrypoint_waiter(container, 'method'))
        fire(container, 'method', 'shared')
    assert outer.get() == inner.get() == 'shared'


# -- replace_dependencies --------------------------------------------------

class Injected(DependencyProvider):
    def __init__(self, value, events=None):
        self.value = value
        self.events = events

    def get_dependency(self, worker_ctx):
        return self.value

    def worker_setup(self, worker_ctx):
        if self.events is not None:
            self.events.append(('setup', self.attr_name))


def make_injecting_service(events=None):
    class Service:
        name = 'svc'
        foo = Injected('real foo', events)
        bar = Injected('real bar', events)
        baz = Injected('real baz', events)

        @dummy
        def deps(self):
            return self.foo, self.bar, self.baz

    return Service


def test_replace_one_dependency_returns_its_mock(container_factory):
    events = []
    container = container_factory(make_injecting_service(events))
    mock_foo = replace_dependencies(container, 'foo')
    container.start()

    with entrypoint_hook(container, 'deps') as deps:
        foo, bar, baz = deps()
    assert isinstance(mock_foo, MagicMock)
    assert foo is mock_foo
    assert (bar, baz) == ('real bar', 'real baz')
    # the replaced provider no longer takes part in workers
    assert sorted(events) == [('setup', 'bar'), ('setup', 'baz')]


def test_replace_several_dependencies_returns_mocks_in_order(
        container_factory):
    container = container_factory(make_injecting_service())
    mock_baz, mock_foo = replace_dependencies(container, 'baz', 'foo')
    container.start()

    with entrypoint_hook(container, 'deps') as deps:
        assert deps() == (mock_foo, 'real bar', mock_baz)
    assert mock_foo is not mock_baz


def test_replace_dependencies_by_keyword(container_factory):
    container = container_factory(make_injecting_service())
    replacement = object()
    returned = replace_dependencies(container, bar=replacement)
    assert list(returned) == []
    container.start()

    with entrypoint_hook(container, 'deps') as deps:
        foo, bar, baz = deps()
    assert bar is replacement
    assert (foo, baz) == ('real foo', 'real baz')


def test_replace_dependencies_mixed(container_factory):
    container = container_factory(make_injecting_service())
    mock_foo = replace_dependencies(container, 'foo', baz='stub baz')
    container.start()

    with entrypoint_hook(container, 'deps') as deps:
        assert deps() == (mock_foo, 'real bar', 'stub baz')


def test_replace_dependencies_affects_one_container(container_factory):
    Service = make_injecting_service()
    replaced = container_factory(Service)
    replace_dependencies(replaced, foo='stub')
    untouched = container_factory(Service)
    untouched.start()

    with entrypoint_hook(untouched, 'deps') as deps:
        assert deps()[0] == 'real foo'
    assert isinstance(Service.foo, Injected)


def test_replace_dependencies_before_start_only(container_factory):
    container = container_factory(make_injecting_service())
    container.start()
    with pytest.raises(RuntimeError, match='before the container is started'):
        replace_dependencies(container, 'foo')


def test_replace_the_same_dependency_twice(container_factory):
    container = container_factory(make_injecting_service())
    with pytest.raises(RuntimeError, match='both args and kwargs'):
        replace_dependencies(container, 'foo', foo='stub')


def test_replace_unknown_dependency(container_factory):
    container = container_factory(make_injecting_service())
    with pytest.raises(ExtensionNotFound, match="'nope'"):
        replace_dependencies(container, 'foo', 'nope')
    # nothing was replaced
    assert {dep.attr_name for dep in container.dependencies
            if isinstance(dep, MockDependencyProvider)} == set()


def test_mock_dependency_provider_on_a_service_class(container_factory):
    stub = object()

    class Service:
        name = 'svc'
        given = MockDependencyProvider('given', dependency=stub)
        mocked = MockDependencyProvider('mocked')

        @dummy
        def deps(self):
            return self.given, self.mocked

    container = container_factory(Service)
    container.start()
    with entrypoint_hook(container, 'deps') as deps:
        given, mocked = deps()
    assert given is stub
    assert isinstance(mocked, MagicMock)


# -- restrict_entrypoints --------------------------------------------------

def make_multi_entrypoint_service(calls):
    class Service:
        name = 'svc'

        @once('at start')
        def started(self, value):
            calls.append(value)

        @dummy
        @once('twice decorated')
        def both(self, value='hooked'):
            calls.append(value)
            return value

        @dummy
        def plain(self):
            return 'plain'

    return Service


def test_restrict_entrypoints_keeps_only_named_methods(container_factory):
    calls = []
    container = container_factory(make_multi_entrypoint_service(calls))
    restrict_entrypoints(container, 'both')

    assert {ep.method_name for ep in container.entrypoints} == {'both'}
    # every entrypoint of a kept method stays
    assert {type(ep).__name__ for ep in container.entrypoints} == {
        'Entrypoint', 'Once'}

    with entrypoint_waiter(container, 'both'):
        container.start()
    assert calls == ['twice decorated']  # `started` no longer fires

    with pytest.raises(ExtensionNotFound):
        with entrypoint_hook(container, 'plain'):
            pass  # pragma: no cover


def test_restrict_entrypoints_before_start_only(container_factory):
    container = container_factory(make_multi_entrypoint_service([]))
    with entrypoint_waiter(container, 'both'):
        container.start()
    with pytest.raises(RuntimeError, match='before the container is started'):
        restrict_entrypoints(container, 'plain')


def test_restrict_unknown_entrypoint(container_factory):
    container = container_factory(make_multi_entrypoint_service([]))
    with pytest.raises(ExtensionNotFound, match="'nope'"):
        restrict_entrypoints(container, 'plain', 'nope')
    assert len(container.entrypoints) == 4


# -- once and dummy --------------------------------------------------------

def test_once_spawns_one_worker_at_start(container_factory):
    calls = []

    class Service:
        name = 'svc'

        @once('a', b=2)
        def with_args(self, a, b):
            calls.append((a, b))
            return a * b

        @once
        def bare(self):
            calls.append('bare')

    container = container_factory(Service)
    with entrypoint_waiter(container, 'with_args') as result:
        with entrypoint_waiter(container, 'bare'):
            container.start()
    assert result.get() == 'aa'
    container.stop()
    assert sorted(calls, key=str) == [('a', 2), 'bare']


def test_once_accepts_entrypoint_options(container_factory):
    class Service:
        name = 'svc'

        @once(1, expected_exceptions=Boom, sensitive_arguments=('x',))
        def method(self, x):
            raise Boom(x)

    container = container_factory(Service)
    entrypoint = get_extension(container, Entrypoint, method_name='method')
    assert entrypoint.expected_exceptions is Boom
    assert entrypoint.sensitive_arguments == ('x',)
    with entrypoint_waiter(container, 'method') as result:
        container.start()
    with pytest.raises(Boom):
        result.get()


def test_dummy_never_fires(container_factory):
    calls = []

    class Service:
        name = 'svc'

        @dummy
        def method(self):
            calls.append('called')  # pragma: no cover

    container = container_factory(Service)
    container.start()
    container.stop()
    assert calls == []
