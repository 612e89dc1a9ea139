"""Nothing secret (the client key's password, the password in AMQP_URI)
reaches logs, error messages, reprs or ``threadko show-config``."""

import logging
import os
import subprocess
import sys

import pytest

from threadko.amqp.connection import Connector
from threadko.containers import ServiceContainer
from threadko.exceptions import ConfigurationError
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

URI_PASSWORD = 'uri-secret-5b1f9e'


def secrets_in(text, secrets):
    return [secret for secret in secrets if secret in text]


def all_logged_text(records):
    formatter = logging.Formatter()
    texts = []
    for record in records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return '\n'.join(texts)


def make_service(name):
    class Service:
        @rpc
        def double(self, value):
            return value * 2

    Service.name = name
    return Service


@pytest.fixture
def debug_logs(caplog):
    """Every record of every logger (pika's too), from DEBUG up."""
    caplog.set_level(logging.DEBUG)
    return caplog


def test_key_password_stays_out_of_logs_and_reprs_over_mutual_tls(
        mtls_config, tls_certs, debug_logs, unique_name):
    # EXTERNAL ignores credentials in the URI; they must stay hidden anyway
    config = dict(mtls_config, AMQP_URI='amqps://svc:{}@localhost:5692/'.format(
        URI_PASSWORD))
    secrets = [tls_certs.key_password, URI_PASSWORD]
    container = ServiceContainer(make_service(unique_name), config)
    container.start()
    try:
        with ClusterRpcProxy(config, timeout=10) as proxy:
            assert getattr(proxy, unique_name).double(4) == 8
    finally:
        container.stop()

    connector = Connector(config)
    shown = ' '.join([repr(connector), connector.safe_uri,
                      repr(connector.parameters), repr(container)])
    assert not secrets_in(shown, secrets)
    assert debug_logs.records  # pika and threadko said something
    assert not secrets_in(all_logged_text(debug_logs.records), secrets)


def test_secrets_stay_out_of_connection_errors_and_their_logs(
        tls_config, tls_certs, tls_broker, debug_logs, unique_name):
    config = {
        'AMQP_URI': tls_broker.uri(credentials='guest:' + URI_PASSWORD),
        'AMQP_SSL': {
            'ca_certs': tls_certs.other_ca,  # refused: another CA
            'certfile': tls_certs.client,
            'keyfile': tls_certs.client_encrypted_key,
            'password': tls_certs.key_password,
            'server_hostname': 'localhost',
        },
    }
    secrets = [tls_certs.key_password, URI_PASSWORD]
    container = ServiceContainer(make_service(unique_name), config)
    try:
        with pytest.raises(ConfigurationError) as raised:
            container.start()
    finally:
        container.kill()
    error = raised.value
    assert 'certificate verify failed' in str(error)
    assert not secrets_in(str(error) + repr(error) + repr(error.__cause__),
                          secrets)
    assert not secrets_in(all_logged_text(debug_logs.records), secrets)


@pytest.mark.parametrize('password', ['a wrong one', '1234567'])
def test_a_wrong_key_password_is_named_not_shown(
        tls_config, tls_certs, password):
    config = dict(tls_config, AMQP_SSL=dict(
        tls_config['AMQP_SSL'], certfile=tls_certs.client,
        keyfile=tls_certs.client_encrypted_key, password=password))
    with pytest.raises(ConfigurationError) as raised:
        Connector(config)
    message = str(raised.value)
    assert "cannot be decrypted with AMQP_SSL['password']" in message
    assert tls_certs.client_encrypted_key in message
    assert password not in message


def test_an_encrypted_key_without_password_is_an_error_not_a_prompt(
        tls_config, tls_certs):
    config = dict(tls_config, AMQP_SSL=dict(
        tls_config['AMQP_SSL'], certfile=tls_certs.client,
        keyfile=tls_certs.client_encrypted_key))
    # OpenSSL would ask on the terminal; threadko must not wait for one
    with pytest.raises(ConfigurationError,
                       match=r"is encrypted, and AMQP_SSL has no 'password'"):
        Connector(config)


@pytest.mark.parametrize('password_yaml', ["'${TK_TEST_KEY_PASSWORD}'",
                                           '73105820'])
def test_show_config_masks_the_key_password_and_uri_passwords(
        tmp_path, tls_certs, password_yaml):
    config_file = tmp_path / 'config.yaml'
    config_file.write_text(
        'AMQP_URI: amqps://svc:{pw}@a.example:5671/;'
        'amqps://svc:{pw}@b.example:5671/\n'
        'LOGIN_METHOD: EXTERNAL\n'
        'AMQP_SSL:\n'
        '  ca_certs: {ca}\n'
        '  certfile: {cert}\n'
        '  keyfile: {key}\n'
        '  password: {password}\n'
        '  server_hostname: a.example\n'.format(
            pw=URI_PASSWORD, ca=tls_certs.ca, cert=tls_certs.client,
            key=tls_certs.client_encrypted_key, password=password_yaml))
    env = dict(os.environ, TK_TEST_KEY_PASSWORD=tls_certs.key_password)
    result = subprocess.run(
        [sys.executable, '-m', 'threadko', 'show-config', '--config',
         str(config_file)], capture_output=True, text=True, env=env,
        timeout=60)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert not secrets_in(output, [tls_certs.key_password, URI_PASSWORD,
                                   '73105820'])
    assert "password: '********'" in result.stdout
    assert result.stdout.count('svc:********@') == 2
    assert tls_certs.client_encrypted_key in result.stdout  # paths stay
