"""A running service whose reconnection is refused for a reason retrying
does not fix by itself (here: its user lost access to the vhost) keeps
trying with back-off, logging an error that names the cause, and consumes
again once the broker lets it."""

import logging
import uuid

import pytest

from threadko.containers import ServiceContainer
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 15
QUICK_RETRIES = {'interval_start': 0.2, 'interval_step': 0.2,
                 'interval_max': 0.5}


@pytest.fixture
def tls_user(tls_broker):
    """A broker user of its own on the TLS node (PLAIN login), with every
    permission on vhost /; deleted after the test."""
    name = 'tk-reconnect-' + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    tls_broker.ctl('add_user', name, password)
    try:
        tls_broker.ctl('set_permissions', '-p', '/', name, '.*', '.*', '.*')
        yield name, password
    finally:
        tls_broker.ctl('delete_user', name)


@pytest.mark.timeout(90)
def test_refused_reconnection_is_retried_and_logged_until_fixed(
        tls_config, tls_broker, tls_user, log_collector, unique_name):
    user, password = tls_user
    config = dict(tls_config, TRANSPORT_OPTIONS=QUICK_RETRIES,
                  AMQP_URI=tls_broker.uri(credentials='{}:{}'.format(
                      user, password)))

    class Service:
        name = unique_name

        @rpc
        def double(self, value):
            return value * 2

    container = ServiceContainer(Service, config)
    container.start()
    try:
        tls_broker.ctl('clear_permissions', '-p', '/', user)
        tls_broker.ctl('close_all_connections', '--vhost', '/',
                       'closed by threadko test')

        refused = log_collector.wait_for(
            "refused user '{}' access to vhost '/'".format(user), count=2,
            level=logging.ERROR)
        assert 'Cannot reconnect service {}'.format(unique_name) in (
            refused[0].getMessage())
        assert 'Retrying in' in refused[0].getMessage()

        tls_broker.ctl('set_permissions', '-p', '/', user, '.*', '.*', '.*')
        # the request waits in the service's queue until it consumes again
        with ClusterRpcProxy(tls_config, timeout=WAIT) as proxy:
            assert getattr(proxy, unique_name).double(5) == 10
    finally:
        container.stop()
    # the retries backed off: a few lines, not a storm
    assert len(log_collector.matching('Cannot reconnect')) < 40
