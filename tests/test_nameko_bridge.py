"""The nameko bridge (:func:`threadko.install_as_nameko`): after it, every
``import nameko...`` gives threadko's module of the same path.

Installing it changes the import system for the rest of the process, so
each test runs its checks in a child process: a script (``python -c``
style), ``pytest -p threadko.nameko`` on a small Nameko project, or the
``threadko`` command with ``--nameko-bridge``. A stand-in for the real
Nameko (and for eventlet) is first on the children's ``sys.path``: a
package that notes, in a file, that it was imported."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import ChildProcess, child_env
from threadko.bridge import MISSING

TESTS_DIR = Path(__file__).resolve().parent
CHILD_TIMEOUT = 60  # seconds for a child process to finish
CLI_WAIT = 15  # seconds for ``threadko run`` to log something

#: Nameko 2.14.1's modules (its wheel's ``nameko/**.py``)
NAMEKO_2_14_MODULES = [
    'nameko', 'nameko.__main__', 'nameko.amqp', 'nameko.amqp.publish',
    'nameko.cli', 'nameko.cli.actions', 'nameko.cli.backdoor',
    'nameko.cli.code', 'nameko.cli.commands', 'nameko.cli.main',
    'nameko.cli.run', 'nameko.cli.shell', 'nameko.cli.show_config',
    'nameko.constants', 'nameko.containers', 'nameko.contextdata',
    'nameko.dependency_providers', 'nameko.events', 'nameko.exceptions',
    'nameko.extensions', 'nameko.log_helpers', 'nameko.messaging',
    'nameko.rpc', 'nameko.runners', 'nameko.serialization',
    'nameko.standalone', 'nameko.standalone.events',
    'nameko.standalone.rpc', 'nameko.testing', 'nameko.testing.pytest',
    'nameko.testing.rabbit', 'nameko.testing.services',
    'nameko.testing.utils', 'nameko.testing.waiting',
    'nameko.testing.websocket', 'nameko.timer', 'nameko.utils',
    'nameko.utils.concurrency', 'nameko.utils.retry', 'nameko.web',
    'nameko.web.handlers', 'nameko.web.server', 'nameko.web.websocket',
]
#: Nameko's modules that neither threadko nor MISSING has: the command
#: line's internals (threadko's commands are click commands)
NOT_PROVIDED = ['nameko.cli.actions', 'nameko.cli.code',
                'nameko.cli.commands']

#: what the stand-ins write to ``imported.txt`` when they are imported
RECORDING_PACKAGE = '''\
import os

with open(os.path.join(os.path.dirname(__file__), os.pardir,
                       "imported.txt"), "a") as record:
    record.write(__name__ + "\\n")
STAND_IN = True
'''


@pytest.fixture
def stand_ins(tmp_path):
    """A directory holding a stand-in ``nameko`` package (with ``rpc``,
    ``testing.pytest`` and ``exceptions`` submodules) and ``eventlet``
    package, each of which records its import; ``imported()`` lists
    what was."""
    root = tmp_path / 'stand-ins'
    for name in ('nameko/__init__.py', 'nameko/rpc.py',
                 'nameko/exceptions.py', 'nameko/testing/__init__.py',
                 'nameko/testing/pytest.py', 'eventlet/__init__.py'):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RECORDING_PACKAGE)

    class StandIns:
        path = root

        @staticmethod
        def imported():
            record = root / 'imported.txt'
            return record.read_text().split() if record.exists() else []

    return StandIns


@pytest.fixture
def run_child(tmp_path, stand_ins):
    """``run_child(source)``: run ``source`` in a new Python, with the
    stand-ins first on its path; returns the completed process, after
    checking it exited 0 (unless ``check=False``) and that the stand-ins
    were not imported (unless ``stand_ins_imported=True``)."""
    def run(source, check=True, stand_ins_imported=False):
        script = tmp_path / 'child_script.py'
        script.write_text(textwrap.dedent(source))
        result = subprocess.run(
            [sys.executable, str(script)], cwd=str(tmp_path),
            env=child_env(PYTHONPATH=str(stand_ins.path)),
            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        if not stand_ins_imported:
            assert stand_ins.imported() == [], result.stderr
        return result
    return run


def last_json(result):
    """The JSON document on the last line of a child's stdout."""
    return json.loads(result.stdout.splitlines()[-1])


