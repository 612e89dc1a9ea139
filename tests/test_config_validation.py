"""Every config value threadko reads is checked before anything starts:
:func:`threadko.config_validation.validate_config` refuses a bad one in one
line naming the key, the value and what is expected; containers,
standalone clients, ``threadko run`` and ``threadko shell`` call it."""

import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import child_env
from test_config_reference import keys_read_by_threadko

from threadko import config as global_config
from threadko.config_validation import CHECKS, validate_config
from threadko.constants import DEFAULT_TRANSPORT_OPTIONS
from threadko.containers import ServiceContainer
from threadko.exceptions import ConfigurationError
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

REFERENCE = (Path(__file__).resolve().parent.parent / 'docs'
             / 'configuration.rst')
CHILD_TIMEOUT = 20  # seconds: a child that gets this far is a failure anyway

#: (key, bad value, a fragment of the message)
INVALID = [
    ('AMQP_URI', 'http://user:s3cret@host', 'amqp://, amqps://'),
    ('AMQP_URI', 'amqp://host:99999', 'port'),
    ('AMQP_URI', 'amqp://user:s3cret@a;memory://', 'failover'),
    ('AMQP_URI', ';', "several separated by ';'"),
    ('AMQP_URI', 5, 'a broker URI'),
    ('AMQP_SSL', 'yes', 'a mapping of ca_certs'),
    ('AMQP_SSL', 1, 'true, false, null'),
    ('AMQP_SSL', {'cert_reqs': 5}, "AMQP_SSL['cert_reqs']: 5"),
    ('AMQP_SSL', {'ca_certs': 42}, "AMQP_SSL['ca_certs']: 42"),
    ('LOGIN_METHOD', 'CRAM-MD5', 'PLAIN, AMQPLAIN, EXTERNAL'),
    ('LOGIN_METHOD', '', 'PLAIN, AMQPLAIN, EXTERNAL'),
    ('HEARTBEAT', 'abc', 'a whole number of 0 or more'),
    ('HEARTBEAT', -1, '0 turns heartbeats off'),
    ('HEARTBEAT', 2.5, 'a whole number'),  # pika takes whole seconds only
    ('HEARTBEAT', True, 'a whole number'),
    ('TRANSPORT_OPTIONS', 5, 'a mapping'),
    ('TRANSPORT_OPTIONS', {'max_retries': 'x'},
     "TRANSPORT_OPTIONS['max_retries']: 'x'"),
    ('TRANSPORT_OPTIONS', {'max_retries': -1}, 'null retries forever'),
    ('TRANSPORT_OPTIONS', {'interval_start': -2}, 'seconds of 0 or more'),
    ('TRANSPORT_OPTIONS', {'interval_max': None}, 'seconds of 0 or more'),
    ('TRANSPORT_OPTIONS', {'socket_timeout': 0}, 'seconds above 0'),
    ('TRANSPORT_OPTIONS', {'socket_timeout': True}, 'seconds above 0'),
    ('TRANSPORT_OPTIONS', {'connection_attempts': 0}, '1 or more'),
    ('TRANSPORT_OPTIONS', {'frame_max': 10}, 'from 4096 to 131072'),
    ('TRANSPORT_OPTIONS', {'client_properties': 'x'}, 'a mapping'),
    ('serializer', 'nope', 'register a serializer'),
    ('serializer', ['json'], 'registered serializer'),
    ('ACCEPT', 'json', 'a list of serializer names'),
    ('ACCEPT', ['json', 'nope'], "ACCEPT[1]: 'nope'"),
    ('SERIALIZERS', ['x'], 'a mapping of names'),
    ('SERIALIZERS', {'custom': {'encoder': 'json.dumps'}},
     'missing: decoder, content_type'),
    ('SERIALIZERS', {'custom': {
        'encoder': 'json.dumps', 'decoder': 'json.loads',
        'content_type': 'a/b', 'colour': 'red'}}, 'unknown: colour'),
    ('SERIALIZERS', {'custom': {
        'encoder': 'json dumps', 'decoder': 'json.loads',
        'content_type': 'a/b'}}, "SERIALIZERS['custom']['encoder']"),
    ('max_workers', 'abc',
     'a whole number of 1 or more; 0 or null means the default, 10'),
    ('max_workers', -3, 'a whole number of 1 or more'),
    ('max_workers', 2.5, 'a whole number of 1 or more'),
    ('max_workers', True, 'a whole number of 1 or more'),
    ('max_workers', '5', 'a whole number of 1 or more'),
    ('parent_calls_tracked', -1, 'a whole number of 0 or more'),
    ('parent_calls_tracked', None, 'a whole number of 0 or more'),
    ('THREAD_JOIN_TIMEOUT', 0, 'seconds above 0'),
    ('THREAD_JOIN_TIMEOUT', '10', 'seconds above 0'),
    ('THREAD_JOIN_TIMEOUT', float('inf'), 'seconds above 0'),
    ('SERVICE_CONTAINER_CLS', 'ServiceContainer', 'a dotted path'),
    ('SERVICE_CONTAINER_CLS', '', 'a dotted path'),
    ('SERVICE_CONTAINER_CLS', ServiceContainer, 'a dotted path'),
    ('rpc_exchange', 5, 'text'),
    ('AUTO_DELETE_EVENT_EXCHANGES', 'false', 'true or false'),
    ('AUTO_DELETE_EVENT_EXCHANGES', 1, 'true or false'),
    ('DECLARE_EVENT_EXCHANGES', 'no', 'true or false'),
    ('DECLARE_EVENT_EXCHANGES', 0, 'true or false'),
    ('QUEUE_TYPE', 'Quorum', "one of 'classic', 'quorum'"),
    ('QUEUE_TYPE', 'stream', 'null means classic'),
    ('QUEUE_DELIVERY_LIMIT', -1, '0 means no limit'),
    ('HANDLER_RETRY', {'attempts': 0}, 'attempts'),
    ('HANDLER_RETRY', {'tries': 3}, 'unknown: tries'),
    ('QUEUE_DELIVERY_LIMIT', '3', 'a whole number of 0 or more'),
    ('QUEUE_DELIVERY_LIMIT', True, 'a whole number of 0 or more'),
    ('PUBLISH_BLOCKED_TIMEOUT', 0, 'seconds above 0'),
    ('PUBLISH_BLOCKED_TIMEOUT', '30', 'null waits as long as the alarm'),
    ('RPC_TIMEOUT', -1, 'seconds above 0'),
    ('RPC_TIMEOUT', True, 'null waits forever'),
    ('WEB_SERVER_ADDRESS', 'localhost:http', '[host:]port'),
    ('WEB_SERVER_ADDRESS', 'a:b:80', '[host:]port'),
    ('WEB_SERVER_ADDRESS', '127.0.0.1:65536', 'from 0 to 65535'),
    ('WEB_SERVER_ADDRESS', -1, '[host:]port'),
    ('WEB_SERVER_ADDRESS', False, 'null serves nothing'),
    ('WEB_SERVER_MAX_REQUEST_BODY_SIZE', -1, 'null means no limit'),
    ('WEB_SERVER_MAX_REQUEST_BODY_SIZE', '10MB', 'a whole number'),
    ('WEB_SERVER_THREADS', -2, "max_workers + 2"),
    ('WEB_SERVER_THREADS', 'many', 'a whole number of 1 or more'),
    ('WEB_SERVER_STOP_TIMEOUT', -1, 'seconds of 0 or more'),
    ('WEB_SERVER_STOP_TIMEOUT', None, 'seconds of 0 or more'),
    ('WEB_SERVER_STOP_TIMEOUT', 'soon', 'seconds of 0 or more'),
    ('WEB_SERVER_HIDE_ERROR_DETAILS', 'false', 'true or false'),
    ('WEB_SERVER_HIDE_ERROR_DETAILS', 1, 'null means false'),
    ('METRICS_ADDRESS', 'localhost:metrics', "'[host:]port'"),
    ('METRICS_ADDRESS', 70000, 'from 0 to 65535'),
    ('TRACING', 'on', 'true or false'),
    ('TRACING_CALL_ARGS', 1, 'true or false'),
    ('WEB_SERVER_CONNECTION_LIMIT', 0, '1 or more'),
    ('WEB_SERVER_CONNECTION_LIMIT', None, '1 or more'),
    ('WEB_SERVER_HEADER_TIMEOUT', 0, 'seconds above 0'),
    ('WEB_SERVER_IDLE_TIMEOUT', 'soon', 'seconds above 0'),
    ('WEBSOCKET_PING_INTERVAL', -1, 'seconds above 0'),
    ('WEBSOCKET_IDLE_TIMEOUT', None, 'seconds above 0'),
    ('WEBSOCKET_IDLE_TIMEOUT', 21, 'above WEBSOCKET_PING_INTERVAL + 1 (21.0)'),
    ('WEBSOCKET_MAX_MESSAGE_SIZE', 0, 'null means no limit'),
    ('WEBSOCKET_MAX_SEND_BUFFER', '1MB', 'null means no limit'),
    ('SHUTDOWN_GRACE_PERIOD', 'soon', '0 or less, means no limit'),
    ('SHUTDOWN_GRACE_PERIOD', True, 'a number of seconds'),
    ('SHUTDOWN_GRACE_PERIOD', float('nan'), 'a number of seconds'),
    ('START_TIMEOUT', 'soon', '0 or less, means no limit'),
    ('START_TIMEOUT', [30], 'a number of seconds'),
    ('LOGGING', 'DEBUG', 'dictConfig mapping'),
    ('LOGGING', [{'version': 1}], 'dictConfig mapping'),
    ('DB_URIS', 'sqlite://', 'to database URIs'),
    ('DB_URIS', {'svc:Base': 5}, "DB_URIS['svc:Base']: 5"),
    ('DB_ENGINE_OPTIONS', {'svc:Base': 5}, 'a mapping of options'),
    ('DB_SESSION_OPTIONS', ['svc:Base'], 'sessionmaker() options'),
]

