"""RPC between threadko and real Nameko 2.14.1 processes on RabbitMQ.

1. a Nameko client (``nameko_peer/driver.py``) calling a threadko service;
2. threadko's standalone client calling a Nameko service
   (``nameko_peer/services.py``);
3. workers of each calling the other, and a threadko -> Nameko -> threadko
   chain, with the call id stack growing across the boundary;
4. a service replaced by the other implementation under a running Nameko
   client.
"""

import threading
from collections import defaultdict

import pytest

from threadko.exceptions import (
    IncorrectSignature, MethodNotFound, RemoteError, UnknownService,
)
from threadko.extensions import DependencyProvider
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.rpc import ClusterRpcProxy

from interop_support import STANDALONE_CALL_ID, Worker, call_id_of

WAIT = 10  # seconds any single call may take

#: the same string as nameko_peer/services.py sends: accents, CJK, an emoji
UNICODE_SAMPLE = 'Gr\u00fc\u00dfe, \u4e16\u754c \U0001F40D \u00e9\u00e8'
NESTED = {
    'list': [1, 2.5, None, True, False, 'x', [], {}],
    'deep': {'a': {'b': {'c': [1, {'d': None}]}}},
    'big': 2 ** 62,
    'negative': -7,
    'tiny': 1e-9,
    'text': 'quotes " and \\ backslash\n\ttab',
    'empty': '',
}
CONTEXT_DATA = {
    'language': 'en-gb',
    'user_id': 42,
    'auth_token': 'secret-token',
    'custom': 'caf\u00e9 \u2615',
    'roles': ['reader', 'writer'],
    'enabled': True,
}

#: a call id stack longer than the 10 parent calls tracked by default
LONG_STACK = ['upstream.call.{}'.format(n) for n in range(15)]
#: floats in context data: AMQP doubles in headers when Nameko sends them
FLOAT_CONTEXT = {'ratio': 1.5, 'pi': 3.141592653589793}

# -- threadko services --


def describe(worker_ctx):
    return {
        'data': dict(worker_ctx.data),
        'call_id': worker_ctx.call_id,
        'call_id_stack': list(worker_ctx.call_id_stack),
    }


class Gates(DependencyProvider):
    """``self.gates.wait(tag, timeout)`` blocks until a worker that called
    ``self.gates.open_after_reply(tag)`` has finished, i.e. after its reply
    was published (teardown runs after the reply)."""

    def setup(self):
        self.lock = threading.Lock()
        self.events = defaultdict(threading.Event)
        self.to_open = defaultdict(list)

    def event(self, tag):
        with self.lock:
            return self.events[tag]

    def worker_teardown(self, worker_ctx):
        with self.lock:
            tags = self.to_open.pop(worker_ctx, ())
        for tag in tags:
            self.event(tag).set()

    def get_dependency(self, worker_ctx):
        gates = self

        class Handle:
            def wait(self, tag, timeout):
                return gates.event(tag).wait(timeout)

            def open_after_reply(self, tag):
                with gates.lock:
                    gates.to_open[worker_ctx].append(tag)

        return Handle()


class ThreadkoEcho:
    """The threadko twin of nameko_peer's ``nameko_echo``."""

    name = 'threadko_echo'

    worker = Worker()
    gates = Gates()
    nameko_echo = RpcProxy('nameko_echo')

    @rpc
    def echo(self, *args, **kwargs):
        return {'args': list(args), 'kwargs': kwargs}

    @rpc
    def raise_value_error(self, *args):
        raise ValueError(*args)

    @rpc
    def unicode(self, text):
        return {'received': text, 'length': len(text), 'sent': UNICODE_SAMPLE}

    @rpc
    def context(self):
        return describe(self.worker)

    @rpc
    def call_nameko(self, method, *args, **kwargs):
        result = getattr(self.nameko_echo, method)(*args, **kwargs)
        return {'call_id_stack': list(self.worker.call_id_stack),
                'result': result}

    @rpc
    def wait_for_release(self, tag, timeout=WAIT):
        if not self.gates.wait(tag, timeout):
            raise RuntimeError('gate {!r} was not opened'.format(tag))
        return {'released': tag}

    @rpc
    def release(self, tag):
        self.gates.open_after_reply(tag)
        return tag


class ThreadkoEchoSvc:
    """Replaces nameko_peer's ``echo_svc``."""

    name = 'echo_svc'

    @rpc
    def echo(self, value):
        return {'impl': 'threadko', 'value': value}


@pytest.fixture
def start_threadko(container_factory, rabbit_config):
    """``start(service_cls)``: a started threadko container on the test's
    vhost."""
    def start(service_cls):
        container = container_factory(service_cls, rabbit_config)
        container.start()
        return container
    return start


