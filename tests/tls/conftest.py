"""Fixtures for the TLS tests: certificates made for the session, and the
TLS node of ``scripts/rabbitmq tls`` (tktls@localhost, TLS on 5692).

``tls_certs`` (session): a :class:`Certs` of paths (see tests/tls/certs.py).
``tls_broker`` (session): a :class:`TlsBroker`; starts the node with those
certificates unless it runs already (then it gets them installed), and
stops it at the end of the session if it started it.
``tls_config`` / ``mtls_config``: configs for server verification with
PLAIN (guest) and for mutual TLS with ``LOGIN_METHOD: EXTERNAL`` (an
encrypted client key and its password).
``unique_name``: a service name of the test's own (the tests share the
node's vhost ``/``).
"""

import os
import subprocess
import uuid
from types import SimpleNamespace

import pytest

import tlscerts as certs_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'scripts', 'rabbitmq')

TLS_HOST = 'localhost'
TLS_PORT = 5692
PLAIN_PORT = 5691  # the same node, without TLS


def pytest_collection_modifyitems(items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.rabbit)
            item.add_marker(pytest.mark.tls)


class Certs(SimpleNamespace):
    """Paths of the session's certificates and keys."""


class TlsBroker:
    """The TLS node: where it listens, and rabbitmqctl against it."""

    host = TLS_HOST
    port = TLS_PORT
    plain_port = PLAIN_PORT

    def uri(self, credentials='guest:guest', vhost='', port=None):
        """An ``amqps://`` URI of the node (no credentials for ``None``)."""
        return 'amqps://{}{}:{}/{}'.format(
            credentials + '@' if credentials else '', self.host,
            port or self.port, vhost)

    def ctl(self, *args):
        """Run ``rabbitmqctl ARGS`` against the node; return its output."""
        result = subprocess.run(
            [SCRIPT, 'tls', 'ctl'] + list(args), capture_output=True,
            text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError('rabbitmqctl {} failed: {}{}'.format(
                ' '.join(args), result.stdout, result.stderr))
        return result.stdout

    def connections(self):
        """``(user, ssl, peer_cert_subject)`` of every client connection."""
        rows = []
        for line in self.ctl('list_connections', '--no-table-headers',
                             'user', 'ssl', 'peer_cert_subject').splitlines():
            fields = line.split('\t')
            if len(fields) >= 2:
                rows.append(tuple(fields))
        return rows


def _script(*args, timeout=180):
    return subprocess.run([SCRIPT, 'tls'] + list(args), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='session')
def tls_certs(tmp_path_factory):
    directory = certs_module.make_certs(tmp_path_factory.mktemp('tls-certs'))

    def path(name):
        return os.path.join(directory, name)

    return Certs(
        directory=directory,
        ca=path('ca.pem'),
        server=path('server.pem'),
        client=path('client.pem'),
        client_key=path('client.key'),
        client_encrypted_key=path('client-encrypted.key'),
        key_password=certs_module.KEY_PASSWORD,
        client_cn=certs_module.CLIENT_CN,
        nobody=path('nobody.pem'),
        nobody_key=path('nobody.key'),
        other_ca=path('other-ca.pem'),
        stranger=path('stranger.pem'),
        stranger_key=path('stranger.key'),
    )


@pytest.fixture(scope='session')
def tls_broker(tls_certs):
    was_running = _script('status', timeout=30).returncode == 0
    started = _script('start', tls_certs.directory)
    if started.returncode != 0:
        pytest.fail(
            'could not start the TLS node (scripts/rabbitmq tls start): '
            '{}{}'.format(started.stdout, started.stderr), pytrace=False)
    try:
        yield TlsBroker()
    finally:
        if not was_running:
            stopped = _script('stop')
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture
def tls_config(tls_broker, tls_certs):
    """Server verification against the session's CA, guest over PLAIN."""
    return {
        'AMQP_URI': tls_broker.uri(),
        'AMQP_SSL': {'ca_certs': tls_certs.ca,
                     'server_hostname': tls_broker.host},
    }


@pytest.fixture
def mtls_config(tls_broker, tls_certs):
    """Mutual TLS: the client certificate logs in (EXTERNAL), with the
    encrypted key and its password."""
    return {
        'AMQP_URI': tls_broker.uri(credentials=None),
        'LOGIN_METHOD': 'EXTERNAL',
        'AMQP_SSL': {
            'ca_certs': tls_certs.ca,
            'certfile': tls_certs.client,
            'keyfile': tls_certs.client_encrypted_key,
            'password': tls_certs.key_password,
            'server_hostname': tls_broker.host,
        },
    }


@pytest.fixture
def unique_name():
    return 'tls_' + uuid.uuid4().hex[:10]