#: (key, value): what works today, and what the documentation promises
VALID = [
    ('AMQP_URI', 'memory://'),
    ('AMQP_URI', 'memory:///some-vhost'),
    ('AMQP_URI', 'pyamqp://guest:guest@localhost'),
    ('AMQP_URI', 'amqp://a:b@host1:5672/v;amqps://host2/'),
    ('AMQP_URI', None),  # --broker or memory://
    ('AMQP_SSL', True),
    ('AMQP_SSL', False),
    ('AMQP_SSL', None),
    ('AMQP_SSL', {'cert_reqs': ssl.CERT_NONE}),
    ('AMQP_SSL', {'cert_reqs': '2'}),  # read with int()
    ('AMQP_SSL', {'ca_certs': '/etc/ca.pem', 'certfile': '/etc/c.pem',
                  'keyfile': '/etc/k.pem', 'server_hostname': 'rabbit'}),
    ('LOGIN_METHOD', 'PLAIN'),
    ('LOGIN_METHOD', 'amqplain'),
    ('LOGIN_METHOD', 'EXTERNAL'),
    ('LOGIN_METHOD', None),
    ('HEARTBEAT', 60),
    ('HEARTBEAT', 0),
    ('HEARTBEAT', None),
    ('TRANSPORT_OPTIONS', None),
    ('TRANSPORT_OPTIONS', {}),
    ('TRANSPORT_OPTIONS', {'max_retries': None}),
    ('TRANSPORT_OPTIONS', {
        'max_retries': 0, 'interval_start': 0, 'interval_step': 0.5,
        'interval_max': 5, 'socket_timeout': 7.5, 'connection_attempts': 2,
        'blocked_connection_timeout': None, 'client_properties': {'a': 1},
        'confirm_publish': True}),  # a kombu option, ignored
    ('serializer', 'yaml'),
    ('serializer', 'pickle'),
    ('serializer', None),
    ('ACCEPT', ['json', 'yaml']),
    ('ACCEPT', []),
    ('ACCEPT', None),
    ('SERIALIZERS', {}),
    ('SERIALIZERS', None),
    ('max_workers', 1),
    ('max_workers', 0),  # the default, as in Nameko
    ('max_workers', None),
    ('parent_calls_tracked', 0),
    ('THREAD_JOIN_TIMEOUT', 0.05),
    ('SERVICE_CONTAINER_CLS', 'threadko.containers.ServiceContainer'),
    ('SERVICE_CONTAINER_CLS', None),
    ('rpc_exchange', 'my-rpc'),
    ('rpc_exchange', None),
    ('AUTO_DELETE_EVENT_EXCHANGES', True),
    ('AUTO_DELETE_EVENT_EXCHANGES', None),
    ('DECLARE_EVENT_EXCHANGES', False),
    ('DECLARE_EVENT_EXCHANGES', None),
    ('QUEUE_TYPE', 'classic'),
    ('QUEUE_TYPE', 'quorum'),
    ('QUEUE_TYPE', None),  # classic
    ('QUEUE_DELIVERY_LIMIT', 3),
    ('HANDLER_RETRY', {'attempts': 5, 'delay': 2, 'jitter': 0.1}),
    ('QUEUE_DELIVERY_LIMIT', 0),  # no limit
    ('QUEUE_DELIVERY_LIMIT', None),  # no limit
    ('PUBLISH_BLOCKED_TIMEOUT', 30),
    ('PUBLISH_BLOCKED_TIMEOUT', 0.5),
    ('PUBLISH_BLOCKED_TIMEOUT', None),  # as long as the alarm lasts
    ('RPC_TIMEOUT', 5),
    ('RPC_TIMEOUT', None),  # forever
    ('WEB_SERVER_ADDRESS', None),  # serves nothing
    ('WEB_SERVER_ADDRESS', '0'),  # a port the system picks
    ('WEB_SERVER_ADDRESS', '127.0.0.1:0'),
    ('WEB_SERVER_ADDRESS', 'localhost:65535'),
    ('WEB_SERVER_ADDRESS', 8000),  # --define WEB_SERVER_ADDRESS=8000
    ('WEB_SERVER_MAX_REQUEST_BODY_SIZE', 0),
    ('WEB_SERVER_MAX_REQUEST_BODY_SIZE', None),  # no limit
    ('WEB_SERVER_THREADS', 4),
    ('WEB_SERVER_THREADS', 0),  # the default
    ('WEB_SERVER_THREADS', None),
    ('WEB_SERVER_THREADS', '4'),  # read with int()
    ('WEB_SERVER_STOP_TIMEOUT', 0),
    ('WEB_SERVER_STOP_TIMEOUT', 2.5),
    ('WEB_SERVER_STOP_TIMEOUT', '3'),  # read with float()
    ('WEB_SERVER_CONNECTION_LIMIT', 2000),
    ('WEB_SERVER_HEADER_TIMEOUT', 2.5),
    ('WEB_SERVER_IDLE_TIMEOUT', 300),
    ('WEBSOCKET_PING_INTERVAL', 5),
    ('WEBSOCKET_IDLE_TIMEOUT', 30.5),
    ('WEBSOCKET_MAX_MESSAGE_SIZE', None),
    ('WEBSOCKET_MAX_SEND_BUFFER', 65536),
    ('WEB_SERVER_HIDE_ERROR_DETAILS', True),
    ('WEB_SERVER_HIDE_ERROR_DETAILS', False),
    ('WEB_SERVER_HIDE_ERROR_DETAILS', None),  # false
    ('METRICS_ADDRESS', '127.0.0.1:9464'),
    ('METRICS_ADDRESS', None),  # off
    ('TRACING', False),
    ('TRACING', None),  # off
    ('TRACING_CALL_ARGS', True),
    ('SHUTDOWN_GRACE_PERIOD', 25),
    ('SHUTDOWN_GRACE_PERIOD', None),  # no limit
    ('SHUTDOWN_GRACE_PERIOD', 0),
    ('SHUTDOWN_GRACE_PERIOD', -1),
    ('SHUTDOWN_GRACE_PERIOD', '12.5'),  # read with float()
    ('START_TIMEOUT', None),  # no limit
    ('START_TIMEOUT', 0),
    ('START_TIMEOUT', 30),
    ('START_TIMEOUT', float('inf')),
    ('LOGGING', None),
    ('LOGGING', {'version': 1}),
    ('DB_URIS', {'svc:Base': 'postgresql://u:p@host/{0[service_name]}'}),
    ('DB_ENGINE_OPTIONS', {'svc:Base': {'pool_size': 3}}),
    ('DB_SESSION_OPTIONS', {'svc:Base': {'expire_on_commit': False}}),
]