@pytest.fixture
def driver(nameko_driver, start_threadko):
    """A Nameko client, with threadko_echo running."""
    driver = nameko_driver(wait=False)
    start_threadko(ThreadkoEcho)
    return driver.wait_ready()


@pytest.fixture
def nameko_echo(nameko_services):
    """nameko_echo running in a Nameko process."""
    return nameko_services('nameko_echo')


@pytest.fixture
def both_echoes(nameko_services, start_threadko):
    """nameko_echo (Nameko) and threadko_echo (threadko) running."""
    nameko = nameko_services('nameko_echo', wait=False)
    start_threadko(ThreadkoEcho)
    return nameko.wait_ready()


@pytest.fixture
def client(rabbit_config):
    """threadko's standalone ``ClusterRpcProxy`` on the test's vhost."""
    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as proxy:
        yield proxy


# -- 1. Nameko client -> threadko service --


def test_nameko_client_gets_threadko_results(driver):
    assert driver.call(
        'threadko_echo', 'echo', [NESTED, 'two'],
        {'key': NESTED, 'cl\u00e9 \U0001F511': 'v\u00e4lue'}) == {
            'args': [NESTED, 'two'],
            'kwargs': {'key': NESTED, 'cl\u00e9 \U0001F511': 'v\u00e4lue'}}
    assert driver.call('threadko_echo', 'echo') == {'args': [], 'kwargs': {}}
    assert driver.call('threadko_echo', 'unicode', [UNICODE_SAMPLE]) == {
        'received': UNICODE_SAMPLE, 'length': len(UNICODE_SAMPLE),
        'sent': UNICODE_SAMPLE}


def test_nameko_client_call_async_answered_out_of_order(driver):
    # the first call is answered only after the last one's reply was sent;
    # the driver collects the replies last call first
    results = driver.call_async(
        [('threadko_echo', 'wait_for_release', ['gate'], {})]
        + [('threadko_echo', 'echo', [n], {'n': n}) for n in range(3)]
        + [('threadko_echo', 'release', ['gate'], {})])

    assert results == (
        [{'result': {'released': 'gate'}}]
        + [{'result': {'args': [n], 'kwargs': {'n': n}}} for n in range(3)]
        + [{'result': 'gate'}])


def test_nameko_client_gets_threadko_errors_as_nameko_exceptions(driver):
    error = driver.call_error(
        'threadko_echo', 'raise_value_error', ['bad', 3])
    assert (error['module'], error['class']) == (
        'nameko.exceptions', 'RemoteError')
    assert (error['exc_type'], error['value']) == ('ValueError', "('bad', 3)")

    error = driver.call_error('threadko_echo', 'no_such_method')
    assert (error['module'], error['class']) == (
        'nameko.exceptions', 'MethodNotFound')
    assert error['str'] == 'no_such_method'

    error = driver.call_error('threadko_echo', 'unicode', [], {'wrong': 1})
    assert (error['module'], error['class']) == (
        'nameko.exceptions', 'IncorrectSignature')
    assert 'wrong' in error['str']

    error = driver.call_error('no_such_service', 'echo')
    assert (error['module'], error['class']) == (
        'nameko.exceptions', 'UnknownService')
    assert error['str'] == 'Unknown service `no_such_service`'

    # the service is still there after all that
    assert driver.call('threadko_echo', 'echo', [1]) == {
        'args': [1], 'kwargs': {}}


def test_threadko_worker_sees_nameko_client_context(driver):
    first = driver.call('threadko_echo', 'context')
    second = driver.call('threadko_echo', 'context')

    assert first['data'] == {}
    proxy_id, own_id = first['call_id_stack']
    assert STANDALONE_CALL_ID.match(proxy_id)
    assert own_id == first['call_id']
    assert call_id_of('threadko_echo', 'context').match(own_id)
    # a Nameko 2 standalone proxy uses one call id for all its calls
    assert second['call_id_stack'] == [proxy_id, second['call_id']]
    assert second['call_id'] != first['call_id']

    seen = driver.call(
        'threadko_echo', 'context',
        context_data=dict(CONTEXT_DATA, call_id_stack=['upstream.call.1']))
    assert seen['data'] == CONTEXT_DATA
    upstream, proxy_id, own_id = seen['call_id_stack']
    assert upstream == 'upstream.call.1'
    assert STANDALONE_CALL_ID.match(proxy_id)
    assert own_id == seen['call_id']

    # both sides keep the last parent_calls_tracked + 1 = 11 entries
    seen = driver.call('threadko_echo', 'context',
                       context_data={'call_id_stack': LONG_STACK})
    assert seen['call_id_stack'][:9] == LONG_STACK[-9:]
    assert STANDALONE_CALL_ID.match(seen['call_id_stack'][9])
    assert seen['call_id_stack'][10:] == [seen['call_id']]


