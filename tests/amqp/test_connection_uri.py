"""Broker URIs (wire protocol §1.1) and the Connector that turns config keys
into connection parameters (§1.3), plus the retry policy's back-off."""

import itertools
import ssl

import pika
import pytest

from threadko.amqp import memory
from threadko.amqp.connection import Connector, RetryPolicy, parse_uri
from threadko.exceptions import ConfigurationError


# -- parse_uri ---------------------------------------------------------------

@pytest.mark.parametrize('scheme, port', [
    ('amqp', 5672), ('pyamqp', 5672), ('amqps', 5671), ('pyamqps', 5671),
])
def test_default_port_depends_on_tls(scheme, port):
    address = parse_uri('{}://broker.example/'.format(scheme))
    assert address.scheme == scheme
    assert address.host == 'broker.example'
    assert address.port == port


def test_scheme_is_case_insensitive():
    assert parse_uri('AMQPS://h/').scheme == 'amqps'
    assert parse_uri('AMQPS://h/').port == 5671


def test_explicit_port_wins_over_the_default():
    assert parse_uri('amqps://h:5700/').port == 5700
    assert parse_uri('amqp://h:1234').port == 1234


def test_host_defaults_to_localhost():
    address = parse_uri('amqp://')
    assert (address.host, address.port) == ('localhost', 5672)


def test_ipv6_host():
    assert parse_uri('amqp://[::1]:5673/').host == '::1'


def test_credentials_default_to_guest():
    address = parse_uri('amqp://broker/')
    assert (address.username, address.password) == ('guest', 'guest')


def test_credentials_are_percent_decoded():
    address = parse_uri('amqp://us%40er:p%3As%2Fs%25@broker/')
    assert address.username == 'us@er'
    assert address.password == 'p:s/s%'


def test_user_without_password_gets_default_password():
    address = parse_uri('amqp://alice@broker/')
    assert (address.username, address.password) == ('alice', 'guest')


@pytest.mark.parametrize('uri, vhost', [
    ('amqp://h', '/'),
    ('amqp://h/', '/'),
    ('amqp://h//', '/'),
    ('amqp://h/%2F', '/'),
    ('amqp://h/%2f', '/'),
    ('amqp://h/foo', 'foo'),
    ('amqp://h/%2Ffoo', '/foo'),
    ('amqp://h/a%20b', 'a b'),
    ('memory://', '/'),
    ('memory:///tests', 'tests'),
])
def test_vhost_rules(uri, vhost):
    assert parse_uri(uri).vhost == vhost


def test_memory_scheme():
    address = parse_uri('memory:///some-vhost')
    assert address.scheme == 'memory'
    assert address.vhost == 'some-vhost'


@pytest.mark.parametrize('uri', [
    'redis://user:s3cret@broker/',
    'http://user:s3cret@broker:80/',
    'broker.example:5672',
])
def test_unsupported_scheme_is_a_configuration_error(uri):
    with pytest.raises(ConfigurationError) as error:
        parse_uri(uri)
    message = str(error.value)
    assert 's3cret' not in message
    # says what would work
    assert 'amqp://' in message and 'memory://' in message


def test_invalid_port_is_a_configuration_error_without_password():
    with pytest.raises(ConfigurationError) as error:
        parse_uri('amqp://user:s3cret@broker:notaport/')
    assert 's3cret' not in str(error.value)


# -- Connector ----------------------------------------------------------------

def test_memory_uri_makes_a_memory_connector():
    connector = Connector({'AMQP_URI': 'memory:///somewhere'})
    assert connector.is_memory
    assert connector.memory_vhost == 'somewhere'
    assert connector.parameters == []


def test_missing_uri_defaults_to_memory():
    assert Connector({}).is_memory


def test_amqp_uri_is_not_memory():
    connector = Connector({'AMQP_URI': 'amqp://broker/'})
    assert not connector.is_memory
    assert len(connector.parameters) == 1


def test_empty_failover_list_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        Connector({'AMQP_URI': ' ; '})


def test_memory_connector_connects_to_its_vhost(memory_config):
    connector = Connector(memory_config)
    connection = connector.connect()
    try:
        assert connection.is_open
        broker = memory.get_broker(memory_config['vhost'])
        assert broker.connection_count() == 1
        # a real channel of that vhost: a queue declared here is visible
        connection.channel().queue_declare('through-connector')
        assert 'through-connector' in broker.queue_names()
    finally:
        connection.close()


