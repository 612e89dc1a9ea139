"""The pytest plugin, exercised the way users meet it: inner test sessions
(``pytester``) that use its fixtures, with the plugin loaded through its
``pytest11`` entry point."""

from importlib.metadata import entry_points

import pytest

pytest_plugins = ['pytester']

SERVICES = '''
from threadko import config
from threadko.extensions import DependencyProvider
from threadko.testing.services import dummy

KILLED = []


class RecordKill(DependencyProvider):
    def kill(self):
        KILLED.append(self.container.service_name)


def make_service(name):
    def method(self):
        return name

    return type(name, (), {
        'name': name, 'record': RecordKill(), 'method': dummy(method)})
'''


@pytest.fixture
def run_inner(pytester):
    """Write ``source`` (after the shared service helpers) as a test module
    and run it in-process; return the run's outcome."""

    def run(source, *args):
        pytester.makepyfile(test_inner=SERVICES + source)
        return pytester.runpytest_inprocess('-p', 'no:cacheprovider', *args)

    return run


def test_plugin_is_registered_as_a_pytest11_entry_point(request):
    plugins = {ep.name: ep.value for ep in entry_points(group='pytest11')}
    assert plugins.get('threadko') == 'threadko.testing.plugin'
    # which loads the fixtures' module in this session (no Nameko here)
    assert request.config.pluginmanager.has_plugin('threadko.testing.pytest')


def test_plugin_adds_no_eventlet_options(pytester):
    result = pytester.runpytest_inprocess('--blocking-detection')
    assert result.ret != 0
    result.stderr.fnmatch_lines(['*unrecognized arguments*'])


# -- container_factory -----------------------------------------------------

def test_container_factory_without_config_uses_the_global_config(run_inner):
    result = run_inner('''
from threadko.containers import ServiceContainer

def test_global(container_factory):
    with config.patch({'max_workers': 3}):
        container = container_factory(make_service('a'))
    assert type(container) is ServiceContainer
    assert container.config is config
    assert container.max_workers == 3
    assert not container.started
''')
    result.assert_outcomes(passed=1)


def test_container_factory_config_patches_for_the_test(run_inner):
    result = run_inner('''
def test_setup():
    config.setup({'kept': 1, 'max_workers': 5})


def test_patches(container_factory):
    container = container_factory(make_service('a'), {'max_workers': 2})
    # a snapshot of the patched global config
    assert container.config == {'kept': 1, 'max_workers': 2}
    assert container.config is not config
    assert container.max_workers == 2
    # the global config stays patched for the rest of the test
    assert config['max_workers'] == 2

    second = container_factory(make_service('b'), {'extra': True})
    assert second.config == {'kept': 1, 'max_workers': 2, 'extra': True}
    # later changes of the global config don't reach the snapshot
    config['later'] = 1
    assert 'later' not in container.config


def test_restored_afterwards():
    assert dict(config) == {'kept': 1, 'max_workers': 5}
    config.setup({})
''')
    result.assert_outcomes(passed=3)


def test_container_factory_honours_service_container_cls(run_inner):
    result = run_inner('''
from threadko.containers import ServiceContainer

class CustomContainer(ServiceContainer):
    pass

PATH = __name__ + '.CustomContainer'

def test_from_dict(container_factory):
    container = container_factory(
        make_service('a'), {'SERVICE_CONTAINER_CLS': PATH})
    assert type(container) is CustomContainer

def test_from_global_config(container_factory):
    with config.patch({'SERVICE_CONTAINER_CLS': PATH}):
        container = container_factory(make_service('a'))
    assert type(container) is CustomContainer
''')
    result.assert_outcomes(passed=2)


def test_container_factory_kills_newest_first_at_teardown(run_inner):
    result = run_inner('''
from threadko.testing.services import entrypoint_hook

CONTAINERS = []

def test_make(container_factory):
    for name in ('a', 'b', 'c'):
        container = container_factory(make_service(name))
        container.start()
        CONTAINERS.append(container)
    with entrypoint_hook(CONTAINERS[0], 'method') as method:
        assert method() == 'a'

def test_killed_in_reverse_order():
    assert KILLED == ['c', 'b', 'a']
    assert not any(container.started for container in CONTAINERS)
''')
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize('fixtures', [
    'container_factory, empty_config', 'empty_config, container_factory'])