def error_for(config):
    with pytest.raises(ConfigurationError) as raised:
        validate_config(config)
    return str(raised.value)


# -- the tables cover every key ----------------------------------------------

def keys_to_check():
    return keys_read_by_threadko() | {'START_TIMEOUT'}


def test_every_key_threadko_reads_has_an_invalid_case_here():
    missing = keys_to_check() - {key for key, _, _ in INVALID}

    assert not missing, (
        'add an invalid value of each of these keys to INVALID (and a '
        'check to threadko.config_validation.CHECKS): {}'.format(
            ', '.join(sorted(missing))))


def test_every_key_threadko_reads_has_a_check():
    assert set(CHECKS) == keys_to_check()


# -- what is refused, and how ------------------------------------------------

@pytest.mark.parametrize('key, value, fragment', INVALID)
def test_an_invalid_value_is_one_line_naming_the_key(key, value, fragment):
    message = error_for({key: value})

    assert '\n' not in message
    assert message.startswith('Invalid config value {}'.format(key))
    assert fragment in message
    assert 's3cret' not in message


@pytest.mark.parametrize('key, value', [
    (key, value) for key, value, _ in INVALID
    if not isinstance(value, (dict, list)) and 's3cret' not in str(value)])
def test_the_message_shows_the_value(key, value):
    message = error_for({key: value})

    assert message.startswith(
        'Invalid config value {}: {} (expected '.format(key, repr(value)))


