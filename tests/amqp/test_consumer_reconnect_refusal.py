"""After its first connection, a consumer whose declarations the broker
refuses (here: permissions revoked, 403) logs an error that names the
resource and the permission and retries with back-off; it never dies
while not stopped, and consumes again once the declaration is allowed."""

import logging
import subprocess

import pika
import pika.exceptions
import pytest

from support import until
from threadko.containers import ServiceContainer
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

pytestmark = pytest.mark.rabbit

WAIT = 15
QUICK_RETRIES = {'interval_start': 0.2, 'interval_step': 0.2,
                 'interval_max': 0.5}


def close_all_connections(vhost):
    subprocess.run(
        ['rabbitmqctl', '--quiet', 'close_all_connections', '--vhost', vhost,
         'closed by threadko test'],
        check=True, capture_output=True, timeout=30)


class Doubler:
    name = 'refusal_doubler'

    @rpc
    def double(self, value):
        return value * 2


def consumer_count(amqp_uri, queue):
    """The consumers of ``queue`` (0 if it does not exist), asked with a
    passive declaration."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    try:
        return connection.channel().queue_declare(
            queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


@pytest.mark.timeout(90)
def test_service_keeps_retrying_a_queue_refused_on_reconnect(
        rabbit_config, rabbit_manager, log_collector):
    vhost, user = rabbit_config['vhost'], rabbit_config['username']
    config = {'AMQP_URI': rabbit_config['AMQP_URI'],
              'TRANSPORT_OPTIONS': QUICK_RETRIES}
    container = ServiceContainer(Doubler, config)
    container.start()
    try:
        # the user may declare the RPC exchange, but not the service's queue
        rabbit_manager.set_vhost_permissions(
            vhost, user, configure='^nameko-rpc$')
        close_all_connections(vhost)

        refused = log_collector.wait_for(
            "access to queue 'rpc-refusal_doubler'", count=2,
            level=logging.ERROR)
        assert 'etrying in' in refused[0].getMessage()

        rabbit_manager.set_vhost_permissions(vhost, user)
        # the request waits in the queue until the service consumes again
        with ClusterRpcProxy(config, timeout=WAIT) as proxy:
            assert proxy.refusal_doubler.double(4) == 8
    finally:
        container.stop()


@pytest.mark.timeout(90)
def test_rpc_client_keeps_retrying_a_declaration_refused_on_reconnect(
        rabbit_config, rabbit_manager, log_collector):
    vhost, user = rabbit_config['vhost'], rabbit_config['username']
    uri = rabbit_config['AMQP_URI']
    config = {'AMQP_URI': uri, 'TRANSPORT_OPTIONS': QUICK_RETRIES}
    container = ServiceContainer(Doubler, config)
    container.start()
    try:
        with ClusterRpcProxy(config, timeout=WAIT) as proxy:
            assert proxy.refusal_doubler.double(1) == 2
            [reply_queue] = [
                queue['name'] for queue in rabbit_manager.get_queues(vhost)
                if queue['name'].startswith('rpc.reply-')]

            # the client may not declare its reply queue any more
            rabbit_manager.set_vhost_permissions(
                vhost, user, configure='^(nameko-rpc|rpc-refusal_doubler)$')
            close_all_connections(vhost)

            refused = log_collector.wait_for(
                "lacks the configure permission on queue '{}'".format(
                    reply_queue), count=2, level=logging.ERROR)
            message = refused[0].getMessage()
            assert 'The broker refused a declaration for RPC client' in message
            assert 'to declare it' in message
            assert 'rabbitmqctl set_permissions -p {} {}'.format(
                vhost, user) in message
            assert 'Retrying in' in message

            rabbit_manager.set_vhost_permissions(vhost, user)
            until(lambda: consumer_count(uri, reply_queue) == 1)
            # the same client, consuming its replies again
            assert proxy.refusal_doubler.double(4) == 8
    finally:
        container.stop()
