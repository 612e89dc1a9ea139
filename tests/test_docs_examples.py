"""The examples that docs/configuration.rst, deployment.rst,
dependency_injection.rst, writing_extensions.rst and extensions.rst include
work as those pages say."""

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from support import ChildProcess, child_env

from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.services import entrypoint_hook, entrypoint_waiter
from threadko.testing.utils import find_free_port, get_extension

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = 'examples/docs_configuration.yaml'
WAIT = 20

# the examples are imported, and `pytest` run as a script does not put the
# repository root on sys.path as `python -m pytest` does
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def environment(unset=(), **values):
    """The environment of a child process, with ``values`` set and the
    variables named in ``unset`` removed."""
    env = child_env()
    for name in unset:
        env.pop(name, None)
    env.update(values)
    return env


def threadko_command(*args, env=None, stdin=None):
    """Run ``python -m threadko ARGS`` in the repository root."""
    return subprocess.run(
        [sys.executable, '-m', 'threadko', *args], cwd=str(ROOT),
        env=env if env is not None else child_env(), input=stdin,
        capture_output=True, text=True, timeout=WAIT)


# the variables docs_configuration.yaml reads
CONFIG_VARIABLES = (
    'AMQP_URI', 'MAX_WORKERS', 'PORT', 'FOO_FEATURE_ENABLED',
    'HEARTBEAT_INTERVAL', 'DB_PASSWORD', 'LOG_LEVEL')


# -- configuration.rst --------------------------------------------------------

def test_config_file_takes_values_from_the_environment():
    env = environment(
        unset=CONFIG_VARIABLES, PORT='9001', MAX_WORKERS='4',
        FOO_FEATURE_ENABLED='true', HEARTBEAT_INTERVAL='',
        DB_PASSWORD='1234', LOG_LEVEL='DEBUG')

    result = threadko_command('show-config', '--config', CONFIG_FILE,
                              env=env)

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config['max_workers'] == 4  # an int once expanded
    assert config['WEB_SERVER_ADDRESS'] == '0.0.0.0:9001'
    assert config['FOO_FEATURE_ENABLED'] is True
    assert config['HEARTBEAT_INTERVAL'] is None  # set to "": null
    assert config['LOGGING']['root']['level'] == 'DEBUG'
    assert config['DB_PASSWORD'] == '********'  # named like a secret


def test_config_file_defaults_apply_to_unset_variables():
    env = environment(unset=CONFIG_VARIABLES)

    result = threadko_command('show-config', '--config', CONFIG_FILE,
                              '-d', 'max_workers=2', env=env)

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config['AMQP_URI'] == 'amqp://guest:********@localhost'
    assert config['WEB_SERVER_ADDRESS'] == '0.0.0.0:8000'
    assert config['HEARTBEAT_INTERVAL'] == 10
    assert config['FOO_FEATURE_ENABLED'] is False
    assert config['max_workers'] == 2  # --define wins over the file


def test_raw_env_var_keeps_digits_a_string(monkeypatch):
    from threadko.config_files import load_config

    monkeypatch.setenv('DB_PASSWORD', '1234')
    monkeypatch.setenv('MAX_WORKERS', '4')

    config = load_config(ROOT / CONFIG_FILE)

    assert config['DB_PASSWORD'] == '1234'
    assert config['max_workers'] == 4


def test_config_file_runs_the_config_example_with_the_global_config():
    """``threadko run --config`` fills ``threadko.config`` before it imports
    the services: the timer's interval comes from the environment."""
    env = environment(unset=CONFIG_VARIABLES, AMQP_URI='memory://',
                      HEARTBEAT_INTERVAL='0.05', PORT=str(find_free_port()))
    heartbeat = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--config', CONFIG_FILE,
         'examples.config_dependency_provider:Heartbeat'],
        str(ROOT), env, stream='both', timeout=WAIT)
    try:
        # the log line (threadko's loggers survive the LOGGING config)
        started = heartbeat.wait_for_line('running services: heartbeat')
        heartbeat.lines.remove(started)
        for _ in range(3):  # the default interval is 10 s
            heartbeat.lines.remove(
                heartbeat.wait_for_line('heartbeat', timeout=5))
        heartbeat.send_signal(signal.SIGTERM)
        assert heartbeat.wait() == 0
    finally:
        heartbeat.close()