def test_the_message_says_what_is_expected():
    assert error_for({'max_workers': 'abc'}) == (
        "Invalid config value max_workers: 'abc' (expected a whole number "
        "of 1 or more; 0 or null means the default, 10)")


@pytest.mark.parametrize('uri', [
    'http://user:s3cret@host',
    'amqp://user:s3cret@host:notaport',
    'amqp://user:s3cret@a;amqp://other:s3cret@b;memory://',
    'amqp://user:s3cret@[::1',
])
def test_the_message_never_shows_a_uri_password(uri):
    message = error_for({'AMQP_URI': uri})

    assert 's3cret' not in message
    assert 'user:********@' in message


def test_the_message_never_shows_values_of_secret_looking_keys():
    message = error_for({'max_workers': {
        'password': 'hunter2', 'token': ['t0ken'],
        'url': 'amqp://u:s3cret@h'}})

    assert message.startswith('Invalid config value max_workers: {')
    for secret in ('hunter2', 't0ken', 's3cret'):
        assert secret not in message
    # a serializer named like a secret: everything under it is hidden
    message = error_for({'SERIALIZERS': {'token': {'encoder': 'my.enc'}}})
    assert "SERIALIZERS['token']" in message
    assert 'my.enc' not in message


def test_a_long_value_is_shortened():
    message = error_for({'LOGGING': 'x' * 1000})

    assert len(message) < 300
    assert "'xxx" in message