# -- the same modules ---------------------------------------------------------

def test_every_threadko_module_is_the_nameko_module_of_the_same_path(
        run_child):
    result = run_child('''
        import importlib, json, pkgutil, sys

        import threadko
        from threadko.bridge import MISSING

        threadko.install_as_nameko()

        names = ["threadko"] + sorted(
            info.name for info in pkgutil.walk_packages(
                threadko.__path__, "threadko."))
        checked, missing = [], []
        for name in names:
            alias = "nameko" + name[len("threadko"):]
            if alias in MISSING:
                missing.append(alias)
                continue
            module = importlib.import_module(alias)
            assert module is importlib.import_module(name), name
            assert sys.modules[alias] is sys.modules[name], name
            # the alias did not rename the module, nor change its spec
            assert module.__name__ == name, module.__name__
            assert module.__spec__.name == name, (name, module.__spec__)
            assert module.__loader__ is module.__spec__.loader, name
            assert type(module.__loader__).__name__ == "SourceFileLoader"
            checked.append(alias)

        from nameko.rpc import rpc
        from nameko import config
        import nameko
        assert rpc is threadko.rpc.rpc
        assert config is threadko.config
        assert nameko is threadko

        # every nameko module in this process is a threadko module
        for name, module in sorted(sys.modules.items()):
            if name == "nameko" or name.startswith("nameko."):
                assert module.__name__.startswith("threadko"), name
        print(json.dumps({
            "checked": checked, "missing": missing,
            "eventlet": sorted(m for m in sys.modules
                               if m.split(".")[0] == "eventlet")}))
    ''')

    report = last_json(result)
    assert report['eventlet'] == []
    assert report['missing'] == ['nameko.amqp.publish']
    assert len(report['checked']) > 50
    # each Nameko 2.14.1 module: threadko's namesake, or an ImportError
    # that says what to do (the next tests)
    for name in NAMEKO_2_14_MODULES:
        assert (name in report['checked']) != (
            name in MISSING or name in NOT_PROVIDED), name


def test_a_nameko_name_imported_first_gives_threadkos_module_unrenamed(
        run_child):
    run_child('''
        import importlib.machinery, sys

        import threadko

        threadko.install_as_nameko()
        assert "threadko.rpc" not in sys.modules
        assert "threadko.testing.services" not in sys.modules

        from nameko.rpc import rpc                   # imports threadko.rpc
        import nameko.testing.services

        import threadko.rpc
        import threadko.testing.services
        assert rpc is threadko.rpc.rpc
        assert nameko.testing.services is threadko.testing.services
        for module in (threadko.rpc, threadko.testing,
                       threadko.testing.services):
            name = module.__name__
            assert name.startswith("threadko."), name
            assert module.__spec__.name == name, module.__spec__
            assert isinstance(module.__spec__.loader,
                              importlib.machinery.SourceFileLoader)
        assert threadko.testing.__path__ == threadko.testing.__spec__.\\
            submodule_search_locations
        assert "nameko.testing" in sys.modules
        assert sys.modules["nameko.testing"] is threadko.testing
    ''')