def test_threadko_worker_sees_float_context_from_nameko_client(driver):
    seen = driver.call('threadko_echo', 'context', context_data=FLOAT_CONTEXT)

    assert seen['data'] == FLOAT_CONTEXT
    assert all(type(value) is float for value in seen['data'].values())


# -- 2. threadko client -> Nameko service --


def test_threadko_client_gets_nameko_results(nameko_echo, client):
    assert client.nameko_echo.echo(
        NESTED, 'two', key=NESTED, **{'cl\u00e9 \U0001F511': 'v\u00e4lue'}
    ) == {'args': [NESTED, 'two'],
          'kwargs': {'key': NESTED, 'cl\u00e9 \U0001F511': 'v\u00e4lue'}}
    assert client.nameko_echo.echo() == {'args': [], 'kwargs': {}}
    assert client['nameko_echo'].unicode(UNICODE_SAMPLE) == {
        'received': UNICODE_SAMPLE, 'length': len(UNICODE_SAMPLE),
        'sent': UNICODE_SAMPLE}


def test_threadko_client_call_async_to_nameko_answered_out_of_order(
        nameko_echo, client):
    service = client.nameko_echo

    waiting = service.wait_for_release.call_async('gate')
    echoes = [service.echo.call_async(n, n=n) for n in range(3)]
    release = service.release.call_async('gate')

    assert release.result() == 'gate'
    assert [reply.result() for reply in reversed(echoes)] == [
        {'args': [n], 'kwargs': {'n': n}} for n in reversed(range(3))]
    assert waiting.result() == {'released': 'gate'}


def test_threadko_client_gets_nameko_errors_as_threadko_exceptions(
        nameko_echo, client):
    with pytest.raises(RemoteError) as raised:
        client.nameko_echo.raise_value_error('bad', 3)
    assert (raised.value.exc_type, raised.value.value) == (
        'ValueError', "('bad', 3)")

    with pytest.raises(MethodNotFound) as raised:
        client.nameko_echo.no_such_method()
    assert str(raised.value) == 'no_such_method'

    with pytest.raises(IncorrectSignature) as raised:
        client.nameko_echo.unicode(wrong=1)
    assert 'wrong' in str(raised.value)

    with pytest.raises(UnknownService):
        client.no_such_service.echo()

    assert client.nameko_echo.echo(1) == {'args': [1], 'kwargs': {}}


def test_nameko_worker_sees_threadko_client_context(
        nameko_echo, rabbit_config):
    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as plain:
        first = plain.nameko_echo.context()
        second = plain.nameko_echo.context()
    with ClusterRpcProxy(rabbit_config, timeout=WAIT,
                         context_data=CONTEXT_DATA) as with_context:
        seen = with_context.nameko_echo.context()

    assert first['data'] == {}
    proxy_id, own_id = first['call_id_stack']
    assert STANDALONE_CALL_ID.match(proxy_id)
    assert own_id == first['call_id']
    assert call_id_of('nameko_echo', 'context').match(own_id)
    assert second['call_id_stack'] == [proxy_id, second['call_id']]

    assert seen['data'] == CONTEXT_DATA
    assert STANDALONE_CALL_ID.match(seen['call_id_stack'][0])
    assert seen['call_id_stack'][1:] == [seen['call_id']]

    # both sides keep the last parent_calls_tracked + 1 = 11 entries
    with ClusterRpcProxy(rabbit_config, timeout=WAIT,
                         context_data={'call_id_stack': LONG_STACK}) as deep:
        seen = deep.nameko_echo.context()
    assert seen['call_id_stack'][:9] == LONG_STACK[-9:]
    assert STANDALONE_CALL_ID.match(seen['call_id_stack'][9])
    assert seen['call_id_stack'][10:] == [seen['call_id']]


def test_nameko_worker_sees_float_context_from_threadko_client(
        nameko_echo, rabbit_config):
    with ClusterRpcProxy(rabbit_config, timeout=WAIT,
                         context_data=FLOAT_CONTEXT) as client:
        seen = client.nameko_echo.context()

    assert seen['data'] == FLOAT_CONTEXT
    assert all(type(value) is float for value in seen['data'].values())


# -- 3. service to service --


