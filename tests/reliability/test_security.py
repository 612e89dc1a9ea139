"""Credentials stay out of logs and ``threadko show-config`` output, there
is no backdoor, and errors travel without their tracebacks.

The broker password is a distinctive one, of a user each test creates, with
every URL delimiter in it (percent-encoded in URIs): the tests look for its
distinctive core, which every form of it (raw, percent-encoded, repr'd)
contains. Logging is at DEBUG for ``threadko`` and ``pika``, and each test
checks that pika's DEBUG records were produced and that the URI was logged
in its masked form, so a silent logger cannot make it pass.

There is no setting that puts tracebacks on the wire: error replies and
HTTP error bodies carry the exception's type, path, args and text only,
while the traceback is logged where the error happened.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pika
import pytest
import yaml

from support import BROKER_WAIT, Received
from threadko.events import event_handler
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.rabbit import RabbitManagerError
from threadko.utils import sanitize_url

SECRET = 'Zq9s3kr1tW'  # in every form of PASSWORD
PASSWORD = SECRET + '@:/;%#?+ &~\u00e9'
WRONG = 'Wr0ngPa55Qv'  # a wrong password, never to be logged either
MASKED = ':********@'

FAST_RETRIES = {'max_retries': 1, 'interval_start': 0.1,
                'interval_step': 0, 'interval_max': 0.1}
DEBUG_LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {'full': {'format': '%(levelname)s %(name)s: %(message)s'}},
    'handlers': {'stderr': {'class': 'logging.StreamHandler',
                            'formatter': 'full'}},
    'root': {'level': 'DEBUG', 'handlers': ['stderr']},
    'loggers': {'pika': {'level': 'DEBUG'}},
}
DOCS = Path(__file__).resolve().parents[2] / 'docs'


# -- a broker user with the distinctive password -------------------------

class SecretUser:
    """A broker user, allowed on the test's vhost, whose password is
    :data:`PASSWORD`."""

    def __init__(self, rabbit_config, name):
        self.name = name
        self.vhost = rabbit_config['vhost']
        parts = urlsplit(rabbit_config['AMQP_URI'])
        self.host = parts.hostname
        self.port = parts.port or 5672
        self.path = parts.path

    def uri(self, password=PASSWORD, port=None, encode=True):
        """An AMQP URI of this user on the test's vhost (``password``
        percent-encoded unless ``encode`` is false)."""
        return 'amqp://{}:{}@{}:{}{}'.format(
            self.name, quote(password, safe='') if encode else password,
            self.host, port or self.port, self.path)


@pytest.fixture
def secret_user(rabbit_manager, rabbit_config):
    user = SecretUser(
        rabbit_config, 'threadko_secret_{}'.format(uuid.uuid4().hex[:8]))
    # RabbitManager has no user calls: its request helper does the HTTP
    rabbit_manager._request('PUT', ('users', user.name),
                            {'password': PASSWORD, 'tags': ''})
    try:
        rabbit_manager.set_vhost_permissions(user.vhost, user.name)
        yield user
    finally:
        try:
            rabbit_manager._request('DELETE', ('users', user.name))
        except RabbitManagerError as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def refused_port():
    """A local port that refuses connections (bound, not listening)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


def drop_connections(rabbit_manager, vhost, at_least):
    """Close every connection of ``vhost`` through the management API, once
    it lists ``at_least`` of them (it lists a new connection only after
    its next statistics round)."""
    deadline = time.monotonic() + 15
    while len(rabbit_manager.get_connections(vhost)) < at_least:
        assert time.monotonic() < deadline, 'connections never listed'
        time.sleep(0.2)
    assert rabbit_manager.close_all_connections(vhost) >= at_least


def assert_no_secret(texts, *secrets):
    leaks = [line for text in texts for line in text.splitlines()
             if any(secret in line for secret in secrets)]
    assert not leaks, 'a password leaked:\n' + '\n'.join(leaks)


# -- logs of in-process clients and services -----------------------------

