"""Bad input over AMQP, on RabbitMQ: RPC requests, events and consumed
messages that are malformed, misaddressed or unserialisable.

Each case checks what the caller (or, for events and consumed messages,
the log and the broker) sees, then that the service still answers a normal
call, and, where a message could be left behind, that the service's queue
is empty once the service has stopped (nothing requeued forever).

Malformed requests are published with pika directly, so the test controls
every byte and property, and the error reply is read from a reply queue
the test declares.
"""

import json
import logging
import re
import subprocess

import pika
import pika.exceptions
import pytest

from threadko.events import EventDispatcher, event_handler
from threadko.exceptions import (
    BrokerRefused, IncorrectSignature, MethodNotFound, RemoteError,
    UnknownService,
)
from threadko.extensions import DependencyProvider
from threadko.messaging import Exchange, Queue, consume
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

from support import BROKER_WAIT, RawRpcCaller, Received

TEN_MB = 10 * 1024 * 1024


# -- the service under test ---------------------------------------------------

class Unserializable:
    def __repr__(self):
        return '<Unserializable>'


class Unlistable:
    """Iterable (so safe_for_serialization lists it), but iterating fails."""

    def __iter__(self):
        raise RuntimeError('cannot iterate')


class CallStackReader(DependencyProvider):
    """Reads every worker's call id stack in ``worker_setup``, as tracing
    and logging extensions do."""

    def worker_setup(self, worker_ctx):
        worker_ctx.call_id_stack


RAN = Received()  # what Target.record and Target.make_string were given


class Target:
    name = 'target'
    tracer = CallStackReader()

    @rpc
    def echo(self, value):
        return value

    @rpc
    def add(self, a, b):
        return a + b

    @rpc
    def record(self, value):
        RAN.add(value)
        return value

    @rpc
    def size(self, data):
        return len(data)

    @rpc
    def make_string(self, size):
        RAN.add(size)
        return 'x' * size

    @rpc
    def unserializable_result(self):
        return Unserializable()

    @rpc
    def exception_with_tuple_key(self):
        # safe_for_serialization turns the key into a list: unhashable
        raise ValueError({(1, 2): 'tuple key'})

    @rpc
    def exception_with_unlistable_arg(self):
        raise ValueError(Unlistable())


@pytest.fixture
def target(container_factory, rabbit_config):
    container = container_factory(Target, dict(rabbit_config))
    container.start()
    RAN.items.clear()
    return container


@pytest.fixture
def client(rabbit_config):
    with ClusterRpcProxy(rabbit_config, timeout=BROKER_WAIT) as proxy:
        yield proxy


class RawRpc(RawRpcCaller):
    """A raw caller that expects error replies."""

    def call(self, routing_key, body, **kwargs):
        """Publish and return the reply's ``error`` (asserting there is
        one and no result)."""
        reply = self.reply(self.publish(routing_key, body, **kwargs))
        assert reply['result'] is None
        assert reply['error'], reply
        return reply['error']


@pytest.fixture
def raw(rabbit_config):
    caller = RawRpc(rabbit_config['AMQP_URI'])
    yield caller
    caller.close()


def call_body(*args, **kwargs):
    return json.dumps({'args': list(args), 'kwargs': kwargs})


def still_serves(client, value='still here'):
    assert client.target.echo(value) == value
    return True


def ready_messages(uri, queue):
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        return connection.channel().queue_declare(
            queue, passive=True).method.message_count
    finally:
        connection.close()


def assert_queue_left_empty(container, rabbit_config, queue):
    """Stop ``container`` (which settles everything in flight) and check
    that nothing went back to ``queue``."""
    container.stop()
    assert ready_messages(rabbit_config['AMQP_URI'], queue) == 0


def log_lines(caplog, level=logging.WARNING):
    return [record.getMessage() for record in caplog.records
            if record.levelno >= level]


# -- RPC: requests the service cannot decode ----------------------------------