def test_config_is_restored_whatever_the_fixture_order(run_inner, fixtures):
    result = run_inner('''
def test_setup():
    config.setup({{'original': True}})

def test_order({fixtures}):
    assert dict(config) == {{}}
    container_factory(make_service('a'), {{'patched': True}})
    assert dict(config) == {{'patched': True}}

def test_restored():
    assert dict(config) == {{'original': True}}
    config.setup({{}})
'''.format(fixtures=fixtures))
    result.assert_outcomes(passed=3)


# -- runner_factory --------------------------------------------------------

def test_runner_factory_nameko_3_style(run_inner):
    result = run_inner('''
from threadko.runners import ServiceRunner

def test_runner(runner_factory):
    runner = runner_factory(make_service('a'), make_service('b'))
    assert isinstance(runner, ServiceRunner)
    assert sorted(runner.service_names) == ['a', 'b']
    assert runner.config is config
    assert all(c.config is config for c in runner.containers)
''')
    result.assert_outcomes(passed=1)


def test_runner_factory_nameko_2_style(run_inner):
    result = run_inner('''
def test_setup():
    config.setup({'kept': 1})

def test_runner(runner_factory):
    runner = runner_factory({'max_workers': 2}, make_service('a'))
    (container,) = runner.containers
    assert container.config == {'kept': 1, 'max_workers': 2}
    assert container.max_workers == 2
    assert config['max_workers'] == 2

def test_restored():
    assert dict(config) == {'kept': 1}
    config.setup({})
''')
    result.assert_outcomes(passed=3)


def test_runner_factory_kills_newest_first_at_teardown(run_inner):
    result = run_inner('''
RUNNERS = []

def test_make(runner_factory):
    for name in ('a', 'b'):
        runner = runner_factory(make_service(name))
        runner.start()
        RUNNERS.append(runner)

def test_killed_in_reverse_order():
    assert KILLED == ['b', 'a']
    assert not any(
        c.started for runner in RUNNERS for c in runner.containers)
''')
    result.assert_outcomes(passed=2)


# -- config fixtures -------------------------------------------------------

def test_empty_config(run_inner):
    result = run_inner('''
def test_setup():
    config.setup({'AMQP_URI': 'memory://'})

def test_empty(empty_config):
    assert empty_config == {}
    assert dict(config) == {}
    config['set_in_test'] = 1

def test_restored():
    assert dict(config) == {'AMQP_URI': 'memory://'}
    config.setup({})
''')
    result.assert_outcomes(passed=3)


def test_web_config(run_inner):
    result = run_inner('''
import socket

def test_web(web_config, web_config_port):
    address = config['WEB_SERVER_ADDRESS']
    assert web_config == {'WEB_SERVER_ADDRESS': address}
    assert address == '127.0.0.1:{}'.format(web_config_port)
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', web_config_port))

def test_restored():
    assert 'WEB_SERVER_ADDRESS' not in config
''')
    result.assert_outcomes(passed=2)


def test_predictable_call_ids(run_inner):
    result = run_inner('''
from threadko.extensions import DependencyProvider
from threadko.testing.services import entrypoint_hook

class CallId(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return worker_ctx.call_id

class Service:
    name = 'svc'
    call_id = CallId()

    @dummy
    def method(self):
        return self.call_id

def test_ids(container_factory, predictable_call_ids):
    container = container_factory(Service)
    container.start()
    with entrypoint_hook(container, 'method') as method:
        assert [method(), method()] == ['svc.method.0', 'svc.method.1']
    assert predictable_call_ids.call_count == 2
''')
    result.assert_outcomes(passed=1)


def test_mock_container(run_inner):
    result = run_inner('''
import pytest

def test_mock(mock_container):
    assert mock_container.config['serializer'] == 'json'
    assert mock_container.serializer == 'json'
    assert mock_container.accept == ['json']
    mock_container.config['extra'] = 1
    # autospec'd: calls must match ServiceContainer's signatures
    mock_container.spawn_worker('entrypoint', (), {})
    with pytest.raises(TypeError):
        mock_container.spawn_worker()

def test_restored():
    assert dict(config) == {}
''')
    result.assert_outcomes(passed=2)
