import socket
import threading
from functools import partial
from unittest.mock import Mock

import pytest

from threadko.containers import WorkerContext
from threadko.contextdata import Language, UserId
from threadko.extensions import DependencyProvider, Entrypoint
from threadko.testing.services import dummy, once
from threadko.testing.utils import (
    ANY_PARTIAL, AnyInstanceOf, DummyProvider, WaitTimeout,
    assert_stops_raising, find_free_port, get_container, get_extension,
    wait_for_call,
)

WAIT = 5


class Service:
    name = 'svc'

    language = Language()
    user_id = UserId()

    @dummy
    def first(self):
        pass

    @once
    def second(self):
        pass


class OtherService:
    name = 'other'


# -- get_extension / get_container -----------------------------------------

def test_get_extension_by_class(container_factory):
    container = container_factory(Service)
    assert isinstance(get_extension(container, Language), Language)
    assert isinstance(get_extension(container, DependencyProvider),
                      (Language, UserId))


def test_get_extension_by_attributes(container_factory):
    container = container_factory(Service)

    found = get_extension(container, Entrypoint, method_name='second')
    assert found.method_name == 'second'
    assert type(found).__name__ == 'Once'

    found = get_extension(container, DependencyProvider, attr_name='user_id')
    assert isinstance(found, UserId)


def test_get_extension_without_a_match(container_factory):
    container = container_factory(Service)
    assert get_extension(container, Entrypoint, method_name='nope') is None
    assert get_extension(container, DummyProvider) is None


def test_get_container(runner_factory):
    runner = runner_factory(Service, OtherService)
    container = get_container(runner, Service)
    assert container.service_cls is Service
    assert get_container(runner, OtherService).service_name == 'other'

    class Missing:
        name = 'missing'

    assert get_container(runner, Missing) is None


# -- wait_for_call ---------------------------------------------------------

def test_wait_for_call_from_another_thread():
    mock = Mock()
    go = threading.Event()

    def call_later():
        assert go.wait(WAIT)
        mock('hello')

    thread = threading.Thread(target=call_later, name='test-caller')
    thread.start()
    go.set()
    with wait_for_call(WAIT, mock) as called:
        assert called is mock
        mock.assert_called_once_with('hello')
    thread.join(WAIT)


def test_wait_for_call_timeout():
    mock = Mock()
    with pytest.raises(WaitTimeout, match=r'not called within 0\.05'):
        with wait_for_call(0.05, mock):
            pass  # pragma: no cover


# -- assert_stops_raising --------------------------------------------------

def failing_times(times, exc_type=ValueError):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise exc_type('attempt {}'.format(len(calls)))
        return 'ok'

    return fn, calls


def test_assert_stops_raising_retries_until_success():
    fn, calls = failing_times(3)
    assert_stops_raising(fn, interval=0.001, timeout=WAIT)
    assert len(calls) == 4


def test_assert_stops_raising_other_exceptions_propagate():
    fn, calls = failing_times(3, exc_type=KeyError)
    with pytest.raises(KeyError, match='attempt 1'):
        assert_stops_raising(fn, exception_type=ValueError, interval=0.001)
    assert len(calls) == 1


def test_assert_stops_raising_timeout():
    fn, calls = failing_times(10 ** 9)
    with pytest.raises(WaitTimeout, match='still raised') as exc_info:
        assert_stops_raising(fn, timeout=0.05, interval=0.01)
    assert isinstance(exc_info.value.__cause__, ValueError)
    assert len(calls) >= 2


# -- find_free_port --------------------------------------------------------

def test_find_free_port_can_be_bound():
    port = find_free_port()
    assert isinstance(port, int) and port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', port))


# -- matchers and DummyProvider --------------------------------------------

def test_any_instance_of():
    assert AnyInstanceOf(int) == 3
    assert AnyInstanceOf(int) != 'three'
    assert not AnyInstanceOf(int) != 4
    assert AnyInstanceOf('not a class') != 'not a class'
    assert repr(AnyInstanceOf(int)) == '<AnyInstanceOf-int>'

    mock = Mock()
    mock(5, 'x')
    mock.assert_called_once_with(AnyInstanceOf(int), AnyInstanceOf(str))


def test_any_partial():
    mock = Mock()
    mock(partial(print, 'x'))
    mock.assert_called_once_with(ANY_PARTIAL)
    assert ANY_PARTIAL != print


def test_dummy_provider_builds_worker_contexts(container_factory):
    container = container_factory(Service)
    worker_ctx = WorkerContext(
        container, None, DummyProvider('method'),
        data={'call_id_stack': ['parent']})
    assert worker_ctx.call_id.startswith('svc.method.')
    assert worker_ctx.immediate_parent_call_id == 'parent'
    assert DummyProvider().method_name is None
    assert DummyProvider('m').expected_exceptions == ()