def test_classes_agree_whichever_name_imported_them(run_child):
    run_child('''
        import threadko

        threadko.install_as_nameko()

        from nameko.containers import ServiceContainer
        from nameko.dependency_providers import Config
        from nameko.exceptions import RemoteError
        from nameko.extensions import DependencyProvider
        from nameko.rpc import rpc
        from nameko.testing.services import worker_factory

        import threadko.containers
        import threadko.dependency_providers
        import threadko.exceptions
        import threadko.extensions
        import threadko.rpc


        class Service:
            name = "service"
            config = Config()

            @rpc
            def method(self):
                return self.config.get("x")


        container = ServiceContainer(Service, {"x": 1})
        assert isinstance(container, threadko.containers.ServiceContainer)
        assert type(container) is threadko.containers.ServiceContainer
        rpcs = [ext for ext in container.entrypoints
                if isinstance(ext, threadko.rpc.Rpc)]
        assert len(rpcs) == 1
        providers = [ext for ext in container.dependencies
                     if isinstance(ext, threadko.dependency_providers.Config)]
        assert len(providers) == 1
        assert isinstance(providers[0], DependencyProvider)
        assert DependencyProvider is threadko.extensions.DependencyProvider
        assert RemoteError is threadko.exceptions.RemoteError
        try:
            raise threadko.exceptions.RemoteError("KeyError", "x")
        except RemoteError as exc:
            assert exc.exc_type == "KeyError"
        service = worker_factory(Service)
        service.config.get.return_value = 2
        assert service.method() == 2
    ''')


# -- what threadko does not have ----------------------------------------------

def test_missing_modules_raise_an_import_error_that_says_what_to_do(
        run_child):
    result = run_child('''
        import json

        import threadko
        from threadko.bridge import MISSING

        threadko.install_as_nameko()

        statements = ["import " + name for name in sorted(MISSING)] + [
            # the same modules reached through their package
            "from nameko.utils import retry",
            "from nameko.cli import backdoor",
            # a Nameko module threadko has no counterpart of
            "import nameko.cli.commands",
            # no such module in Nameko either
            "import nameko.nonexistent",
            "from nameko.nonexistent import anything",
        ]
        raised = {}
        for statement in statements:
            try:
                exec(statement)
            except ImportError as exc:
                raised[statement] = [type(exc).__name__, exc.name, str(exc)]
            else:
                raised[statement] = None
        print(json.dumps(raised))
    ''')

    raised = last_json(result)
    expected = {'import ' + name: (name, advice)
                for name, advice in MISSING.items()}
    expected.update({
        'from nameko.utils import retry': (
            'nameko.utils.retry', MISSING['nameko.utils.retry']),
        'from nameko.cli import backdoor': (
            'nameko.cli.backdoor', MISSING['nameko.cli.backdoor']),
    })
    for statement, (name, advice) in expected.items():
        assert raised[statement] == [
            'ModuleNotFoundError', name,
            'No module named {!r} under the nameko bridge: {}'.format(
                name, advice)], statement
    for statement, name in [
            ('import nameko.cli.commands', 'nameko.cli.commands'),
            ('import nameko.nonexistent', 'nameko.nonexistent'),
            ('from nameko.nonexistent import anything',
             'nameko.nonexistent')]:
        kind, exc_name, message = raised[statement]
        assert (kind, exc_name) == ('ModuleNotFoundError', name)
        assert message == (
            "No module named {!r} under the nameko bridge: threadko has no "
            "threadko{} to stand in for it. Rewrite that import (see the "
            "migration guide), or report the missing module".format(
                name, name[len('nameko'):]))


def test_missing_advice_names_what_to_use():
    assert 'threadko shell' in MISSING['nameko.cli.backdoor']
    assert 'tenacity' in MISSING['nameko.utils.retry']
    assert 'threadko.messaging.Publisher' in MISSING['nameko.amqp.publish']


def test_nameko_amqp_is_threadkos_for_undeliverable_message(run_child):
    """``nameko.amqp`` has a counterpart (its ``UndeliverableMessage`` is
    what code imports from it); its kombu ``publish`` module has not."""
    run_child('''
        import threadko

        threadko.install_as_nameko()

        from nameko.amqp import UndeliverableMessage
        import nameko.amqp
        import threadko.amqp
        import threadko.exceptions

        assert nameko.amqp is threadko.amqp
        assert UndeliverableMessage is threadko.exceptions.UndeliverableMessage
    ''')


# -- never the real Nameko, never eventlet ------------------------------------