def test_one_bad_value_is_reported_of_several():
    message = error_for({'max_workers': 'abc', 'HEARTBEAT': 'abc'})

    assert message.count('Invalid config value') == 1
    assert '\n' not in message


# -- what passes -------------------------------------------------------------

@pytest.mark.parametrize('key, value', VALID)
def test_valid_values_pass(key, value):
    validate_config({key: value})


def test_absent_keys_and_keys_threadko_does_not_read_pass():
    validate_config({})
    validate_config({'MY_SERVICE_SETTING': object(), 'max_workers ': 'x'})


def test_a_serializer_defined_in_the_same_config_can_be_named():
    validate_config({
        'serializer': 'custom', 'ACCEPT': ['json', 'custom'],
        'SERIALIZERS': {'custom': {
            'encoder': 'json.dumps', 'decoder': 'json.loads',
            'content_type': 'application/x-custom',
            'content_encoding': 'utf-8'}}})


def test_the_global_config_can_be_checked():
    with global_config.patch({'max_workers': 'abc'}):
        with pytest.raises(ConfigurationError, match='max_workers'):
            validate_config(global_config)


def documented_defaults():
    """``{key: value}`` of the summary table of docs/configuration.rst,
    for the defaults it gives as a literal (``60``, ``memory://``)."""
    rows = re.findall(
        r'^   \* - ``(\w+)``\n     - ``([^`]+)``', REFERENCE.read_text(
            encoding='utf-8'), re.MULTILINE)
    defaults = {key: yaml.safe_load(value) for key, value in rows}
    defaults['ACCEPT'] = [defaults['serializer']]  # "[serializer]"
    return defaults