def test_threadko_worker_calls_nameko_worker(both_echoes, rabbit_config):
    with ClusterRpcProxy(rabbit_config, timeout=WAIT,
                         context_data={'language': 'fr'}) as client:
        outcome = client.threadko_echo.call_nameko('context')
        echoed = client.threadko_echo.call_nameko('echo', NESTED, key='v')
        with pytest.raises(RemoteError) as raised:
            client.threadko_echo.call_nameko('raise_value_error', 'deep')

    threadko_stack = outcome['call_id_stack']
    assert STANDALONE_CALL_ID.match(threadko_stack[0])
    assert call_id_of('threadko_echo', 'call_nameko').match(threadko_stack[1])
    assert len(threadko_stack) == 2
    nameko_worker = outcome['result']
    assert nameko_worker['call_id_stack'] == (
        threadko_stack + [nameko_worker['call_id']])
    assert call_id_of('nameko_echo', 'context').match(
        nameko_worker['call_id'])
    assert nameko_worker['data'] == {'language': 'fr'}

    assert echoed['result'] == {'args': [NESTED], 'kwargs': {'key': 'v'}}
    # the threadko worker's RpcProxy raised RemoteError(ValueError), which
    # then failed that worker
    assert raised.value.exc_type == 'RemoteError'
    assert raised.value.value == "ValueError deep"


def test_nameko_worker_calls_threadko_worker(both_echoes, nameko_driver):
    driver = nameko_driver()

    outcome = driver.call('nameko_echo', 'call_threadko', ['context'],
                          context_data={'user_id': 7})
    echoed = driver.call('nameko_echo', 'call_threadko',
                         ['echo', NESTED], {'key': 'v'})
    error = driver.call_error('nameko_echo', 'call_threadko',
                              ['raise_value_error', 'deep'])

    nameko_stack = outcome['call_id_stack']
    assert STANDALONE_CALL_ID.match(nameko_stack[0])
    assert call_id_of('nameko_echo', 'call_threadko').match(nameko_stack[1])
    assert len(nameko_stack) == 2
    threadko_worker = outcome['result']
    assert threadko_worker['call_id_stack'] == (
        nameko_stack + [threadko_worker['call_id']])
    assert call_id_of('threadko_echo', 'context').match(
        threadko_worker['call_id'])
    assert threadko_worker['data'] == {'user_id': 7}

    assert echoed['result'] == {'args': [NESTED], 'kwargs': {'key': 'v'}}
    assert (error['class'], error['exc_type'], error['value']) == (
        'RemoteError', 'RemoteError', 'ValueError deep')


def test_call_chain_threadko_nameko_threadko(both_echoes, client):
    outcome = client.threadko_echo.call_nameko('call_threadko', 'context')

    first_stack = outcome['call_id_stack']
    nameko_stack = outcome['result']['call_id_stack']
    last = outcome['result']['result']
    assert len(first_stack) == 2
    assert nameko_stack[:2] == first_stack and len(nameko_stack) == 3
    assert last['call_id_stack'] == nameko_stack + [last['call_id']]
    patterns = [
        STANDALONE_CALL_ID,
        call_id_of('threadko_echo', 'call_nameko'),
        call_id_of('nameko_echo', 'call_threadko'),
        call_id_of('threadko_echo', 'context'),
    ]
    assert all(pattern.match(call_id) for pattern, call_id in zip(
        patterns, last['call_id_stack'])), last['call_id_stack']


# -- 4. replacing a service on a live broker --


def test_service_replaced_by_the_other_implementation_under_a_live_client(
        nameko_services, nameko_driver, start_threadko):
    nameko = nameko_services('echo_svc', wait=False)
    driver = nameko_driver(wait=False)
    nameko.wait_ready()
    driver.wait_ready()
    assert driver.call('echo_svc', 'echo', ['one']) == {
        'impl': 'nameko', 'value': 'one'}

    assert nameko.stop() == 0
    assert nameko.lines[-1] == 'STOPPED'

    # a call made while nobody serves echo_svc waits in its queue and is
    # answered by the threadko service that takes over
    pending = driver.send_call('echo_svc', 'echo', ['two'])
    container = start_threadko(ThreadkoEchoSvc)
    assert driver.result(driver.answer(pending)) == {
        'impl': 'threadko', 'value': 'two'}
    assert driver.call('echo_svc', 'echo', ['three']) == {
        'impl': 'threadko', 'value': 'three'}

    container.stop()
    nameko_services('echo_svc')
    assert driver.call('echo_svc', 'echo', ['four']) == {
        'impl': 'nameko', 'value': 'four'}
    assert driver.proc.poll() is None  # the same client all along


def test_nameko_and_threadko_instances_share_one_request_queue(
        nameko_services, start_threadko, client):
    nameko = nameko_services('echo_svc', wait=False)
    start_threadko(ThreadkoEchoSvc)
    nameko.wait_ready()

    # the broker hands the shared rpc-echo_svc queue's requests to its two
    # consumers in turn
    answers = [client.echo_svc.echo(n) for n in range(4)]

    assert [answer['value'] for answer in answers] == list(range(4))
    assert {answer['impl'] for answer in answers} == {'nameko', 'threadko'}
