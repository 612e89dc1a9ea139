"""A broker user without a permission the service needs on a queue or an
exchange: starting fails with a ConfigurationError that names the
resource, the permission and how to grant it."""

import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pytest

from threadko.amqp.errors import access_refused_hint
from threadko.containers import ServiceContainer
from threadko.exceptions import BrokerRefused, ConfigurationError
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

pytestmark = pytest.mark.rabbit


class Ledger:
    name = 'perm_ledger'

    @rpc
    def total(self):
        return 0


@pytest.fixture
def restricted_user(rabbit_config, rabbit_manager):
    """``grant(configure, write, read)`` gives a new broker user those
    permission patterns on the test's vhost and returns a config that logs
    in as that user; the user is deleted after the test."""
    vhost = rabbit_config['vhost']
    name = 'tk_perm_' + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    # the management API has no public helper for users
    rabbit_manager._request('PUT', ('users', name),
                            {'password': password, 'tags': ''})
    parts = urlsplit(rabbit_config['AMQP_URI'])
    netloc = '{}:{}@{}'.format(quote(name), password,
                               parts.netloc.rsplit('@', 1)[-1])
    uri = urlunsplit(parts._replace(netloc=netloc))

    def grant(configure='.*', write='.*', read='.*'):
        rabbit_manager.set_vhost_permissions(
            vhost, name, configure=configure, write=write, read=read)
        return {'AMQP_URI': uri, 'user': name, 'vhost': vhost}

    try:
        yield grant
    finally:
        rabbit_manager._request('DELETE', ('users', name))


# (configure, write, read) patterns, the refused resource, the permission
# it lacks, and what for
SERVICE_CASES = {
    'declare_exchange': (('^$', '.*', '.*'), "exchange 'nameko-rpc'",
                         'configure', 'to declare it'),
    'declare_queue': (('^nameko-rpc$', '.*', '.*'),
                      "queue 'rpc-perm_ledger'", 'configure',
                      'to declare it'),
    'bind_queue': (('.*', '^$', '.*'), "queue 'rpc-perm_ledger'", 'write',
                   'to bind it to an exchange'),
    'bind_from_exchange': (('.*', '.*', '^$'), "exchange 'nameko-rpc'",
                           'read', 'to bind a queue to it'),
    'consume': (('.*', '.*', '^nameko-rpc$'), "queue 'rpc-perm_ledger'",
                'read', 'to consume from it'),
}


@pytest.mark.parametrize('case', sorted(SERVICE_CASES))
def test_service_start_names_the_missing_permission(restricted_user, case):
    patterns, resource, permission, purpose = SERVICE_CASES[case]
    config = restricted_user(*patterns)
    container = ServiceContainer(Ledger, config)
    try:
        with pytest.raises(ConfigurationError) as raised:
            container.start()
    finally:
        container.kill()
    message = str(raised.value)
    assert 'service perm_ledger' in message
    assert "user '{}' lacks the {} permission on {} in vhost '{}'".format(
        config['user'], permission, resource, config['vhost']) in message
    assert purpose in message
    assert 'rabbitmqctl set_permissions -p {} {}'.format(
        config['vhost'], config['user']) in message


def test_rpc_client_start_names_the_missing_permission(restricted_user):
    config = restricted_user(configure='^nameko-rpc$')
    with pytest.raises(ConfigurationError) as raised:
        with ClusterRpcProxy(config):
            pass
    message = str(raised.value)
    assert 'RPC client' in message
    assert "lacks the configure permission on queue 'rpc.reply-" in message


def _declare_exchange(rabbit_config, name):
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        connection.channel().exchange_declare(
            name, 'topic', durable=True)
    finally:
        connection.close()


def test_publishing_without_write_permission_is_explained(
        restricted_user, rabbit_config):
    _declare_exchange(rabbit_config, 'perm_ledger.events')
    config = restricted_user(write='^$')
    dispatch = event_dispatcher(config)
    try:
        with pytest.raises(BrokerRefused) as raised:
            dispatch('perm_ledger', 'booked', {'amount': 1})
    finally:
        dispatch.close()
    assert raised.value.reply_code == 403
    hint = access_refused_hint(raised.value, 'basic_publish')
    assert ("user '{}' lacks the write permission on exchange "
            "'perm_ledger.events'".format(config['user'])) in hint
    assert 'to publish to it' in hint
    # and the error itself says so
    assert 'lacks the write permission on exchange' in str(raised.value)
