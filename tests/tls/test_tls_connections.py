"""Services and standalone clients against the real TLS listener of
``scripts/rabbitmq tls``: server verification, mutual TLS with EXTERNAL
logins, and the errors for certificates, host names and logins that are
wrong, each failing at once with a ConfigurationError that names the
cause (no retries)."""

import logging
import time

import pytest

from support import Received
from threadko.containers import ServiceContainer
from threadko.events import event_handler
from threadko.exceptions import ConfigurationError
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 10
# a configuration error is reported without retrying: well under the
# first back-off interval of TRANSPORT_OPTIONS (2 s by default)
FAIL_FAST = 1.5


def make_service(name, received=None):
    """A service class called ``name``: an RPC method, and an event handler
    of its own events that records their payloads in ``received``."""

    class Service:
        @rpc
        def double(self, value):
            return value * 2

        @event_handler(name, 'noted')
        def on_noted(self, payload):
            received.add(payload)

    Service.name = name
    Service.__name__ = 'Service_' + name
    return Service


@pytest.fixture
def run_service():
    """``run_service(cls, config)``: a started container, stopped after
    the test."""
    started = []

    def run(service_cls, config):
        container = ServiceContainer(service_cls, config)
        started.append(container)
        container.start()
        return container

    yield run
    for container in started:
        container.stop()


def use_service(name, config, received):
    """An RPC call and an event through standalone clients over ``config``,
    seen by the service."""
    with ClusterRpcProxy(config, timeout=WAIT) as proxy:
        assert getattr(proxy, name).double(21) == 42
    dispatch = event_dispatcher(config)
    try:
        dispatch(name, 'noted', {'over': 'tls'})
    finally:
        dispatch.close()
    received.wait_for({'over': 'tls'})


def test_service_and_clients_over_tls_with_server_verification(
        tls_config, tls_broker, run_service, unique_name):
    received = Received()
    run_service(make_service(unique_name, received), tls_config)

    use_service(unique_name, tls_config, received)

    rows = tls_broker.connections()
    assert rows and all(row[1] == 'true' for row in rows), rows


def test_mutual_tls_with_external_login(
        mtls_config, tls_broker, tls_certs, run_service, unique_name):
    received = Received()
    run_service(make_service(unique_name, received), mtls_config)

    use_service(unique_name, mtls_config, received)

    # the broker took the user from the client certificate (the service's
    # consumer connection is open now)
    rows = [row for row in tls_broker.connections()
            if row[0] == tls_certs.client_cn]
    assert rows
    assert all(row[1] == 'true' and 'CN=' + tls_certs.client_cn in row[2]
               for row in rows), rows


def test_an_unencrypted_client_key_needs_no_password(
        mtls_config, tls_certs, run_service, unique_name):
    config = dict(mtls_config, AMQP_SSL=dict(
        mtls_config['AMQP_SSL'], keyfile=tls_certs.client_key))
    del config['AMQP_SSL']['password']
    received = Received()
    run_service(make_service(unique_name, received), config)
    with ClusterRpcProxy(config, timeout=WAIT) as proxy:
        assert getattr(proxy, unique_name).double(2) == 4


# -- refused, at once -------------------------------------------------------

def _other_ca(config, certs, broker):
    config['AMQP_SSL']['ca_certs'] = certs.other_ca
    return ['certificate verify failed',
            "not signed by a CA in AMQP_SSL['ca_certs']", certs.other_ca,
            '{}:{}'.format(broker.host, broker.port)]


def _wrong_hostname(config, certs, broker):
    config['AMQP_SSL']['server_hostname'] = 'otherhost.example'
    return ['hostname mismatch', "not valid for 'otherhost.example'",
            "AMQP_SSL['server_hostname']"]


def _unknown_external_user(config, certs, broker):
    config.update(AMQP_URI=broker.uri(credentials=None),
                  LOGIN_METHOD='EXTERNAL')
    config['AMQP_SSL'].update(certfile=certs.nobody, keyfile=certs.nobody_key)
    return ['Authentication refused', 'EXTERNAL', certs.nobody,
            'a broker user of that name must exist']


