"""Fixtures of the reliability suite (marker ``reliability``): services run
as real ``threadko run`` processes on a fresh RabbitMQ vhost, and the broker
itself can be restarted or made to drop its connections.

Every test here needs the real RabbitMQ that ``scripts/test`` starts; tests
that restart the broker also need ``rabbitmqctl`` on this machine.
"""

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from support import ChildProcess, child_env

from threadko.testing.rabbit import RabbitManagerError

HERE = Path(__file__).resolve().parent
START_WAIT = 20  # seconds for a service process to start consuming
RABBITMQCTL_TIMEOUT = 60


def pytest_itemcollected(item):
    if HERE in Path(str(item.path)).resolve().parents:
        item.add_marker(pytest.mark.reliability)
        item.add_marker(pytest.mark.rabbit)


class ServiceProcess(ChildProcess):
    """A ``threadko run`` child process (stderr collected line by line, see
    :class:`support.ChildProcess`) with views of its resources."""

    def rss_kib(self):
        """Resident memory of the process now, in KiB."""
        return _proc_status_field(self.proc.pid, 'VmRSS')

    def thread_count(self):
        """Number of OS threads of the process now."""
        return _proc_status_field(self.proc.pid, 'Threads')


def _proc_status_field(pid, field):
    with open('/proc/{}/status'.format(pid)) as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture
def service_process(tmp_path, rabbit_config):
    """``service_process(module_source, target, config=None, args=())``:
    write ``module_source`` to ``<tmp>/<module>.py`` (``target`` is
    ``module:Class``), run ``threadko run target`` there on the test's vhost
    with ``config`` merged into its YAML config, and return the
    :class:`ServiceProcess` once it logged that it is running. Processes
    still alive at teardown are killed."""
    started = []

    def start(module_source, target, config=None, args=(), wait=True):
        module = target.partition(':')[0]
        (tmp_path / (module + '.py')).write_text(
            textwrap.dedent(module_source))
        conf = {'AMQP_URI': rabbit_config['AMQP_URI']}
        conf.update(config or {})
        config_path = tmp_path / 'config-{}.yaml'.format(len(started))
        config_path.write_text(yaml.safe_dump(conf))
        process = ServiceProcess(
            [sys.executable, '-m', 'threadko', 'run', '--config',
             str(config_path), *args, target],
            str(tmp_path), child_env(), timeout=START_WAIT)
        started.append(process)
        if wait:
            process.wait_for_line('running services')
        return process

    yield start
    for process in started:
        process.close()


class Rabbitmqctl:
    """``rabbitmqctl`` on the local node, for outages the tests cause."""

    def __init__(self, executable, manager):
        self.executable = executable
        self.manager = manager
        self.app_stopped = False

    def __call__(self, *args):
        subprocess.run(
            [self.executable, '-q', *args], check=True,
            stdout=subprocess.DEVNULL, timeout=RABBITMQCTL_TIMEOUT)

    def stop_app(self):
        self.app_stopped = True
        self('stop_app')

    def start_app(self):
        """Start the broker app; return once AMQP and the management API
        (which the fixtures use to clean up) answer again."""
        self('start_app')
        self('await_startup', '--timeout', str(RABBITMQCTL_TIMEOUT))
        self.app_stopped = False
        deadline = time.monotonic() + RABBITMQCTL_TIMEOUT
        while True:
            try:
                self.manager.get_vhosts()
                return
            except RabbitManagerError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)  # polling another process's HTTP listener


@pytest.fixture
def rabbitmqctl(rabbit_manager):
    """A :class:`Rabbitmqctl`; a broker app the test left stopped is
    started again at teardown, so later tests find it running."""
    executable = shutil.which('rabbitmqctl') or shutil.which(
        'rabbitmqctl', path='/usr/sbin:/sbin')
    if executable is None:
        pytest.skip('rabbitmqctl is not installed here (the broker runs '
                    'elsewhere), so the broker cannot be restarted')
    ctl = Rabbitmqctl(executable, rabbit_manager)
    yield ctl
    if ctl.app_stopped:
        ctl.start_app()