@pytest.mark.parametrize('body, says', [
    (b'{"args": [1', 'Cannot decode application/json body'),
    (b'not json at all', 'Cannot decode application/json body'),
    (b'\xff\xfe\x00garbage', 'Cannot decode application/json body'),
    (b'[1, 2]', 'Message missing `args` or `kwargs`'),
    (b'null', 'Message missing `args` or `kwargs`'),
    (b'{"args": []}', 'Message missing `args` or `kwargs`'),
    (b'{"args": 5, "kwargs": {}}', '`args` must be an array'),
    (b'{"args": [], "kwargs": [1]}', '`kwargs` an object'),
], ids=['truncated', 'not-json', 'not-utf8', 'array', 'null',
        'no-kwargs', 'args-not-array', 'kwargs-not-object'])
def test_malformed_body_is_answered_with_malformed_request(
        target, raw, client, rabbit_config, body, says):
    error = raw.call('target.echo', body)
    assert error['exc_type'] == 'MalformedRequest'
    assert error['exc_path'] == 'nameko.exceptions.MalformedRequest'
    assert says in error['value']
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


@pytest.mark.parametrize('content_type, headers, says', [
    ('application/x-unheard-of', None, "'application/x-unheard-of' is not "
                                       'accepted'),
    # pickle is registered but not accepted: never unpickled
    ('application/x-python-serialize', None, 'is not accepted'),
    ('application/x-yaml', None, 'is not accepted'),
    (None, None, 'no content_type'),
    ('application/json', {'compression': 'application/x-nope'},
     "unknown compression 'application/x-nope'"),
], ids=['unknown', 'pickle', 'yaml', 'missing', 'unknown-compression'])
def test_unaccepted_content_is_answered_in_json_with_malformed_request(
        target, raw, client, rabbit_config, content_type, headers, says):
    error = raw.call('target.echo', call_body(1), content_type=content_type,
                     headers=headers)
    assert error['exc_type'] == 'MalformedRequest'
    assert says in error['value']
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


# -- RPC: requests that cannot be answered ------------------------------------

def test_request_without_reply_to_runs_is_acked_and_logged(
        target, raw, client, rabbit_config, caplog):
    # a request nobody waits for is still work asked for (Nameko runs it
    # too): it runs once, the reply is dropped with an error naming why
    raw.publish('target.record', call_body('fire and forget'), reply=False)
    assert RAN.wait_for('fire and forget') == ['fire and forget']
    assert still_serves(client)
    assert any('target.record' in line and 'no reply_to' in line
               for line in log_lines(caplog, logging.ERROR)), caplog.text
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')
    assert RAN.items == ['fire and forget']  # not redelivered


def test_malformed_request_without_reply_to_is_dropped_and_logged(
        target, raw, client, rabbit_config, caplog):
    raw.publish('target.echo', b'{"args": [', reply=False)
    raw.publish('target.nope', call_body(), reply=False)
    assert still_serves(client)
    lines = log_lines(caplog)
    assert any('Malformed RPC request' in line for line in lines), lines
    assert sum('no reply_to' in line for line in lines) == 2, lines
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


# -- RPC: well-formed requests the method cannot take -------------------------

@pytest.mark.parametrize('args, kwargs, says', [
    ((1,), {}, "missing 1 required positional argument: 'b'"),
    ((1, 2, 3), {}, 'takes 3 positional arguments but 4 were given'),
    ((1,), {'c': 2}, "unexpected keyword argument 'c'"),
    ((1, 2), {'a': 3}, "multiple values for argument 'a'"),
], ids=['too-few', 'too-many', 'unknown-kwarg', 'twice'])
def test_wrong_arguments_raise_incorrect_signature_at_the_caller(
        target, client, args, kwargs, says):
    with pytest.raises(IncorrectSignature) as raised:
        client.target.add(*args, **kwargs)
    assert says in str(raised.value)
    assert client.target.add(1, 2) == 3


def test_wrong_argument_types_raise_the_methods_type_error_remotely(
        target, client):
    with pytest.raises(RemoteError) as raised:
        client.target.add(1, 'two')
    assert raised.value.exc_type == 'TypeError'
    assert 'unsupported operand' in raised.value.value
    assert client.target.add('one', 'two') == 'onetwo'


def test_unknown_service_raises_unknown_service_at_the_caller(
        target, client):
    with pytest.raises(UnknownService) as raised:
        client.no_such_service.echo(1)
    assert str(raised.value) == 'Unknown service `no_such_service`'
    assert still_serves(client)  # the same client, still usable