# -- extensions.rst -----------------------------------------------------------

def test_timer_example_pings_every_second(container_factory, capsys):
    from examples.timer import TimerExample

    container = container_factory(TimerExample, {})
    container.start()
    with entrypoint_waiter(container, 'ping', timeout=5):
        pass
    assert 'timer_example: ping at ' in capsys.readouterr().out
    container.stop()


# -- deployment.rst -----------------------------------------------------------

def test_health_checks_answer_over_http_and_rpc(
        container_factory, memory_config, web_config, web_session):
    from examples.docs_deployment import Orders

    container_factory(Orders).start()

    response = web_session.get('/health')
    assert (response.status_code, response.text) == (200, 'ok')
    with ClusterRpcProxy(memory_config, timeout=WAIT) as cluster:
        assert cluster.orders.ping() == 'pong'


@pytest.mark.rabbit
def test_health_check_from_a_shell_script(rabbit_config):
    """The command deployment.rst shows: a script piped to ``threadko
    shell`` calls ``ping`` on a service run by ``threadko run``."""
    uri = rabbit_config['AMQP_URI']
    service = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         '-d', 'WEB_SERVER_ADDRESS=127.0.0.1:{}'.format(find_free_port()),
         'examples.docs_deployment'],
        str(ROOT), child_env(), stream='both', timeout=WAIT)
    try:
        service.wait_for_line('running services: orders')
        result = threadko_command(
            'shell', '--broker', uri,
            stdin='print(n.rpc.orders.ping())\n')
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == 'pong'
        service.send_signal(signal.SIGTERM)
        assert service.wait() == 0
    finally:
        service.close()


# -- dependency_injection.rst -------------------------------------------------

@pytest.fixture
def inventory(container_factory, memory_config, tmp_path):
    from examples.docs_dependency_injection import Inventory

    container = container_factory(Inventory, {
        'DB_PATH': str(tmp_path / 'inventory.db'), 'max_workers': 4})
    container.start()
    return container


def test_workers_share_a_pool_of_at_most_max_workers_connections(inventory):
    from examples.docs_dependency_injection import Database

    with entrypoint_hook(inventory, 'add') as add:
        with ThreadPoolExecutor(8, thread_name_prefix='test-caller') as pool:
            list(pool.map(lambda n: add('anvil', n), range(1, 41)))

    with entrypoint_hook(inventory, 'stock') as stock:
        assert stock('anvil') == sum(range(1, 41))
        assert stock('rope') == 0
    database = get_extension(inventory, Database)
    assert 1 <= database.pool.opened <= 4
    assert database._transactions == {}  # every worker was torn down


def test_what_a_worker_did_not_commit_is_rolled_back(inventory, monkeypatch):
    from examples.docs_dependency_injection import Inventory

    with entrypoint_hook(inventory, 'add') as add:
        add('anvil', 1)

    def add_then_fail(self, sku, count):
        self.db.execute(
            'insert into moves (sku, count) values (?, ?)', (sku, count))
        raise RuntimeError('failed before the commit')

    # the container's entrypoint calls whatever the class has as `add`
    monkeypatch.setattr(Inventory, 'add', add_then_fail)
    with entrypoint_hook(inventory, 'add') as add:
        with pytest.raises(RuntimeError):
            add('anvil', 100)

    with entrypoint_hook(inventory, 'stock') as stock:
        assert stock('anvil') == 1


def test_stopping_closes_the_pool(inventory):
    from examples.docs_dependency_injection import Database

    with entrypoint_hook(inventory, 'add') as add:
        add('anvil', 1)
    database = get_extension(inventory, Database)
    assert database.pool.opened == 1

    inventory.stop()
    assert database.pool.opened == 0