def test_the_real_nameko_and_eventlet_are_never_imported(
        run_child, stand_ins):
    # the stand-ins are importable (so first on the path) without the
    # bridge...
    result = run_child('''
        import nameko, nameko.rpc, eventlet
        assert nameko.STAND_IN and nameko.rpc.STAND_IN and eventlet.STAND_IN
    ''', stand_ins_imported=True)
    assert stand_ins.imported() == ['nameko', 'nameko.rpc', 'eventlet']
    (stand_ins.path / 'imported.txt').unlink()

    # ...and never imported with it, whatever is imported through it
    result = run_child('''
        import importlib, json, sys

        import threadko

        threadko.install_as_nameko()
        import nameko
        import nameko.rpc
        import nameko.testing.pytest
        from nameko.exceptions import RemoteError
        from nameko.standalone.rpc import ClusterRpcProxy
        from nameko.testing.services import entrypoint_hook
        assert not hasattr(nameko, "STAND_IN")
        assert not hasattr(nameko.rpc, "STAND_IN")
        print(json.dumps(sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("eventlet", "greenlet", "kombu"))))
    ''')
    assert last_json(result) == []


def test_installing_twice_is_harmless(run_child):
    run_child('''
        import sys

        import threadko
        from threadko import bridge

        assert not bridge.is_installed()
        threadko.install_as_nameko()
        threadko.install_as_nameko()
        import threadko.nameko  # the pytest plugin installs it too
        assert bridge.is_installed()
        finders = [finder for finder in sys.meta_path
                   if type(finder).__name__ == "_NamekoFinder"]
        assert finders == [sys.meta_path[0]]
        import nameko.rpc
        assert nameko.rpc is sys.modules["threadko.rpc"]
    ''')


def test_installing_after_the_real_nameko_was_imported_says_what_to_do(
        run_child, stand_ins):
    result = run_child('''
        import nameko  # the real one (here, its stand-in)

        import threadko
        from threadko import bridge

        try:
            threadko.install_as_nameko()
        except RuntimeError as exc:
            print(exc)
        else:
            raise AssertionError("installed over the real nameko")
        assert not bridge.is_installed()
        import nameko.rpc
        assert nameko.rpc.STAND_IN
    ''', stand_ins_imported=True)

    assert stand_ins.imported() == ['nameko', 'nameko.rpc']
    message = result.stdout.strip()
    assert message == (
        'The real Nameko is imported already ({}): call '
        'threadko.install_as_nameko() before anything imports nameko '
        '(first thing in your entry point or conftest.py, or use '
        '`threadko run --nameko-bridge` / `pytest -p threadko.nameko`)'
        .format(stand_ins.path / 'nameko' / '__init__.py'))


# -- pytest -p threadko.nameko ------------------------------------------------

PROJECT_SERVICE = '''\
"""A service written for Nameko, imports and all."""

from nameko.exceptions import BadRequest
from nameko.rpc import RpcProxy, rpc


class Failure(Exception):
    pass


class Greeter:
    name = "greeter"

    @rpc
    def hello(self, name):
        return "hello, {}".format(name)

    @rpc
    def fail(self):
        raise Failure("boom")

    @rpc
    def refuse(self):
        raise BadRequest("no")


class Caller:
    name = "caller"

    greeter = RpcProxy("greeter")

    @rpc
    def call(self, name):
        return self.greeter.hello(name)
'''

PROJECT_CONFTEST = '''\
import pytest
from nameko.testing.services import entrypoint_hook


@pytest.fixture
def config(rabbit_config):
    """A project fixture built on Nameko's."""
    return dict(rabbit_config, max_workers=4)


@pytest.fixture
def call(container_factory, config):
    """``call(method, *args)`` through a started Caller's hook."""
    from service import Caller

    container = container_factory(Caller, config)
    container.start()

    def call_method(method, *args):
        with entrypoint_hook(container, method) as hook:
            return hook(*args)
    return call_method
'''

