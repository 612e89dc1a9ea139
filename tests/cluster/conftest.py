"""Fixtures for tests against a three-node RabbitMQ cluster on loopback
(``scripts/rabbitmq cluster``, marker ``cluster``).

Which cluster, decided once per session by :func:`rabbit_cluster`:

* one that already runs (any node of it answers) is used and left
  running; nodes of it that are down are started first. ``scripts/test``
  starts the cluster that way;
* otherwise, with ``THREADKO_TEST_CLUSTER=start`` in the environment, the
  fixture starts it and stops it at the end of the session;
* otherwise every test here is skipped, saying how to get a cluster.

Tests here get a 180 s timeout unless they set their own: the first one
may wait for the cluster to start.

After each test, nodes the test killed or stopped are started again
(:func:`cluster_nodes_restored`), so a test cannot break the next one.
Other changes to the nodes (``stop_app``, a memory watermark) are the
test's to undo. The management API is served by node 1 only.
"""

import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from threadko.testing.rabbit import RabbitManager, RabbitManagerError

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / 'scripts' / 'rabbitmq-cluster'
# as in scripts/rabbitmq-cluster
PORT_BASE = int(os.environ.get('THREADKO_TEST_CLUSTER_PORT_BASE', '5680'))
NODE_PREFIX = os.environ.get('THREADKO_TEST_CLUSTER_NODE_PREFIX', 'tk')
NODES = (1, 2, 3)
START_TIMEOUT = 240  # seconds for the script to start nodes on a busy machine
TEST_TIMEOUT = 180


def pytest_itemcollected(item):
    if HERE in Path(str(item.path)).resolve().parents:
        item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker('timeout') is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


def _script(*args, timeout=START_TIMEOUT, check=True):
    result = subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True,
        timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            'scripts/rabbitmq-cluster {} failed (exit {}):\n{}{}'.format(
                ' '.join(map(str, args)), result.returncode, result.stdout,
                result.stderr))
    return result


class RabbitCluster:
    """The three-node cluster: addresses, node control and the management
    API (on node 1). Nodes are numbered 1, 2, 3."""

    nodes = NODES
    username = 'guest'
    password = 'guest'

    def __init__(self, port_base=PORT_BASE):
        self.port_base = port_base
        #: ``['tk1@localhost', 'tk2@localhost', 'tk3@localhost']``
        self.node_names = ['{}{}@localhost'.format(NODE_PREFIX, n)
                           for n in NODES]
        #: each node's AMQP URI, on the default vhost
        self.amqp_uris = [self.uri(n) for n in NODES]
        #: the failover list ``uri1;uri2;uri3`` on the default vhost
        self.AMQP_URI = self.failover_uri()
        #: the management API's base URL (node 1)
        self.api_url = 'http://localhost:{}/api'.format(port_base + 10001)
        self.manager = RabbitManager('http://{}:{}@localhost:{}'.format(
            self.username, self.password, port_base + 10001))

    def port(self, n):
        """Node ``n``'s AMQP port."""
        return self.port_base + n

    def uri(self, n, vhost='/'):
        """Node ``n``'s AMQP URI for ``vhost``."""
        return 'amqp://{}:{}@localhost:{}/{}'.format(
            self.username, self.password, self.port(n),
            quote(vhost, safe=''))

    def failover_uri(self, vhost='/', order=NODES):
        """The nodes' URIs for ``vhost`` as one failover list, tried in
        ``order``."""
        return ';'.join(self.uri(n, vhost) for n in order)

    # -- node control (through scripts/rabbitmq-cluster) ---------------

    def kill(self, n):
        """``kill -9`` node ``n``'s Erlang VM; returns once it is gone."""
        _script('kill', n)

    def stop_node(self, n):
        """Stop node ``n`` gracefully; returns once it is gone."""
        _script('stop-node', n)

    def start_node(self, n):
        """Start node ``n`` again; returns once it is back in the cluster."""
        _script('start-node', n)

    def ctl(self, n, *args, timeout=120):
        """``rabbitmqctl ARGS`` against node ``n``; returns its stdout,
        raises ``AssertionError`` (with the output) if it fails."""
        return _script('ctl', n, *args, timeout=timeout).stdout

    def queues(self, n, *args, timeout=120):
        """``rabbitmq-queues ARGS`` against node ``n``, as :meth:`ctl`."""
        return _script('queues', n, *args, timeout=timeout).stdout

    def running_nodes(self):
        """The running members (node names, sorted) as the first node that
        answers sees them; ``[]`` if none answers."""
        result = _script('status', timeout=60, check=False)
        for line in result.stdout.splitlines():
            _, found, members = line.partition('running: ')
            if found:
                return members.split()
        return []

    def is_complete(self):
        """All three nodes run in one cluster."""
        return self.running_nodes() == self.node_names

    def restore(self):
        """Start whichever nodes are not running and wait until all three
        form the cluster again."""
        _script('start')

    # -- management API (node 1) ---------------------------------------

    def api(self, method, *segments, data=None):
        """A JSON request to the management API: ``segments`` are the
        path's parts after ``/api/``, each percent-encoded here (so the
        default vhost is ``'/'``). Returns the decoded reply (``None`` when
        empty); failures raise ``RabbitManagerError``."""
        # RabbitManager's request helper: encoding, auth and error reports
        return self.manager._request(method, segments, data)

    def api_get(self, *segments):
        return self.api('GET', *segments)

    def api_put(self, *segments, data=None):
        return self.api('PUT', *segments, data=data)

    def api_delete(self, *segments):
        return self.api('DELETE', *segments)

    def __repr__(self):
        return '<RabbitCluster {}>'.format(' '.join(self.node_names))