# -- writing_extensions.rst ---------------------------------------------------

@pytest.fixture
def spool(tmp_path):
    directory = tmp_path / 'spool'
    directory.mkdir()
    return directory


@pytest.fixture
def importer(container_factory, spool):
    from examples.docs_writing_extensions import Importer

    container = container_factory(Importer, {
        'SPOOL_DIR': str(spool), 'SPOOL_POLL_INTERVAL': 0.02})
    container.start()
    return container


def drop(spool, name, text):
    """Write a file as the docstring says: under a hidden name, renamed."""
    hidden = spool / ('.' + name)
    hidden.write_text(text, encoding='utf-8')
    os.replace(hidden, spool / name)


def test_each_file_dropped_in_the_spool_runs_its_method(
        importer, spool, capsys):
    with entrypoint_waiter(importer, 'report', timeout=WAIT) as result:
        drop(spool, 'orders.csv', 'a\nb\nc\n')

    assert result.get() == 3
    assert 'importer: orders.csv has 3 rows' in capsys.readouterr().out
    # both files were handled and deleted
    assert sorted(path.name for path in spool.iterdir()) == ['failed']


def test_a_file_whose_worker_fails_is_moved_aside(importer, spool):
    with entrypoint_waiter(importer, 'count_rows', timeout=WAIT) as result:
        drop(spool, 'empty.csv', '')

    with pytest.raises(ValueError):
        result.get()
    assert (spool / 'failed' / 'empty.csv').exists()
    assert not (spool / 'empty.csv').exists()


def test_files_wait_on_disk_while_every_worker_is_busy(
        container_factory, spool, monkeypatch):
    """``spawn_worker`` blocks the watcher while ``max_workers`` workers are
    busy, so the files beyond those stay in the spool."""
    from examples.docs_writing_extensions import Importer

    release = threading.Event()
    started = []
    started_lock = threading.Lock()
    two_started = threading.Event()

    def count_rows(self, path):
        with started_lock:
            started.append(os.path.basename(path))
            if len(started) == 2:
                two_started.set()
        release.wait(WAIT)

    container = container_factory(Importer, {
        'SPOOL_DIR': str(spool), 'SPOOL_POLL_INTERVAL': 0.02,
        'max_workers': 2})
    # after the container bound its entrypoints to the real method
    monkeypatch.setattr(Importer, 'count_rows', count_rows)
    container.start()
    try:
        for name in ('a.csv', 'b.csv', 'c.csv'):
            drop(spool, name, 'x\n')
        assert two_started.wait(WAIT)
        assert sorted(started) == ['a.csv', 'b.csv']
        assert (spool / 'c.csv').exists()

        last = str(spool / 'c.csv')
        with entrypoint_waiter(
                container, 'count_rows', timeout=WAIT,
                callback=lambda worker_ctx, *_: worker_ctx.args == (last,)):
            release.set()
    finally:
        release.set()
    container.stop()
    assert sorted(path.name for path in spool.iterdir()) == ['failed']


def test_extensions_bind_to_the_mock_container(mock_container, tmp_path):
    """The unit-test set-up writing_extensions.rst describes."""
    from examples.docs_writing_extensions import FileEntrypoint, SpoolWriter

    mock_container.config['SPOOL_DIR'] = str(tmp_path)
    writer = SpoolWriter().bind(mock_container, 'write_to_spool')
    writer.setup()
    writer.get_dependency(None)('a.count', '3')
    assert (tmp_path / 'a.count').read_text(encoding='utf-8') == '3'
    assert not list(tmp_path.glob('.*'))  # the hidden name was renamed

    # the fixture's shared_extensions is an empty dict: binding works as is
    entrypoint = FileEntrypoint('*.csv').bind(mock_container, 'count_rows')
    assert entrypoint.method_name == 'count_rows'
    assert entrypoint.watcher.is_bound()


def test_stopping_ends_the_watcher_thread(importer):
    importer.stop()

    assert not [thread for thread in threading.enumerate()
                if thread.name == 'threadko-importer-spool-watcher']
