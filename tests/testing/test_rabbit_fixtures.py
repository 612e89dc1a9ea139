"""The RabbitMQ test infrastructure against a real broker: the management
API client, the pytest plugin's RabbitMQ fixtures and ``scripts/rabbitmq``.

Fixture lifetimes (what exists after a test) are checked with inner test
sessions (``pytester``), which use the same broker as this session.
"""

import os
import queue
import subprocess
import time
from pathlib import Path

import pika
import pytest

from threadko.exceptions import ThreadkoException
from threadko.testing.rabbit import (
    QueueEmpty, RabbitManager, RabbitManagerError)
from threadko.testing.utils import find_free_port

pytest_plugins = ['pytester']

rabbit = pytest.mark.rabbit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker_options(request):
    """Options that point an inner session at this session's broker."""
    return [
        '-p', 'no:cacheprovider',
        '--amqp-uri', request.config.getoption('RABBIT_AMQP_URI'),
        '--rabbit-api-uri', request.config.getoption('RABBIT_API_URI'),
    ]


@pytest.fixture
def channel(amqp_uri):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def vhost_names(rabbit_manager):
    return {vhost['name'] for vhost in rabbit_manager.get_vhosts()}


def wait_until_closed_by_broker(connection, timeout=10):
    """Process the connection's I/O until the broker closes it; return
    the error pika raises."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.1)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc
    raise AssertionError('the broker did not close the connection')


# -- rabbit_config ----------------------------------------------------------

@rabbit
def test_rabbit_config_vhost_lives_exactly_as_long_as_the_test(
        pytester, broker_options, request):
    pytester.makepyfile(test_inner='''
import pika
from threadko import config

BEFORE = {}
VHOSTS = []


def vhost_names(rabbit_manager):
    return {vhost['name'] for vhost in rabbit_manager.get_vhosts()}


def test_before():
    BEFORE.update(config)


def test_during(rabbit_config, rabbit_manager):
    vhost = rabbit_config['vhost']
    VHOSTS.append(vhost)
    assert vhost in vhost_names(rabbit_manager)
    assert dict(config) == dict(BEFORE, **rabbit_config)

    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    connection.channel().queue_declare('made_in_the_test')
    connection.close()
    queues = rabbit_manager.get_queues(vhost)
    assert [q['name'] for q in queues] == ['made_in_the_test']


def test_after(rabbit_manager):
    assert VHOSTS[0] not in vhost_names(rabbit_manager)
    assert dict(config) == BEFORE
''')
    result = pytester.runpytest_inprocess(*broker_options)
    result.assert_outcomes(passed=3)


@rabbit
def test_rabbit_config_shape(rabbit_config, request):
    vhost = rabbit_config['vhost']
    assert vhost.startswith('threadko_test_')
    suffix = vhost[len('threadko_test_'):]
    assert len(suffix) == 10 and suffix.isalpha() and suffix.islower()

    given = request.config.getoption('RABBIT_AMQP_URI')
    base = pika.URLParameters(given)
    params = pika.URLParameters(rabbit_config['AMQP_URI'])
    assert params.virtual_host == vhost
    assert (params.host, params.port) == (base.host, base.port)
    assert rabbit_config['username'] == base.credentials.username
    assert set(rabbit_config) == {'AMQP_URI', 'username', 'vhost'}


@rabbit
def test_amqp_uri_and_rabbit_uri_are_rabbit_configs_uri(
        rabbit_config, amqp_uri, rabbit_uri):
    assert amqp_uri == rabbit_uri == rabbit_config['AMQP_URI']


@rabbit
def test_option_aliases_and_the_given_vhost_is_ignored(
        pytester, request):
    base = pika.URLParameters(request.config.getoption('RABBIT_AMQP_URI'))
    given = 'amqp://{}:{}@{}:{}/not_this_one?heartbeat=7'.format(
        base.credentials.username, base.credentials.password,
        base.host, base.port)
    pytester.makepyfile(test_inner='''
def test_uri(rabbit_config):
    assert rabbit_config['AMQP_URI'] == (
        {prefix!r} + rabbit_config['vhost'] + '?heartbeat=7')
'''.format(prefix=given.split('not_this_one')[0]))
    result = pytester.runpytest_inprocess(
        '-p', 'no:cacheprovider', '--rabbit-amqp-uri', given,
        '--rabbit-ctl-uri', request.config.getoption('RABBIT_API_URI'))
    result.assert_outcomes(passed=1)


def test_unreachable_api_fails_the_test_with_a_helpful_message(pytester):
    pytester.makepyfile(test_inner='''
def test_needs_rabbit(rabbit_config):
    pass
''')
    api_uri = 'http://guest:secret@127.0.0.1:{}'.format(find_free_port())
    result = pytester.runpytest_inprocess(
        '-p', 'no:cacheprovider', '--rabbit-api-uri', api_uri)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        '*RabbitMQ is not reachable at http://guest:********@127.0.0.1:*'
        'scripts/test starts one; or pass --amqp-uri/--rabbit-api-uri*',
    ])
    assert 'secret' not in result.stdout.str()


# -- memory_config ----------------------------------------------------------

def test_memory_config_patches_config_and_deletes_its_vhost(pytester):
    pytester.makepyfile(test_inner='''
from threadko import config
from threadko.amqp import memory

BEFORE = {}
SEEN = {}


def test_before():
    BEFORE.update(config)


def test_during(memory_config):
    vhost = memory_config['vhost']
    assert vhost.startswith('threadko_test_')
    assert memory_config == {'AMQP_URI': 'memory:///' + vhost, 'vhost': vhost}
    assert dict(config) == dict(BEFORE, **memory_config)

    connection = memory.connect(vhost)
    connection.channel().queue_declare('q')
    SEEN.update(memory_config, connection=connection,
                broker=memory.get_broker(vhost))


def test_after():
    assert dict(config) == BEFORE
    assert SEEN['connection'].is_closed
    assert memory.get_broker(SEEN['vhost']) is not SEEN['broker']
    memory.delete_vhost(SEEN['vhost'])
''')
    result = pytester.runpytest_inprocess('-p', 'no:cacheprovider')
    result.assert_outcomes(passed=3)


# -- get_message_from_queue -------------------------------------------------

@rabbit
def test_get_message_from_queue_returns_a_published_message(
        channel, get_message_from_queue):
    channel.queue_declare('q')
    channel.basic_publish(
        '', 'q', b'{"answer": 42}',
        pika.BasicProperties(
            content_type='application/json', headers={'who': 'me'},
            correlation_id='c1'))

    message = get_message_from_queue('q')

    assert message.body == b'{"answer": 42}'
    assert message.payload == {'answer': 42}
    assert message.headers == {'who': 'me'}
    assert message.properties.correlation_id == 'c1'
    assert message.method.routing_key == 'q'
    with pytest.raises(QueueEmpty):  # it was acked
        get_message_from_queue('q', block=False)


@rabbit
def test_get_message_from_queue_without_ack_puts_it_back(
        channel, get_message_from_queue):
    channel.queue_declare('q')
    channel.basic_publish('', 'q', b'plain bytes')

    first = get_message_from_queue('q', ack=False)
    again = get_message_from_queue('q')

    assert first.payload == first.body == again.body == b'plain bytes'
    assert first.headers == {}
    assert again.method.redelivered


@rabbit
def test_get_message_from_queue_times_out_clearly(
        channel, get_message_from_queue):
    channel.queue_declare('empty')

    started = time.monotonic()
    with pytest.raises(QueueEmpty) as error:
        get_message_from_queue('empty', timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert str(error.value) == "no message on queue 'empty' within 0.3s"
    assert isinstance(error.value, queue.Empty)

    with pytest.raises(QueueEmpty, match="no message on queue 'empty' now"):
        get_message_from_queue('empty', block=False)


# -- RabbitManager ----------------------------------------------------------

@rabbit
def test_wrong_password_is_a_helpful_rabbit_manager_error(rabbit_manager):
    base_url = rabbit_manager.base_url  # ends with /api/, no credentials
    api_uri = base_url[:-len('api/')].replace(
        '://', '://guest:wrong-password@', 1)

    with pytest.raises(RabbitManagerError) as error:
        RabbitManager(api_uri).get_vhosts()

    exc = error.value
    assert isinstance(exc, ThreadkoException)
    assert exc.status == 401
    assert str(exc) == (
        'GET {}vhosts failed: HTTP 401 Unauthorized: '
        '{{"error":"not_authorized","reason":"Login failed"}}'.format(
            base_url))
    assert 'wrong-password' not in str(exc)


def test_unreachable_api_is_a_rabbit_manager_error():
    port = find_free_port()
    manager = RabbitManager('http://guest:guest@127.0.0.1:{}'.format(port))

    with pytest.raises(RabbitManagerError) as error:
        manager.create_vhost('x')

    assert error.value.status is None
    assert str(error.value).startswith(
        'PUT http://127.0.0.1:{}/api/vhosts/x failed: '.format(port))
    assert 'refused' in str(error.value)


@rabbit
def test_missing_queue_is_a_404(rabbit_manager, rabbit_config):
    with pytest.raises(RabbitManagerError) as error:
        rabbit_manager.get_queue(rabbit_config['vhost'], 'nope')
    assert error.value.status == 404
    assert '/api/queues/threadko_test_' in str(error.value)


@rabbit
def test_close_all_connections_closes_a_real_connection(
        rabbit_manager, rabbit_config):
    vhost = rabbit_config['vhost']
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        [listed] = rabbit_manager.wait_for_connections(vhost, 1)
        assert listed['vhost'] == vhost
        assert listed['user'] == rabbit_config['username']

        assert rabbit_manager.close_all_connections(
            vhost, reason='bye from the test') == 1

        closed = wait_until_closed_by_broker(connection)
        assert closed.reply_code == 320  # CONNECTION_FORCED
        assert 'bye from the test' in closed.reply_text
        with pytest.raises(pika.exceptions.ConnectionWrongStateError):
            connection.channel()
        assert rabbit_manager.wait_for_connections(vhost, 0) == []
    finally:
        if connection.is_open:
            connection.close()


@rabbit
def test_wait_for_connections_gives_up_at_its_deadline(
        rabbit_manager, rabbit_config):
    with pytest.raises(RabbitManagerError, match=(
            r"expected 1 connection\(s\) on vhost 'threadko_test_\w+', "
            r'the API still lists 0 after 0.3s')):
        rabbit_manager.wait_for_connections(
            rabbit_config['vhost'], 1, timeout=0.3)


@rabbit
def test_vhost_names_are_percent_encoded(rabbit_manager, rabbit_config):
    vhost = rabbit_config['vhost'] + '/with slash&more'
    rabbit_manager.create_vhost(vhost)
    try:
        rabbit_manager.set_vhost_permissions(
            vhost, rabbit_config['username'])
        assert vhost in vhost_names(rabbit_manager)
        assert rabbit_manager.get_queues(vhost) == []
    finally:
        rabbit_manager.delete_vhost(vhost)
    assert vhost not in vhost_names(rabbit_manager)
    assert isinstance(rabbit_manager.get_queues('/'), list)


@rabbit
def test_exchanges_bindings_publish_and_get(
        rabbit_manager, rabbit_config, channel, get_message_from_queue):
    vhost = rabbit_config['vhost']
    channel.queue_declare('q')
    channel.queue_bind('q', 'amq.topic', 'a.*')

    assert {'', 'amq.topic'} <= {
        x['name'] for x in rabbit_manager.get_exchanges(vhost)}
    assert rabbit_manager.get_queue(vhost, 'q')['name'] == 'q'
    expected = {('', 'q'), ('amq.topic', 'a.*')}
    assert {(b['source'], b['routing_key'])
            for b in rabbit_manager.get_queue_bindings(vhost, 'q')} == expected
    assert {(b['source'], b['routing_key'])
            for b in rabbit_manager.get_bindings(vhost)} == expected

    assert rabbit_manager.publish(vhost, 'amq.topic', 'a.b', {'x': 1})
    assert rabbit_manager.publish(
        vhost, '', 'q', 'text', properties={'headers': {'h': 'v'}})
    assert rabbit_manager.publish(vhost, '', 'q', b'\x00\xff')
    assert not rabbit_manager.publish(vhost, 'amq.topic', 'b.c', 'lost')

    first, second = rabbit_manager.get_messages(vhost, 'q', count=2)
    assert (first['payload'], first['properties']['content_type']) == (
        '{"x": 1}', 'application/json')
    assert (first['routing_key'], first['exchange']) == ('a.b', 'amq.topic')
    assert (second['payload'], second['properties']['headers']) == (
        'text', {'h': 'v'})

    [binary] = rabbit_manager.get_messages(vhost, 'q', requeue=True)
    assert binary['payload_encoding'] == 'base64'
    assert get_message_from_queue('q').body == b'\x00\xff'
    assert rabbit_manager.get_messages(vhost, 'q') == []


# -- scripts/rabbitmq -------------------------------------------------------

def run_script(*args, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.run(
        [str(REPO / 'scripts' / 'rabbitmq'), *args], env=env,
        capture_output=True, text=True, timeout=60)


@rabbit
def test_script_uses_and_never_stops_a_server_it_did_not_start(
        rabbit_manager, tmp_path):
    # TMPDIR points the script at an empty state directory: no marker
    ensured = run_script('ensure', tmp_path=tmp_path)
    assert ensured.returncode == 0, ensured.stderr
    assert ensured.stdout.startswith('rabbitmq: already running')

    stopped = run_script('stop', tmp_path=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == (
        'rabbitmq: not started by the tests; leaving it alone\n')
    rabbit_manager.get_vhosts()  # still answers
    assert list(tmp_path.iterdir()) == []