PROJECT_TESTS = '''\
import sys

import pytest

import nameko
from nameko.exceptions import MethodNotFound, RemoteError
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import worker_factory

from service import Caller, Greeter
from support import RawRpcCaller


def test_runs_on_threadko():
    import threadko
    import threadko.exceptions
    import threadko.rpc

    assert nameko is threadko
    assert nameko.rpc is threadko.rpc
    assert RemoteError is threadko.exceptions.RemoteError
    assert "eventlet" not in sys.modules


def test_unit(request):
    caller = worker_factory(Caller)
    caller.greeter.hello.return_value = "mocked"
    assert caller.call("you") == "mocked"
    # the fixtures came from threadko, Nameko's plugin kept away
    plugins = request.config.pluginmanager
    assert plugins.has_plugin("threadko.testing.pytest")
    assert not plugins.has_plugin("pytest_nameko")


def test_rpc_on_rabbitmq(container_factory, config, call):
    container_factory(Greeter, config).start()

    assert call("call", "hook") == "hello, hook"
    with ClusterRpcProxy(config) as cluster:
        assert cluster.caller.call("rpc") == "hello, rpc"
        with pytest.raises(RemoteError) as raised:
            cluster.greeter.fail()
        assert (raised.value.exc_type, raised.value.value) == (
            "Failure", "boom")
        with pytest.raises(RemoteError) as raised:
            cluster.greeter.refuse()
        assert raised.value.exc_type == "BadRequest"
        with pytest.raises(MethodNotFound):
            cluster.greeter.no_such_method()

    # on the wire, the error objects Nameko would send
    raw = RawRpcCaller(config["AMQP_URI"])
    try:
        errors = {}
        for method in ("fail", "refuse"):
            call_id = raw.publish(
                "greeter." + method, b'{"args": [], "kwargs": {}}')
            errors[method] = raw.reply(call_id)["error"]
    finally:
        raw.close()
    assert errors["fail"] == {
        "exc_type": "Failure", "exc_path": "service.Failure",
        "exc_args": ["boom"], "value": "boom"}
    assert errors["refuse"] == {
        "exc_type": "BadRequest", "exc_path": "nameko.exceptions.BadRequest",
        "exc_args": ["no"], "value": "no"}
'''


@pytest.fixture
def nameko_project(tmp_path):
    """A small project written for Nameko: a service module, a conftest
    with fixtures of its own on Nameko's, and tests that import
    ``nameko``."""
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'service.py').write_text(PROJECT_SERVICE)
    (project / 'conftest.py').write_text(PROJECT_CONFTEST)
    (project / 'test_service.py').write_text(PROJECT_TESTS)
    (project / 'pytest.ini').write_text('[pytest]\n')
    return project


@pytest.mark.rabbit
@pytest.mark.parametrize('autoload', ['autoload', 'no-autoload'])
def test_pytest_p_threadko_nameko_runs_a_nameko_suite_unchanged(
        nameko_project, stand_ins, autoload):
    env = child_env(PYTHONPATH=os.pathsep.join(
        [str(stand_ins.path), str(TESTS_DIR)]))
    if autoload == 'no-autoload':
        # plugins load only when named: -p threadko.nameko is enough
        env['PYTEST_DISABLE_PLUGIN_AUTOLOAD'] = '1'
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'threadko.nameko',
         '-p', 'no:cacheprovider', '-q', '-rA'],
        cwd=str(nameko_project), env=env, capture_output=True, text=True,
        timeout=CHILD_TIMEOUT)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert '3 passed' in output, output
    assert stand_ins.imported() == []


def test_without_the_plugin_the_suite_imports_the_real_nameko(
        nameko_project, stand_ins):
    """The contrast: without ``-p threadko.nameko`` the same suite gets
    whatever ``nameko`` is installed (here, the stand-in)."""
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
         'test_service.py::test_unit'],
        cwd=str(nameko_project), env=child_env(PYTHONPATH=os.pathsep.join(
            [str(stand_ins.path), str(TESTS_DIR)])),
        capture_output=True, text=True, timeout=CHILD_TIMEOUT)

    assert result.returncode != 0
    assert 'nameko' in stand_ins.imported()