def test_unknown_method_raises_method_not_found(
        target, client, raw, rabbit_config):
    with pytest.raises(MethodNotFound) as raised:
        client.target.no_such_method(1)
    assert str(raised.value) == 'no_such_method'
    # a method name that is not even an identifier
    error = raw.call('target.__init__', call_body())
    assert error['exc_type'] == 'MethodNotFound'
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


def test_malformed_call_id_stack_header_is_ignored_with_a_warning(
        target, raw, client, rabbit_config, caplog):
    # the call id stack should be a list of strings; CallStackReader
    # reads it in every worker's setup, which kills the container if it
    # fails: the header is dropped instead
    stacks = (42, 'not-a-list', [1, None, {'x': 1}])
    for stack in stacks:
        reply = raw.reply(raw.publish(
            'target.echo', call_body('headers'),
            headers={'nameko.call_id_stack': stack}))
        assert reply == {'result': 'headers', 'error': None}
    warnings = [line for line in log_lines(caplog)
                if 'malformed nameko.call_id_stack header' in line]
    assert len(warnings) == len(stacks), caplog.text
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


# -- RPC: results and exceptions that cannot be serialised --------------------

def test_unserializable_result_is_an_unserializable_value_error(
        target, client, rabbit_config):
    with pytest.raises(RemoteError) as raised:
        client.target.unserializable_result()
    assert raised.value.exc_type == 'UnserializableValueError'
    assert raised.value.value == 'Unserializable value: `<Unserializable>`'
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')


UNPRINTABLE_SERVICE = """
    from threadko.rpc import rpc


    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError('no str for you')


    class Target:
        name = 'target'

        @rpc
        def echo(self, value):
            return value

        @rpc
        def unprintable_exception(self):
            raise Unprintable('payload')
"""


def test_exception_whose_str_fails_arrives_with_a_placeholder_value(
        service_process, client):
    # in a real `threadko run` process: in this one, pytest's log capture
    # would fail the worker's own log line naming the exception
    process = service_process(UNPRINTABLE_SERVICE, 'unprintable:Target')
    with pytest.raises(RemoteError) as raised:
        client.target.unprintable_exception()
    assert raised.value.exc_type == 'Unprintable'
    assert raised.value.value == '[__unicode__ failed]'
    assert still_serves(client)
    assert process.proc.poll() is None


@pytest.mark.parametrize('method, shown', [
    ('exception_with_tuple_key', "ValueError({(1, 2): 'tuple key'})"),
    ('exception_with_unlistable_arg', 'ValueError(<test_bad_input.Unlist'),
])
def test_exception_that_cannot_be_serialised_is_an_unserializable_value_error(
        target, client, rabbit_config, caplog, method, shown):
    # safe_for_serialization fails on these arguments; the caller gets
    # what an unserialisable result gives (Nameko's semantics), naming the
    # exception, instead of waiting while the request is requeued forever
    with pytest.raises(RemoteError) as raised:
        getattr(client.target, method)()
    assert raised.value.exc_type == 'UnserializableValueError'
    assert raised.value.value.startswith(
        'Unserializable value: `{}'.format(shown))
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')
    assert any('Cannot serialise the exception' in line and method in line
               for line in log_lines(caplog, logging.ERROR)), caplog.text


# -- RPC: large payloads ------------------------------------------------------

