"""Nameko 2.14.1 and threadko installed in one virtualenv, as in a code base
that moves one service at a time: both kinds of test suite run there, on
RabbitMQ.

- a Nameko test module, with Nameko's own fixtures, runs with plain
  ``pytest``: Nameko's plugin has the session (threadko's steps aside), on
  the real Nameko and eventlet;
- a threadko test module runs with ``pytest -p no:pytest_nameko`` (on the
  command line, or in its directory's ``pytest.ini``), on threadko's
  fixtures;
- the same Nameko test module, imports untouched, runs on threadko with
  ``pytest -p threadko.nameko`` (the nameko bridge): no eventlet.

Before threadko's pytest entry point learnt to step aside, pytest could not
even start there: ``argparse.ArgumentError: argument --amqp-uri/
--rabbit-amqp-uri: conflicting option strings``. No run shows that error,
and loading both fixture plugins by hand still does (the control).

The virtualenv is ``.side-by-side-venv`` at the repository root (git
ignores it), built by scripts/nameko_venv.py with Nameko's pins, this
pytest, and threadko from this checkout in development mode; it is kept
for the next run while its stamp matches (about 15 s to build).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
from nameko_venv import (  # noqa: E402
    BUILD_TIMEOUT, NAMEKO_PINS, VenvError, clean_env, ensure_venv)

VENV = ROOT / '.side-by-side-venv'
#: this session's pytest, so the inner sessions behave as the outer one
PINS = NAMEKO_PINS + ('pytest=={}'.format(pytest.__version__),)
RUN_TIMEOUT = 60  # seconds for one inner pytest session (each takes ~1-2)
CONFLICT = 'conflicting option string'

pytestmark = [
    pytest.mark.interop, pytest.mark.slow, pytest.mark.rabbit,
    # the first test may build the virtualenv
    pytest.mark.timeout(BUILD_TIMEOUT + 2 * RUN_TIMEOUT),
]

NAMEKO_SUITE = '''\
"""A Nameko project's tests: Nameko's imports and Nameko's fixtures."""

import json
import sys

import nameko
from nameko.exceptions import RemoteError
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook


class Greeter:
    name = "greeter"

    @rpc
    def hello(self, name):
        return "hello, {}".format(name)

    @rpc
    def fail(self):
        raise ValueError("boom")


def test_greeter(container_factory, rabbit_config):
    container = container_factory(Greeter, rabbit_config)
    container.start()

    with entrypoint_hook(container, "hello") as hello:
        assert hello("hook") == "hello, hook"
    with ClusterRpcProxy(rabbit_config) as cluster:
        assert cluster.greeter.hello("rpc") == "hello, rpc"
        try:
            cluster.greeter.fail()
        except RemoteError as exc:
            assert exc.exc_type == "ValueError"
        else:
            raise AssertionError("no RemoteError")


def test_report(request):
    """What this session runs on, for the outer test to check."""
    try:
        import threadko.rpc
    except ImportError:
        bridged = None
    else:
        bridged = nameko.rpc is threadko.rpc
    plugins = request.config.pluginmanager
    print("REPORT " + json.dumps({
        "nameko": nameko.__file__,
        "eventlet": "eventlet" in sys.modules,
        "bridged": bridged,
        "pytest_nameko": plugins.has_plugin("pytest_nameko"),
        "threadko_fixtures": plugins.has_plugin("threadko.testing.pytest"),
    }))
'''

#: what Nameko recommends for running its tests under plain pytest (its
#: plugin no longer monkey-patches; pytest-eventlet does just this)
EVENTLET_PLUGIN = '''\
def pytest_load_initial_conftests(early_config, parser, args):
    import eventlet

    eventlet.monkey_patch()
'''

THREADKO_SUITE = '''\
"""A service already moved to threadko, and its tests on threadko's
fixtures."""

import sys

from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.services import entrypoint_hook


class Echo:
    name = "echo"

    @rpc
    def echo(self, value):
        return value


def test_echo(container_factory, rabbit_config, request):
    plugins = request.config.pluginmanager
    assert plugins.has_plugin("threadko.testing.pytest")
    assert not plugins.has_plugin("pytest_nameko")

    container = container_factory(Echo, rabbit_config)
    container.start()
    with entrypoint_hook(container, "echo") as echo:
        assert echo(1) == 1
    with ClusterRpcProxy(rabbit_config) as cluster:
        assert cluster.echo.echo("x") == "x"
    assert "eventlet" not in sys.modules
    assert "nameko" not in sys.modules