def test_parameters_follow_the_uri():
    connector = Connector({'AMQP_URI': 'amqp://alice:s3cret@broker:5999/prod'})
    [params] = connector.parameters
    assert isinstance(params, pika.ConnectionParameters)
    assert params.host == 'broker'
    assert params.port == 5999
    assert params.virtual_host == 'prod'
    assert params.credentials == pika.PlainCredentials('alice', 's3cret')
    assert params.ssl_options is None


def test_failover_list_gives_one_parameter_set_per_uri():
    connector = Connector({
        'AMQP_URI': 'amqp://a:pa@host1:5673/v1; amqps://b:pb@host2/v2;'})
    first, second = connector.parameters
    assert (first.host, first.port, first.virtual_host) == (
        'host1', 5673, 'v1')
    assert first.credentials == pika.PlainCredentials('a', 'pa')
    assert first.ssl_options is None
    assert (second.host, second.port, second.virtual_host) == (
        'host2', 5671, 'v2')
    assert second.credentials == pika.PlainCredentials('b', 'pb')
    assert second.ssl_options is not None


@pytest.mark.parametrize('heartbeat, expected', [(30, 30), (0, 0), (None, 0)])
def test_heartbeat_is_passed_through(heartbeat, expected):
    connector = Connector({'AMQP_URI': 'amqp://h/', 'HEARTBEAT': 99},
                          heartbeat=heartbeat)
    assert connector.parameters[0].heartbeat == expected


def test_transport_options_default_retry_policy():
    connector = Connector({'AMQP_URI': 'amqp://h/'})
    assert connector.retry_policy == RetryPolicy(
        max_retries=3, interval_start=2, interval_step=1, interval_max=5)


def test_transport_options_split_into_retry_policy_and_pika_parameters():
    connector = Connector({'AMQP_URI': 'amqp://h/', 'TRANSPORT_OPTIONS': {
        'max_retries': 7, 'interval_start': 0, 'interval_step': 2,
        'interval_max': 4, 'socket_timeout': 7.5, 'connection_attempts': 2,
        'confirm_publish': True,  # a kombu option pika has no use for
    }})
    assert connector.retry_policy == RetryPolicy(
        max_retries=7, interval_start=0, interval_step=2, interval_max=4)
    [params] = connector.parameters
    assert params.socket_timeout == 7.5
    assert params.connection_attempts == 2


def test_partial_transport_options_keep_the_other_defaults():
    connector = Connector({'AMQP_URI': 'amqp://h/',
                           'TRANSPORT_OPTIONS': {'max_retries': 1}})
    assert connector.retry_policy == RetryPolicy(
        max_retries=1, interval_start=2, interval_step=1, interval_max=5)


def test_transport_options_apply_to_memory_connectors_retry_policy():
    connector = Connector({'AMQP_URI': 'memory:///x',
                           'TRANSPORT_OPTIONS': {'max_retries': None}})
    assert connector.retry_policy.max_retries is None


def test_transport_options_can_be_ignored():
    # publishers use the defaults whatever the config says (as Nameko does)
    config = {'AMQP_URI': 'amqp://h/', 'TRANSPORT_OPTIONS': {
        'max_retries': 9, 'socket_timeout': 1.25}}
    connector = Connector(config, transport_options=False)
    assert connector.retry_policy == RetryPolicy(3, 2, 1, 5)
    assert connector.parameters[0].socket_timeout != 1.25


def test_client_properties_transport_option_reaches_the_parameters():
    connector = Connector({'AMQP_URI': 'amqp://h/', 'TRANSPORT_OPTIONS': {
        'client_properties': {'product': 'billing'}}})
    properties = connector.parameters[0].client_properties
    assert properties['product'] == 'billing'


@pytest.mark.parametrize('method', ['PLAIN', 'AMQPLAIN', 'plain', None])
def test_plain_login_methods_use_the_uri_credentials(method):
    config = {'AMQP_URI': 'amqp://alice:s3cret@h/'}
    if method is not None:
        config['LOGIN_METHOD'] = method
    credentials = Connector(config).parameters[0].credentials
    assert credentials == pika.PlainCredentials('alice', 's3cret')