@pytest.fixture(scope='session')
def rabbit_cluster():
    """The :class:`RabbitCluster` (see the module docstring for which)."""
    cluster = RabbitCluster()
    try:
        running = cluster.running_nodes()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip('cannot run {}: {}'.format(SCRIPT, exc))
    started = False
    if not running and os.environ.get('THREADKO_TEST_CLUSTER') != 'start':
        pytest.skip(
            'the three-node RabbitMQ cluster is not running: run '
            "'scripts/rabbitmq cluster start' (scripts/test does), or "
            'set THREADKO_TEST_CLUSTER=start to start it for the session')
    if running != cluster.node_names:
        cluster.restore()
        started = not running
    try:
        yield cluster
    finally:
        if started:
            _script('stop')


@pytest.fixture(autouse=True)
def cluster_nodes_restored(rabbit_cluster):
    """After each test, start again the nodes it killed or stopped."""
    yield
    if not rabbit_cluster.is_complete():
        rabbit_cluster.restore()


def _random_vhost():
    return 'threadko_cluster_' + os.urandom(5).hex()


@pytest.fixture
def cluster_config(rabbit_cluster):
    """A fresh vhost on the cluster (``guest`` may do anything there),
    deleted after the test, and a threadko config for it, also patched
    into the global :data:`threadko.config` for the test::

        {'AMQP_URI': 'amqp://...:5681/<vhost>;...:5682/...;...:5683/...',
         'vhost': <vhost>, 'username': 'guest'}
    """
    from threadko import config

    vhost = _random_vhost()
    manager = rabbit_cluster.manager
    manager.create_vhost(vhost)
    try:
        manager.set_vhost_permissions(vhost, rabbit_cluster.username)
        conf = {'AMQP_URI': rabbit_cluster.failover_uri(vhost),
                'vhost': vhost, 'username': rabbit_cluster.username}
        with config.patch(conf):
            yield conf
    finally:
        _delete_vhost(rabbit_cluster, vhost)


def _delete_vhost(cluster, vhost):
    try:
        cluster.manager.delete_vhost(vhost)
        return
    except RabbitManagerError as exc:
        if exc.status == 404:
            return
    # node 1 (the API) down, or too few nodes for the vhost's quorum
    # queues: bring the cluster back first
    cluster.restore()
    try:
        cluster.manager.delete_vhost(vhost)
    except RabbitManagerError as exc:
        if exc.status != 404:
            raise