def _external_without_certificate(config, certs, broker):
    config.update(AMQP_URI=broker.uri(credentials=None),
                  LOGIN_METHOD='EXTERNAL')
    return ['Authentication refused', 'EXTERNAL', "AMQP_SSL has no certfile"]


def _client_certificate_of_unknown_ca(config, certs, broker):
    config['AMQP_SSL'].update(certfile=certs.stranger,
                              keyfile=certs.stranger_key)
    return ['refused the client certificate', certs.stranger, 'UNKNOWN_CA']


def _wrong_password(config, certs, broker):
    config['AMQP_URI'] = broker.uri(credentials='guest:not-the-password')
    return ['Authentication refused', "user 'guest'",
            'Check the user name and password in AMQP_URI']


def _unknown_vhost(config, certs, broker):
    config['AMQP_URI'] = broker.uri(vhost='no-such-vhost')
    return ['Access refused', "vhost 'no-such-vhost'",
            'rabbitmqctl set_permissions -p no-such-vhost guest']


def _plain_port(config, certs, broker):
    config['AMQP_URI'] = broker.uri(port=broker.plain_port)
    return ['does not speak TLS', '{}:{}'.format(broker.host,
                                                 broker.plain_port)]


REFUSALS = [_other_ca, _wrong_hostname, _unknown_external_user,
            _external_without_certificate, _client_certificate_of_unknown_ca,
            _wrong_password, _unknown_vhost, _plain_port]


def _refused_config(tls_config, tls_certs, tls_broker, refusal):
    config = dict(tls_config, AMQP_SSL=dict(tls_config['AMQP_SSL']))
    expected = refusal(config, tls_certs, tls_broker)
    return config, expected


def _assert_fails_fast(action, expected, caplog):
    caplog.set_level(logging.DEBUG, logger='threadko')
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as raised:
        action()
    took = time.monotonic() - began
    message = str(raised.value)
    for text in expected:
        assert text in message
    assert took < FAIL_FAST, 'took {:.1f}s: retried?'.format(took)
    # no retry storm: not one "Retrying in" line, and few lines at all
    noisy = [record for record in caplog.records
             if record.levelno >= logging.WARNING]
    assert not [record for record in caplog.records
                if 'etrying' in record.getMessage()], noisy
    assert len(noisy) <= 2, [record.getMessage() for record in noisy]
    return message


@pytest.mark.parametrize('refusal', REFUSALS,
                         ids=lambda refusal: refusal.__name__.strip('_'))
def test_service_start_fails_at_once_naming_the_cause(
        tls_config, tls_certs, tls_broker, refusal, unique_name, caplog):
    config, expected = _refused_config(
        tls_config, tls_certs, tls_broker, refusal)
    container = ServiceContainer(make_service(unique_name), config)
    try:
        _assert_fails_fast(container.start, expected, caplog)
    finally:
        container.kill()


@pytest.mark.parametrize('refusal', [_other_ca, _wrong_hostname,
                                     _unknown_external_user],
                         ids=lambda refusal: refusal.__name__.strip('_'))
def test_standalone_rpc_client_fails_at_once_naming_the_cause(
        tls_config, tls_certs, tls_broker, refusal, caplog):
    config, expected = _refused_config(
        tls_config, tls_certs, tls_broker, refusal)

    def connect():
        with ClusterRpcProxy(config, timeout=WAIT):
            pass

    _assert_fails_fast(connect, expected, caplog)


def test_event_dispatcher_fails_at_once_naming_the_cause(
        tls_config, tls_certs, tls_broker, caplog):
    config, expected = _refused_config(
        tls_config, tls_certs, tls_broker, _other_ca)
    dispatch = event_dispatcher(config)

    try:
        _assert_fails_fast(
            lambda: dispatch('anyone', 'noted', {}), expected, caplog)
    finally:
        dispatch.close()