'''


@pytest.fixture(scope='module')
def venv_python():
    """The python of the side-by-side virtualenv (built if needed)."""
    try:
        return ensure_venv(VENV, PINS, editable=[ROOT])
    except VenvError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """A repository in the middle of its move: ``nameko_tests/`` for the
    services still on Nameko, ``threadko_tests/`` (with a ``pytest.ini``
    selecting threadko's plugin) for those already moved."""
    root = tmp_path_factory.mktemp('side-by-side')
    files = {
        'nameko_tests/test_nameko_suite.py': NAMEKO_SUITE,
        'eventlet_monkey_patch.py': EVENTLET_PLUGIN,
        'threadko_tests/test_threadko_suite.py': THREADKO_SUITE,
        'threadko_tests/pytest.ini': '''\
            [pytest]
            addopts = -p no:pytest_nameko
        ''',
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def inner_pytest(venv_python, project, request):
    """``inner_pytest(*args, cwd=project)``: ``python -m pytest`` in the
    virtualenv, on the outer session's RabbitMQ; returns the completed
    process (output in ``.output``)."""
    broker = [
        '--amqp-uri', request.config.getoption('RABBIT_AMQP_URI'),
        '--rabbit-api-uri', request.config.getoption('RABBIT_API_URI'),
    ]

    def run(*args, cwd=project):
        result = subprocess.run(
            [str(venv_python), '-m', 'pytest', '-p', 'no:cacheprovider',
             '-q', '-s', *broker, *args],
            cwd=str(cwd), env=clean_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=RUN_TIMEOUT)
        result.output = result.stdout + result.stderr
        return result
    return run


def report(result):
    """The ``test_report`` line of a run of the Nameko suite."""
    lines = [line for line in result.stdout.splitlines()
             if 'REPORT ' in line]
    assert len(lines) == 1, result.output
    return json.loads(lines[0].split('REPORT ', 1)[1])


def test_the_virtualenv_has_both(venv_python):
    result = subprocess.run(
        [str(venv_python), '-c',
         'import json; from importlib.metadata import version, entry_points;'
         'print(json.dumps([version("nameko"), version("threadko"), sorted('
         'ep.name for ep in entry_points(group="pytest11"))]))'],
        env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    nameko_version, _, plugins = json.loads(result.stdout)
    assert nameko_version == '2.14.1'
    assert {'pytest_nameko', 'threadko'} <= set(plugins)


def test_a_nameko_suite_runs_on_nameko_with_plain_pytest(inner_pytest):
    result = inner_pytest('-p', 'eventlet_monkey_patch', 'nameko_tests')

    assert result.returncode == 0, result.output
    assert '2 passed' in result.output
    assert CONFLICT not in result.output
    found = report(result)
    assert found == {
        'nameko': found['nameko'], 'eventlet': True, 'bridged': False,
        'pytest_nameko': True, 'threadko_fixtures': False}
    assert Path(found['nameko']).parts[-3:] == (
        'site-packages', 'nameko', '__init__.py')


def test_a_threadko_suite_runs_with_nameko_plugin_off(inner_pytest):
    result = inner_pytest('-p', 'no:pytest_nameko', 'threadko_tests')

    assert result.returncode == 0, result.output
    assert '1 passed' in result.output
    assert CONFLICT not in result.output


def test_a_threadko_directory_selects_threadko_in_its_pytest_ini(
        inner_pytest):
    # started at the repository's root: pytest reads the given directory's
    # pytest.ini (addopts = -p no:pytest_nameko)
    result = inner_pytest('threadko_tests')

    assert result.returncode == 0, result.output
    assert '1 passed' in result.output
    assert CONFLICT not in result.output


def test_a_threadko_suite_with_plugin_autoload_off(inner_pytest):
    """``--disable-plugin-autoload``: only the plugins named load, so
    ``-p threadko`` gets threadko's fixtures although Nameko's plugin is
    installed."""
    result = inner_pytest('--disable-plugin-autoload', '-p', 'threadko',
                          'threadko_tests')

    assert result.returncode == 0, result.output
    assert '1 passed' in result.output


def test_the_nameko_suite_runs_on_threadko_through_the_bridge(inner_pytest):
    result = inner_pytest('-p', 'threadko.nameko', 'nameko_tests')

    assert result.returncode == 0, result.output
    assert '2 passed' in result.output
    assert CONFLICT not in result.output
    found = report(result)
    assert found == {
        'nameko': str(ROOT / 'threadko' / '__init__.py'), 'eventlet': False,
        'bridged': True, 'pytest_nameko': False, 'threadko_fixtures': True}


def test_control_both_fixture_plugins_at_once_still_clash(inner_pytest):
    """The failure the issue describes, produced on purpose (threadko's
    fixtures forced in next to Nameko's): the checks above would see it."""
    result = inner_pytest('-p', 'threadko.testing.pytest', 'nameko_tests')

    assert result.returncode != 0
    assert 'argparse.ArgumentError' in result.output
    assert '--amqp-uri' in result.output
    assert CONFLICT in result.output
