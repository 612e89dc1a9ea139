"""Suite-wide guard: every thread threadko starts must be gone once the test
that started it has torn down (containers stopped or killed, blocked workers
released)."""

import logging
import signal
import threading
import time

import pytest

from threadko.containers import ServiceContainer

LEAK_GRACE = 5.0  # seconds for threads that are already on their way out

# A test run started in the background by a non-interactive shell inherits
# an ignored SIGINT, and so would every child process the tests send Ctrl-C
# to; a handler here makes children start with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# a Nameko project, run by tests/test_nameko_ecosystem.py in a child pytest
# of its own (its pytest.ini, the community extensions on PYTHONPATH)
collect_ignore = ['nameko_project']


def _threadko_threads():
    return {t for t in threading.enumerate() if t.name.startswith('threadko-')}


@pytest.fixture(autouse=True)
def no_leaked_threadko_threads():
    before = _threadko_threads()
    yield
    deadline = time.monotonic() + LEAK_GRACE
    leaked = _threadko_threads() - before
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sorted(t.name for t in leaked if t.is_alive())
    assert not alive, 'threads left running after the test: {}'.format(alive)


@pytest.fixture
def log_collector():
    """A :class:`support.LogCollector` of every ``threadko`` log record
    (at DEBUG too) during the test."""
    from support import LogCollector
    collector = LogCollector()
    logger = logging.getLogger('threadko')
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    yield collector
    logger.removeHandler(collector)
    logger.setLevel(level)


@pytest.fixture
def containers():
    """Containers made by a test; killed at teardown if still alive."""
    made = []

    def make(service_cls, config=None):
        container = ServiceContainer(
            service_cls, {} if config is None else config)
        made.append(container)
        return container

    yield make
    for container in made:
        container.kill()


class BrokerUnderTest:
    """A fresh vhost on one of the two brokers the AMQP scenarios run on."""

    def __init__(self, kind, config, drop_connections):
        self.kind = kind
        self.config = config
        self._drop_connections = drop_connections

    def drop_connections(self):
        """Make the broker close every connection of this vhost, as
        `rabbitmqctl close_all_connections` does."""
        self._drop_connections()

    def __repr__(self):
        return '<{} broker {}>'.format(self.kind, self.config['AMQP_URI'])


def _rabbitmqctl_close_all(vhost):
    import subprocess
    subprocess.run(
        ['rabbitmqctl', '--quiet', 'close_all_connections', '--vhost', vhost,
         'closed by threadko test'],
        check=True, capture_output=True, timeout=30)


@pytest.fixture(params=['memory', 'rabbit'])
def broker(request):
    """Runs a test once on the embedded ``memory://`` broker and once on
    RabbitMQ, each time on a vhost of its own."""
    if request.param == 'memory':
        from threadko.amqp import memory
        config = request.getfixturevalue('memory_config')
        return BrokerUnderTest(
            'memory', config,
            lambda: memory.get_broker(config['vhost']).close_all_connections())
    config = request.getfixturevalue('rabbit_config')
    return BrokerUnderTest(
        'rabbit', config, lambda: _rabbitmqctl_close_all(config['vhost']))