def test_external_login_method():
    config = {'AMQP_URI': 'amqps://h/', 'LOGIN_METHOD': 'EXTERNAL'}
    credentials = Connector(config).parameters[0].credentials
    assert isinstance(credentials, pika.credentials.ExternalCredentials)


def test_unknown_login_method_is_a_configuration_error():
    with pytest.raises(ConfigurationError) as error:
        Connector({'AMQP_URI': 'amqp://h/', 'LOGIN_METHOD': 'CRAM-MD5'})
    assert 'CRAM-MD5' in str(error.value)


def test_amqps_uri_gets_verifying_ssl_options():
    [params] = Connector({'AMQP_URI': 'amqps://broker.example/'}).parameters
    assert params.port == 5671
    assert isinstance(params.ssl_options, pika.SSLOptions)
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert params.ssl_options.server_hostname == 'broker.example'


def test_amqp_ssl_true_turns_on_tls_for_a_plain_uri():
    config = {'AMQP_URI': 'amqp://broker.example/', 'AMQP_SSL': True}
    [params] = Connector(config).parameters
    assert params.ssl_options is not None
    assert params.ssl_options.server_hostname == 'broker.example'
    assert params.port == 5671  # TLS's default port, as kombu picks it


def test_amqp_ssl_keeps_an_explicit_port():
    config = {'AMQP_URI': 'amqp://broker.example:5999/', 'AMQP_SSL': True}
    [params] = Connector(config).parameters
    assert params.port == 5999


def test_memory_in_a_failover_list_is_refused():
    with pytest.raises(ConfigurationError) as info:
        Connector({'AMQP_URI': 'amqp://u:secret@a;memory://'})
    assert 'failover' in str(info.value)
    assert 'secret' not in str(info.value)


def test_amqp_ssl_options_without_verification():
    config = {'AMQP_URI': 'amqps://h/',
              'AMQP_SSL': {'cert_reqs': ssl.CERT_NONE}}
    context = Connector(config).parameters[0].ssl_options.context
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_amqp_ssl_server_hostname():
    config = {'AMQP_URI': 'amqps://10.0.0.5/', 'AMQP_SSL': {
        'cert_reqs': ssl.CERT_REQUIRED, 'server_hostname': 'rabbit.internal'}}
    ssl_options = Connector(config).parameters[0].ssl_options
    assert ssl_options.server_hostname == 'rabbit.internal'
    assert ssl_options.context.verify_mode == ssl.CERT_REQUIRED


def test_safe_uri_hides_every_password():
    connector = Connector({
        'AMQP_URI': 'amqp://a:s3cret@host1/;amqps://b:t0psecret@host2/'})
    assert 's3cret' not in connector.safe_uri
    assert 't0psecret' not in connector.safe_uri
    assert 'host1' in connector.safe_uri and 'host2' in connector.safe_uri
    assert connector.safe_uri.count('********') == 2
    assert 's3cret' not in repr(connector)


def test_safe_uri_keeps_uris_without_password():
    assert Connector({'AMQP_URI': 'memory:///v'}).safe_uri == 'memory:///v'


# -- RetryPolicy --------------------------------------------------------------

def test_intervals_grow_by_step_up_to_the_maximum():
    policy = RetryPolicy(max_retries=6, interval_start=1, interval_step=2,
                         interval_max=6)
    assert list(policy.intervals()) == [1, 3, 5, 6, 6, 6]


def test_intervals_default_transport_options():
    assert list(RetryPolicy(3, 2, 1, 5).intervals()) == [2, 3, 4]


def test_no_retries_means_no_intervals():
    assert list(RetryPolicy(0, 1, 1, 1).intervals()) == []


def test_max_retries_none_retries_forever():
    policy = RetryPolicy(None, 0, 1, 3)
    assert list(itertools.islice(policy.intervals(), 7)) == [
        0, 1, 2, 3, 3, 3, 3]


def test_from_options_defaults_to_one_second_intervals():
    # Publisher's retry_policy={"max_retries": 3}: kombu's ensure() defaults
    policy = RetryPolicy.from_options({'max_retries': 3})
    assert policy == RetryPolicy(3, 1, 1, 1)
    assert list(policy.intervals()) == [1, 1, 1]