def test_the_documented_defaults_pass():
    defaults = documented_defaults()
    assert {'AMQP_URI', 'HEARTBEAT', 'max_workers', 'WEB_SERVER_ADDRESS',
            'SHUTDOWN_GRACE_PERIOD'} <= set(defaults)

    validate_config(defaults)
    validate_config({'TRANSPORT_OPTIONS': DEFAULT_TRANSPORT_OPTIONS,
                     'AUTO_DELETE_EVENT_EXCHANGES': False})


# -- containers and standalone clients check their config --------------------

class Svc:
    name = 'svc'


def test_a_container_refuses_an_invalid_config():
    with pytest.raises(ConfigurationError, match='max_workers'):
        ServiceContainer(Svc, {'max_workers': 'abc'})


def test_a_standalone_rpc_client_refuses_an_invalid_config():
    with pytest.raises(ConfigurationError, match="HEARTBEAT: 'x'"):
        ClusterRpcProxy({'AMQP_URI': 'memory://', 'HEARTBEAT': 'x'})


def test_a_standalone_client_checks_the_global_config_and_its_options():
    with global_config.patch({'TRANSPORT_OPTIONS': 5}):
        with pytest.raises(ConfigurationError, match='TRANSPORT_OPTIONS'):
            ClusterRpcProxy()
    with pytest.raises(ConfigurationError, match='LOGIN_METHOD'):
        ClusterRpcProxy({'AMQP_URI': 'memory://'}, login_method='CRAM-MD5')


def test_an_event_dispatcher_refuses_an_invalid_config():
    with pytest.raises(ConfigurationError, match='AUTO_DELETE_EVENT'):
        event_dispatcher({'AMQP_URI': 'memory://',
                          'AUTO_DELETE_EVENT_EXCHANGES': 'false'})


# -- the command line ------------------------------------------------------

SERVICE_MODULE = '''
from threadko.rpc import rpc


class Svc:
    name = 'svc'

    @rpc
    def ping(self):
        return 'pong'
'''


@pytest.fixture
def threadko(tmp_path):
    """``threadko(*args)``: run ``python -m threadko <args>`` to its end in
    a directory holding the ``svc`` module, standard input empty."""
    (tmp_path / 'svc.py').write_text(SERVICE_MODULE)

    def run_cli(*args):
        return subprocess.run(
            [sys.executable, '-m', 'threadko', *args], cwd=str(tmp_path),
            env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=CHILD_TIMEOUT)
    return run_cli


def assert_refused_in_one_line(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('Error: Invalid config value '), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert 'starting services' not in result.stderr


@pytest.mark.parametrize('define, fragments', [
    ('max_workers=abc', ["max_workers: 'abc'", 'a whole number']),
    ('max_workers=-3', ['max_workers: -3']),
    ('TRANSPORT_OPTIONS=5', ['TRANSPORT_OPTIONS: 5']),
    ('START_TIMEOUT=soon', ["START_TIMEOUT: 'soon'"]),
])
def test_run_refuses_an_invalid_config_before_starting(
        threadko, define, fragments):
    result = threadko('run', '--broker', 'memory://', '--define', define,
                      'svc:Svc')

    assert_refused_in_one_line(result, *fragments)


def test_shell_refuses_an_invalid_config_before_connecting(threadko):
    result = threadko('shell', '--broker', 'memory://',
                      '--define', 'HEARTBEAT=abc')

    assert_refused_in_one_line(result, "HEARTBEAT: 'abc'")


def test_show_config_prints_an_invalid_config(threadko):
    result = threadko('show-config', '--define', 'max_workers=abc')

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)['max_workers'] == 'abc'