def test_ten_megabyte_argument_and_result_round_trip(target, client):
    # 10 MB is well under RabbitMQ's message size limit (128 MiB by
    # default), and threadko sets no limit of its own: it must just work
    payload = '0123456789abcdef' * (TEN_MB // 16)
    assert client.target.size(payload) == TEN_MB
    assert client.target.echo(payload) == payload
    assert still_serves(client)


@pytest.fixture
def max_message_size(rabbitmqctl):
    """The broker's ``max_message_size`` (there is no per-vhost one)."""
    if not _max_message_size:
        said = subprocess.run(
            [rabbitmqctl.executable, '-q', 'eval',
             'application:get_env(rabbit, max_message_size).'],
            check=True, capture_output=True, text=True, timeout=60).stdout
        match = re.match(r'\{ok,(\d+)\}', said.strip())
        assert match, said
        _max_message_size.append(int(match.group(1)))
    return _max_message_size[0]


_max_message_size = []  # asking rabbitmqctl takes a second


@pytest.mark.slow
def test_result_over_the_brokers_size_limit_is_a_clear_remote_error(
        target, client, rabbit_config, max_message_size, caplog):
    # the broker refuses the reply; redelivering the request would only run
    # the method and be refused again, forever, so the caller is told
    with pytest.raises(RemoteError) as raised:
        client.target.make_string(max_message_size + 1)
    assert raised.value.exc_type == 'BrokerRefused'
    assert 'larger than configured max size' in raised.value.value
    assert still_serves(client)
    assert_queue_left_empty(target, rabbit_config, 'rpc-target')
    assert RAN.items == [max_message_size + 1]  # ran once
    assert any('The broker refused the reply' in line
               for line in log_lines(caplog, logging.ERROR)), caplog.text


@pytest.mark.slow
def test_argument_over_the_brokers_size_limit_raises_at_the_caller(
        target, client, max_message_size):
    with pytest.raises(BrokerRefused) as raised:
        client.target.size('y' * (max_message_size + 1))
    assert 'larger than configured max size' in str(raised.value)
    assert still_serves(client)


# -- events -------------------------------------------------------------------

class Source:
    name = 'src'
    dispatch = EventDispatcher()


def handler_service(received, requeue_on_error=False):
    class Handler:
        name = 'handler'

        @event_handler('src', 'tick', requeue_on_error=requeue_on_error)
        def handle(self, data):
            received.add(data)
            if data.startswith('bad') and received.items.count(data) < 3:
                raise ValueError('rejecting {}'.format(data))

    return Handler


EVENT_QUEUE = 'evt-src-tick--handler.handle'


@pytest.fixture
def dispatch(container_factory, rabbit_config):
    container_factory(Source, dict(rabbit_config)).start()  # the exchange
    dispatch = event_dispatcher(rabbit_config)
    yield dispatch
    dispatch.close()


def serial(rabbit_config):
    """One message at a time, so the order of handling is the order sent."""
    return dict(rabbit_config, max_workers=1)


def test_event_whose_handler_raises_is_acked_and_logged(
        container_factory, rabbit_config, dispatch, caplog):
    received = Received()
    container = container_factory(
        handler_service(received), serial(rabbit_config))
    container.start()
    dispatch('src', 'tick', 'bad event')
    dispatch('src', 'tick', 'good event')
    # acked, not requeued: it would come back before 'good event'
    assert received.wait_for('good event') == ['bad event', 'good event']
    errors = [record for record in caplog.records
              if record.levelno >= logging.ERROR]
    assert any(record.exc_info and 'rejecting bad event'
               in str(record.exc_info[1]) for record in errors), caplog.text
    assert_queue_left_empty(container, rabbit_config, EVENT_QUEUE)
    assert received.items == ['bad event', 'good event']


def test_event_whose_handler_raises_is_redelivered_with_requeue_on_error(
        container_factory, rabbit_config, dispatch):
    received = Received()
    container = container_factory(
        handler_service(received, requeue_on_error=True),
        serial(rabbit_config))
    container.start()
    dispatch('src', 'tick', 'bad event')
    dispatch('src', 'tick', 'good event')
    # fails twice, then succeeds on its third delivery
    received.wait_for('good event')
    assert received.wait_for_count(4).count('bad event') == 3
    assert_queue_left_empty(container, rabbit_config, EVENT_QUEUE)


def set_dead_letter_policy(rabbit_manager, vhost, pattern, exchange):
    """Give the queues matching ``pattern`` a dead-letter exchange, the way
    an operator would (a policy, not queue arguments the service would
    have to declare)."""
    rabbit_manager._request('PUT', ('policies', vhost, 'dead-letters'), {
        'pattern': pattern, 'apply-to': 'queues',
        'definition': {'dead-letter-exchange': exchange}})


@pytest.fixture
def dead_letters(rabbit_config):
    """A fanout exchange ``dlx`` and the queue ``dead-letters`` on it; a
    function returning the messages that reached it (waiting for
    ``count``)."""
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    channel = connection.channel()
    channel.exchange_declare('dlx', exchange_type='fanout', durable=True)
    channel.queue_declare('dead-letters', durable=True)
    channel.queue_bind('dead-letters', 'dlx')

    def take(count):
        got = []
        for method, properties, body in channel.consume(
                'dead-letters', auto_ack=True,
                inactivity_timeout=BROKER_WAIT):
            assert method is not None, 'dead letters: {!r}'.format(got)
            got.append((properties, body))
            if len(got) == count:
                channel.cancel()
                return got

    yield take
    connection.close()


BAD_BODIES = [
    (b'{"truncated": ', 'application/json', 'Cannot decode'),
    (b'\x80\x04K\x01.', 'application/x-python-serialize', 'not accepted'),
]


def raw_publish(uri, exchange, routing_key, body, content_type):
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        connection.channel().basic_publish(
            exchange, routing_key, body, pika.BasicProperties(
                content_type=content_type, content_encoding='utf-8',
                delivery_mode=2))
    finally:
        connection.close()


def test_undecodable_event_is_dead_lettered_and_logged(
        container_factory, rabbit_config, rabbit_manager, dispatch,
        dead_letters, caplog):
    set_dead_letter_policy(
        rabbit_manager, rabbit_config['vhost'], '^evt-', 'dlx')
    received = Received()
    container = container_factory(
        handler_service(received), serial(rabbit_config))
    container.start()
    for body, content_type, _ in BAD_BODIES:
        raw_publish(rabbit_config['AMQP_URI'], 'src.events', 'tick', body,
                    content_type)
    dispatch('src', 'tick', 'good event')

    assert received.wait_for('good event') == ['good event']
    dead = dead_letters(len(BAD_BODIES))
    assert [body for _, body in dead] == [body for body, _, _ in BAD_BODIES]
    assert ready_messages(rabbit_config['AMQP_URI'], 'dead-letters') == 0
    for properties, _ in dead:
        death = properties.headers['x-death'][0]
        assert (death['queue'], death['reason']) == (EVENT_QUEUE, 'rejected')
    lines = log_lines(caplog, logging.ERROR)
    for _, _, says in BAD_BODIES:
        assert any(says in line and 'Discarding' in line
                   and '[handler.handle]' in line for line in lines), lines
    assert_queue_left_empty(container, rabbit_config, EVENT_QUEUE)


# -- @consume -----------------------------------------------------------------

JOBS = Queue('jobs', exchange=Exchange('jobs'), routing_key='job',
             queue_arguments={'x-dead-letter-exchange': 'dlx'})


def consumer_service(received):
    class Worker:
        name = 'worker'

        @consume(JOBS)
        def handle(self, body):
            received.add(body)
            if body == 'bad job':
                raise ValueError('rejecting {}'.format(body))

    return Worker


def test_consumed_message_that_is_undecodable_or_rejected(
        container_factory, rabbit_config, dead_letters, caplog):
    received = Received()
    container = container_factory(
        consumer_service(received), serial(rabbit_config))
    container.start()
    uri = rabbit_config['AMQP_URI']
    for body, content_type, _ in BAD_BODIES:
        raw_publish(uri, 'jobs', 'job', body, content_type)
    raw_publish(uri, 'jobs', 'job', b'"bad job"', 'application/json')
    raw_publish(uri, 'jobs', 'job', b'"good job"', 'application/json')

    # undecodable: rejected to the dead-letter exchange; rejected by the
    # handler: acked (no requeue_on_error), so not dead-lettered
    assert received.wait_for('good job') == ['bad job', 'good job']
    dead = dead_letters(len(BAD_BODIES))
    assert [body for _, body in dead] == [body for body, _, _ in BAD_BODIES]
    lines = log_lines(caplog, logging.ERROR)
    for _, _, says in BAD_BODIES:
        assert any(says in line and 'Discarding' in line
                   and '[worker.handle]' in line for line in lines), lines
    assert any('error handling worker' in line and 'rejecting bad job'
               in line for line in lines), lines
    assert_queue_left_empty(container, rabbit_config, 'jobs')
    assert received.items == ['bad job', 'good job']
    assert ready_messages(uri, 'dead-letters') == 0  # no more than those
