"""The cluster the failover tests run on: three nodes that form one cluster,
replicate quorum queues, survive a killed node and serve a failover list."""

import pika
import pytest

from support import poll

from threadko.amqp.connection import Connector

WAIT = 30  # seconds for the cluster to show a change


def test_three_nodes_form_one_cluster(rabbit_cluster):
    names = rabbit_cluster.node_names  # tk1@localhost, ...
    assert rabbit_cluster.running_nodes() == names
    nodes = rabbit_cluster.api_get('nodes')
    assert sorted((node['name'], node['running']) for node in nodes) == [
        (name, True) for name in names]


def test_quorum_queue_has_a_member_on_every_node(
        rabbit_cluster, cluster_config):
    vhost = cluster_config['vhost']
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_cluster.uri(1, vhost)))
    try:
        connection.channel().queue_declare(
            'replicated', durable=True,
            arguments={'x-queue-type': 'quorum'})
    finally:
        connection.close()

    # members show up with the queue's first statistics
    queue = poll(lambda: _with_members(
        rabbit_cluster.api_get('queues', vhost, 'replicated')),
        'the management API to show members for the queue', WAIT, 0.5)
    assert queue['type'] == 'quorum'
    assert sorted(queue['members']) == rabbit_cluster.node_names
    assert queue['leader'] in rabbit_cluster.node_names


def _with_members(queue):
    return queue if len(queue.get('members') or ()) == 3 else None


@pytest.mark.timeout(300)
def test_a_killed_node_rejoins_when_started_again(rabbit_cluster):
    node_1, _, node_3 = rabbit_cluster.node_names
    rabbit_cluster.kill(2)
    assert rabbit_cluster.running_nodes() == [node_1, node_3]

    rabbit_cluster.start_node(2)
    assert rabbit_cluster.running_nodes() == rabbit_cluster.node_names


@pytest.mark.timeout(300)
def test_failover_list_connects_while_node_1_is_down(
        rabbit_cluster, cluster_config):
    vhost = cluster_config['vhost']
    rabbit_cluster.stop_node(1)

    connection = Connector(cluster_config).connect()
    try:
        channel = connection.channel()
        channel.queue_declare('failover', durable=True,
                              arguments={'x-queue-type': 'quorum'})
        channel.basic_publish('', 'failover', b'still here')
        body = poll(lambda: channel.basic_get('failover', True)[2],
                    'the message', WAIT, 0.5)
        assert body == b'still here'

        # the broker says which of its ports the client reached
        listed = rabbit_cluster.ctl(
            2, '--quiet', 'list_connections', 'vhost', 'port')
        ports = [line.split('\t')[1] for line in listed.splitlines()
                 if line.startswith(vhost + '\t')]
        assert ports == [str(rabbit_cluster.port(2))]
    finally:
        connection.close()