class Capture(logging.Handler):
    """Keeps every record; :meth:`texts` gives all the text of each (name,
    message, args, exception with traceback, stack)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self._cond = threading.Condition()
        self._formatter = logging.Formatter()

    def emit(self, record):
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, text, timeout=BROKER_WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: any(text in r.getMessage() for r in self.records),
                timeout), 'nothing logged {!r}'.format(text)

    def texts(self):
        with self._cond:
            records = list(self.records)
        for record in records:
            parts = [record.name, record.getMessage(), repr(record.args),
                     record.exc_text or '', record.stack_info or '']
            if record.exc_info:
                parts.append(self._formatter.formatException(record.exc_info))
            yield '\n'.join(parts)


@pytest.fixture
def debug_logs():
    """A :class:`Capture` of every record, with the root, ``threadko`` and
    ``pika`` loggers at DEBUG (threadko silences pika by default)."""
    capture = Capture()
    loggers = [logging.getLogger(name) for name in ('', 'threadko', 'pika')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)
    yield capture
    logging.getLogger().removeHandler(capture)
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def error_text(call):
    """Run ``call``, which must fail; return the text of its exception
    (message, repr, traceback with causes)."""
    with pytest.raises(Exception) as caught:
        call()
    return '{!s}\n{!r}\n{}'.format(caught.value, caught.value, ''.join(
        traceback.format_exception(caught.type, caught.value, caught.tb)))


class Vault:
    name = 'vault'
    received = None  # a support.Received, set by the test

    @rpc
    def echo(self, value):
        return value

    @event_handler('vault_src', 'ping')
    def ping(self, value):
        Vault.received.add(value)


@pytest.mark.timeout(60)
def test_in_process_logs_never_show_the_password(
        secret_user, refused_port, debug_logs, containers, rabbit_manager):
    config = {'AMQP_URI': secret_user.uri(), 'TRANSPORT_OPTIONS': FAST_RETRIES}
    refused = dict(config, AMQP_URI=secret_user.uri(port=refused_port))
    wrong = dict(config, AMQP_URI=secret_user.uri(password=WRONG))
    failures = []

    # connect failures: connection refused, and ACCESS_REFUSED
    for bad in (refused, wrong):
        failures.append(error_text(ClusterRpcProxy(bad).start))
        dispatch = event_dispatcher(bad, retry_policy=FAST_RETRIES)
        failures.append(error_text(lambda: dispatch('vault_src', 'ping', 0)))
        dispatch.close()
    assert 'ACCESS_REFUSED' in '\n'.join(failures)

    # normal traffic, then every connection dropped, then traffic again
    Vault.received = Received()
    container = containers(Vault, config)
    container.start()
    dispatch = event_dispatcher(config, retry_policy=FAST_RETRIES)
    try:
        with ClusterRpcProxy(config, timeout=BROKER_WAIT) as proxy:
            assert proxy.vault.echo('before') == 'before'
            dispatch('vault_src', 'ping', 1)
            Vault.received.wait_for(1)

            drop_connections(rabbit_manager, secret_user.vhost, at_least=3)
            debug_logs.wait_for('Lost connection to broker at')

            assert proxy.vault.echo('after') == 'after'
            dispatch('vault_src', 'ping', 2)
            Vault.received.wait_for(2)
    finally:
        dispatch.close()
    container.stop()

    texts = list(debug_logs.texts())
    assert_no_secret(texts + failures, SECRET, WRONG)
    # the logs were there to leak: pika at DEBUG, URIs in masked form
    assert any(r.name.startswith('pika') and r.levelno == logging.DEBUG
               for r in debug_logs.records)
    logged = '\n'.join(texts)
    assert 'Error connecting to broker at amqp://{}{}'.format(
        secret_user.name, MASKED) in logged
    assert 'Lost connection to broker at amqp://{}{}'.format(
        secret_user.name, MASKED) in logged


# -- logs of `threadko run` ------------------------------------------------

SERVICES = '''
from threadko.rpc import rpc
from threadko.web.handlers import http


class Vault:
    name = 'vault'

    @rpc
    def echo(self, value):
        return value


class Failing:
    name = 'failing'

    @rpc
    def fail(self):
        try:
            {}['missing']
        except KeyError as exc:
            raise ValueError('bad thing') from exc

    @http('GET', '/fail')
    def fail_http(self, request):
        raise ValueError('bad page')
'''


@pytest.mark.timeout(60)
def test_run_process_logs_never_show_the_password(
        secret_user, refused_port, rabbit_config, rabbit_manager,
        service_process, monkeypatch):
    # the password comes from the environment, into a failover list whose
    # first URI is refused
    monkeypatch.setenv('TK_SECRET_PASSWORD', quote(PASSWORD, safe=''))
    from_env = '${TK_SECRET_PASSWORD}'
    process = service_process(SERVICES, 'vault:Vault', config={
        'AMQP_URI': '{};{}'.format(
            secret_user.uri(from_env, port=refused_port, encode=False),
            secret_user.uri(from_env, encode=False)),
        'TRANSPORT_OPTIONS': FAST_RETRIES,
        'LOGGING': DEBUG_LOGGING,
    })
    with ClusterRpcProxy(rabbit_config, timeout=BROKER_WAIT) as proxy:
        assert proxy.vault.echo('before') == 'before'
        drop_connections(rabbit_manager, secret_user.vhost, at_least=2)
        process.wait_for_line('Lost connection to broker at')
        assert proxy.vault.echo('after') == 'after'
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 0

    output = process.output
    assert_no_secret([output], SECRET)
    assert 'DEBUG pika' in output
    running = process.wait_for_line('running services')
    assert '{}{}{}:{}/'.format(
        secret_user.name, MASKED, secret_user.host, refused_port) in running
    assert '{}{}{}:{}/'.format(
        secret_user.name, MASKED, secret_user.host,
        secret_user.port) in running


@pytest.mark.timeout(60)
def test_run_process_connect_failures_never_show_the_password(
        secret_user, refused_port, service_process):
    # the first URI is refused, the second one's password is wrong: a
    # refused login is a configuration error, so the start fails at once
    process = service_process(SERVICES, 'vault:Vault', config={
        'AMQP_URI': '{};{}'.format(
            secret_user.uri(port=refused_port),
            secret_user.uri(password=WRONG)),
        'TRANSPORT_OPTIONS': FAST_RETRIES,
        'LOGGING': DEBUG_LOGGING,
    }, wait=False)
    assert process.wait() == 1
    process.close()

    output = process.output
    assert_no_secret([output], SECRET, WRONG)
    assert 'ACCESS_REFUSED' in output
    assert 'Connection refused' in output
    assert 'DEBUG pika' in output


@pytest.mark.parametrize('text, expected', [
    ('amqp://u:p1@h1:5672/v;amqps://u:p2@h2/v',
     'amqp://u:********@h1:5672/v;amqps://u:********@h2/v'),
    ('amqp://h1/v;amqp://u:p2@h2/v', 'amqp://h1/v;amqp://u:********@h2/v'),
    ('amqp://u:p@#;?x@h/', 'amqp://u:********@h/'),  # not percent-encoded
    ('amqp://u:p1@[::1/', 'amqp://u:********@[::1/'),  # urlparse refuses it
    ('at amqp://u:p1@h/ again', 'at amqp://u:********@h/ again'),
    ('amqp://u@h:5672/v', 'amqp://u@h:5672/v'),
])
def test_sanitize_url_masks_passwords_in_any_text(text, expected):
    assert sanitize_url(text) == expected


# -- threadko show-config ------------------------------------------------

def show_config(tmp_path, config_text, *args, env=None):
    (tmp_path / 'config.yaml').write_text(config_text)
    return subprocess.run(
        [sys.executable, '-m', 'threadko', 'show-config', '-c',
         'config.yaml', *args],
        cwd=str(tmp_path), env=dict(os.environ, **(env or {})),
        capture_output=True, text=True, timeout=BROKER_WAIT)


def test_show_config_masks_every_password_of_a_failover_list(tmp_path):
    encoded = quote(PASSWORD, safe='')
    config_text = '\n'.join([
        # a list mixing plain and TLS URIs, a percent-encoded password
        # with every delimiter, one from the environment with raw '@', '#'
        # and ';' in it, and a URI without a password
        'AMQP_URI: amqp://u1:{}@rabbit-1:5672/v;amqps://u2:{}@rabbit-2/v;'
        'amqp://u3:${{TK_RAW_PASSWORD}}@rabbit-3/v;amqp://rabbit-4/v'.format(
            encoded, SECRET + 'two'),
        'WEB_URLS: [https://admin:{}three@example.com/x]'.format(SECRET),
        'DB_PASSWORD: {}four'.format(SECRET),
        'TOKEN_TTL: 30',
        'api:',
        '  Secret_Key: ${TK_ENV_SECRET}',
        '  tokens: [{}five, {}six]'.format(SECRET, SECRET),
        '  retries: 3',
    ]) + '\n'

    result = show_config(tmp_path, config_text, env={
        'TK_RAW_PASSWORD': SECRET + '@#;seven',
        'TK_ENV_SECRET': SECRET + 'eight'})

    assert result.returncode == 0, result.stderr
    assert_no_secret([result.stdout, result.stderr], SECRET)
    assert yaml.safe_load(result.stdout) == {
        'AMQP_URI': (
            'amqp://u1:********@rabbit-1:5672/v;'
            'amqps://u2:********@rabbit-2/v;'
            'amqp://u3:********@rabbit-3/v;amqp://rabbit-4/v'),
        'WEB_URLS': ['https://admin:********@example.com/x'],
        'DB_PASSWORD': '********',
        'TOKEN_TTL': 30,
        'api': {'Secret_Key': '********', 'tokens': ['********', '********'],
                'retries': 3},
    }


def test_show_config_errors_do_not_echo_the_password(tmp_path):
    result = show_config(
        tmp_path, 'max_workers: 1\n', '-d',
        'AMQP_URI=amqp://u:{}@rabbit/ {{oops: ['.format(SECRET))

    assert result.returncode == 1
    assert 'Invalid --define' in result.stderr
    assert 'amqp://u:********@rabbit/' in result.stderr
    assert_no_secret([result.stdout, result.stderr], SECRET)


# -- no backdoor -----------------------------------------------------------

def test_there_is_no_backdoor_port(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, '-m', 'threadko', 'run', *args],
            cwd=str(tmp_path), capture_output=True, text=True,
            timeout=BROKER_WAIT)

    help_text = run('--help')
    assert help_text.returncode == 0
    assert 'backdoor' not in help_text.stdout.lower()

    refused = run('--backdoor-port', '5050', 'anything')
    assert refused.returncode == 2
    assert "No such option '--backdoor-port'" in refused.stderr

    # and the migration docs say so
    def words(doc):
        return ' '.join((DOCS / doc).read_text().split())

    assert ('``threadko run`` has no ``--backdoor-port`` (it refuses the '
            'option)') in words('migrating.rst')
    assert '``threadko run`` refuses ``--backdoor-port``' in words(
        'differences.rst')


# -- no tracebacks on the wire -------------------------------------------

def test_error_replies_and_pages_carry_no_traceback(
        rabbit_config, service_process, tmp_path):
    process = service_process(SERVICES, 'failing:Failing', config={
        'WEB_SERVER_ADDRESS': '127.0.0.1:0'})
    port = int(process.wait_for_line('serving HTTP on').rsplit(':', 1)[1])

    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        channel = connection.channel()
        replies = channel.queue_declare('', exclusive=True).method.queue
        channel.queue_bind(replies, 'nameko-rpc', 'security-test')
        channel.basic_publish(
            'nameko-rpc', 'failing.fail',
            json.dumps({'args': [], 'kwargs': {}}),
            pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8',
                reply_to='security-test', correlation_id='1'))
        body = None
        for method, _, body in channel.consume(
                replies, auto_ack=True, inactivity_timeout=BROKER_WAIT):
            break
        channel.cancel()
        assert method is not None, 'no reply'
    finally:
        connection.close()

    raw = body.decode('utf-8')
    assert json.loads(raw) == {'result': None, 'error': {
        'exc_type': 'ValueError', 'exc_path': 'builtins.ValueError',
        'exc_args': ['bad thing'], 'value': 'bad thing'}}

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(
            'http://127.0.0.1:{}/fail'.format(port), timeout=BROKER_WAIT)
    assert caught.value.code == 500
    page = caught.value.read().decode('utf-8')
    assert page == 'Error: ValueError: bad page\n'

    for sent in (raw, page):
        for trace in ('Traceback', 'File "', '.py', 'KeyError',
                      str(tmp_path)):
            assert trace not in sent
    # the tracebacks were logged where the errors happened
    output = process.output
    assert output.count('Traceback (most recent call last)') >= 2
    assert 'failing.py' in output and 'KeyError' in output