# -- threadko run / shell --nameko-bridge -------------------------------------

CLI_SERVICE = '''\
"""A service written for Nameko."""

import logging
import sys

import nameko
from nameko.rpc import rpc
from nameko.timer import timer

log = logging.getLogger("ticker")


class Ticker:
    name = "ticker"

    @timer(interval=0.05, eager=True)
    def tick(self):
        log.info("tick: nameko is %s, eventlet imported: %s",
                 nameko.__name__, "eventlet" in sys.modules)

    @rpc
    def ping(self):
        return "pong"
'''


@pytest.fixture
def cli_workdir(tmp_path):
    workdir = tmp_path / 'cli'
    workdir.mkdir()
    (workdir / 'ticker.py').write_text(CLI_SERVICE)
    return workdir


def test_threadko_run_nameko_bridge_runs_a_nameko_service(
        cli_workdir, stand_ins):
    cli = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--nameko-bridge',
         '--broker', 'memory://', 'ticker:Ticker'],
        cwd=str(cli_workdir),
        env=child_env(PYTHONPATH=str(stand_ins.path)), timeout=CLI_WAIT)
    try:
        assert 'running services: ticker' in cli.wait_for_line(
            'running services')
        assert cli.wait_for_line('tick: ').endswith(
            'tick: nameko is threadko, eventlet imported: False')
        cli.send_signal(signal.SIGTERM)
        assert cli.wait() == 0, cli.output
    finally:
        cli.close()
    assert stand_ins.imported() == []


def test_threadko_run_without_the_bridge_cannot_import_nameko(cli_workdir):
    # (no Nameko in threadko's virtualenv)
    result = subprocess.run(
        [sys.executable, '-m', 'threadko', 'run', '--broker', 'memory://',
         'ticker:Ticker'],
        cwd=str(cli_workdir), env=child_env(), capture_output=True,
        text=True, timeout=CHILD_TIMEOUT)

    assert result.returncode == 1
    assert "No module named 'nameko'" in result.stderr


def test_the_run_and_shell_help_list_the_option():
    for command in ('run', 'shell'):
        result = subprocess.run(
            [sys.executable, '-m', 'threadko', command, '--help'],
            env=child_env(), capture_output=True, text=True,
            timeout=CHILD_TIMEOUT)
        assert result.returncode == 0
        assert '--nameko-bridge' in result.stdout


SHELL_SCRIPT = '''\
import sys

import nameko
from nameko.containers import ServiceContainer
from nameko.exceptions import RemoteError
from nameko.rpc import rpc

import ticker


class Greeter:
    name = "greeter"

    @rpc
    def hello(self, name):
        return "hello, " + name

    @rpc
    def fail(self):
        raise KeyError("x")


containers = [ServiceContainer(cls, n.config)
              for cls in (Greeter, ticker.Ticker)]
for container in containers:
    container.start()
try:
    print(n.rpc.greeter.hello("shell"))
    print(n.rpc.ticker.ping())
    try:
        n.rpc.greeter.fail()
    except RemoteError as exc:
        print("RemoteError", exc.exc_type, type(exc).__module__)
    print(nameko.__name__, "eventlet" in sys.modules)
finally:
    for container in containers:
        container.stop()
'''


def test_threadko_shell_nameko_bridge_runs_a_script_that_imports_nameko(
        cli_workdir, stand_ins):
    result = subprocess.run(
        [sys.executable, '-m', 'threadko', 'shell', '--nameko-bridge',
         '--broker', 'memory://'],
        input=SHELL_SCRIPT, cwd=str(cli_workdir),
        env=child_env(PYTHONPATH=str(stand_ins.path)), capture_output=True,
        text=True, timeout=CHILD_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'hello, shell',
        'pong',
        'RemoteError KeyError threadko.exceptions',
        'threadko False',
    ]
    assert stand_ins.imported() == []
