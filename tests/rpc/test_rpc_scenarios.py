"""RPC behaviour a user can observe, each scenario run on the embedded
broker and on RabbitMQ (the ``broker`` fixture)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from threadko.exceptions import (
    IncorrectSignature, MethodNotFound, RemoteError, RpcClientStopped,
    RpcTimeout, UnknownService, deserialize_to_instance,
)
from threadko.rpc import ClusterRpc, RpcProxy, rpc
from threadko.testing.services import entrypoint_waiter
from threadko.standalone.rpc import (
    ClusterRpcClient, ClusterRpcProxy, ServiceRpcClient, ServiceRpcProxy,
)

WAIT = 10


@deserialize_to_instance
class InsufficientFunds(Exception):
    pass


class Unserializable:
    def __repr__(self):
        return '<Unserializable>'


class Greeter:
    name = 'greeter'

    release = threading.Event()

    @rpc
    def hello(self, name, punctuation='!'):
        return 'Hello, {}{}'.format(name, punctuation)

    @rpc
    def echo(self, *args, **kwargs):
        return {'args': list(args), 'kwargs': kwargs}

    @rpc
    def fail(self, *args):
        raise ValueError(*args)

    @rpc
    def withdraw(self, amount):
        raise InsufficientFunds('balance too low for {}'.format(amount))

    @rpc
    def unserializable(self):
        return Unserializable()

    @rpc
    def wait_for_release(self):
        assert Greeter.release.wait(WAIT)
        return 'released'


class Front:
    """Calls greeter from its own workers, and itself."""

    name = 'front'
    greeter = RpcProxy('greeter')
    front = RpcProxy('front')
    cluster = ClusterRpc()

    @rpc
    def greet(self, name):
        return self.greeter.hello(name) + ' (via front)'

    @rpc
    def greet_async(self, names):
        replies = [self.greeter.hello.call_async(n) for n in names]
        return [reply.result() for reply in reversed(replies)]

    @rpc
    def greet_cluster(self, name):
        return self.cluster.greeter.hello(name)

    @rpc
    def double(self, value):
        return value * 2

    @rpc
    def quadruple(self, value):
        # a worker calling back into its own service
        return self.front.double(self.front.double(value))


@pytest.fixture
def greeter(broker, containers):
    container = containers(Greeter, broker.config)
    container.start()
    return container


@pytest.fixture
def front(broker, containers, greeter):
    container = containers(Front, broker.config)
    container.start()
    return container


@pytest.fixture
def cluster(broker):
    with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
        yield proxy


def test_call_returns_result(greeter, cluster):
    assert cluster.greeter.hello('Matt') == 'Hello, Matt!'
    assert cluster.greeter.hello('Matt', punctuation='?') == 'Hello, Matt?'
    assert cluster['greeter'].hello(name='Ann') == 'Hello, Ann!'


def test_unicode_payloads_round_trip(greeter, cluster):
    text = 'Zoë – 東京 – 🚀 – \u0000'
    result = cluster.greeter.echo(text, key=text)
    assert result == {'args': [text], 'kwargs': {'key': text}}


def test_call_async_replies_out_of_order(greeter, cluster):
    replies = [cluster.greeter.hello.call_async(str(i)) for i in range(20)]
    for i, reply in reversed(list(enumerate(replies))):
        assert reply.result() == 'Hello, {}!'.format(i)
    # a reply's result can be read again
    assert replies[0].result() == 'Hello, 0!'


def test_remote_error_carries_type_and_value(greeter, cluster):
    with pytest.raises(RemoteError) as info:
        cluster.greeter.fail('bad', 3)
    assert info.value.exc_type == 'ValueError'
    assert info.value.value == "('bad', 3)"
    # the service keeps serving
    assert cluster.greeter.hello('again') == 'Hello, again!'


def test_registered_exception_is_reraised_as_itself(greeter, cluster):
    with pytest.raises(InsufficientFunds) as info:
        cluster.greeter.withdraw(100)
    assert str(info.value) == 'balance too low for 100'


def test_method_not_found(greeter, cluster):
    with pytest.raises(MethodNotFound) as info:
        cluster.greeter.missing()
    assert str(info.value) == 'missing'


def test_incorrect_signature(greeter, cluster):
    with pytest.raises(IncorrectSignature) as info:
        cluster.greeter.hello()
    assert "missing 1 required positional argument: 'name'" in str(
        info.value)
    with pytest.raises(IncorrectSignature):
        cluster.greeter.hello('a', 'b', 'c')


def test_unknown_service(broker, greeter, cluster):
    with pytest.raises(UnknownService) as info:
        cluster.nobody.hello()
    assert str(info.value) == 'Unknown service `nobody`'


def test_unserializable_result_is_a_clear_remote_error(greeter, cluster):
    with pytest.raises(RemoteError) as info:
        cluster.greeter.unserializable()
    assert info.value.exc_type == 'UnserializableValueError'
    assert 'Unserializable value: `<Unserializable>`' in str(info.value)
    assert cluster.greeter.hello('still up') == 'Hello, still up!'


def test_unserializable_argument_raises_before_publishing(greeter, cluster):
    from threadko.serialization import EncodeError
    with pytest.raises(EncodeError):
        cluster.greeter.echo(Unserializable())
    assert cluster.greeter.hello('fine') == 'Hello, fine!'


def test_timeout_raises_and_proxy_stays_usable(broker, greeter):
    Greeter.release.clear()
    try:
        with ClusterRpcProxy(broker.config, timeout=0.5) as proxy:
            with pytest.raises(RpcTimeout):
                proxy.greeter.wait_for_release()
            Greeter.release.set()
            assert proxy.greeter.hello('later') == 'Hello, later!'
    finally:
        Greeter.release.set()


def test_call_waiting_forever_without_timeout_gets_late_reply(
        broker, greeter):
    Greeter.release.clear()
    with ClusterRpcProxy(broker.config) as proxy:
        reply = proxy.greeter.wait_for_release.call_async()
        Greeter.release.set()
        assert reply.result() == 'released'


def test_service_proxy_calls_another_service(front, cluster):
    assert cluster.front.greet('Bob') == 'Hello, Bob! (via front)'
    assert cluster.front.greet_cluster('Cy') == 'Hello, Cy!'
    assert cluster.front.greet_async(['a', 'b', 'c']) == [
        'Hello, c!', 'Hello, b!', 'Hello, a!']


def test_worker_calling_back_into_its_own_service(front, cluster):
    assert cluster.front.quadruple(3) == 12


def test_many_workers_call_another_service_at_once(front, broker):
    with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
        replies = [proxy.front.greet.call_async(str(i)) for i in range(40)]
        assert [r.result() for r in replies] == [
            'Hello, {}! (via front)'.format(i) for i in range(40)]


def test_one_cluster_proxy_shared_by_32_threads(greeter, cluster):
    def call(i):
        return [cluster.greeter.hello('{}-{}'.format(i, n))
                for n in range(10)]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    assert results == [
        ['Hello, {}-{}!'.format(i, n) for n in range(10)]
        for i in range(32)]


def test_service_rpc_proxy(broker, greeter):
    with ServiceRpcProxy('greeter', broker.config) as greeter_proxy:
        assert greeter_proxy.hello('Sam') == 'Hello, Sam!'


def test_nameko3_clients_use_global_config(broker, greeter):
    # the broker fixtures patch the global config as well
    with ClusterRpcClient(timeout=WAIT) as client:
        assert client.greeter.hello('v3') == 'Hello, v3!'
    with ServiceRpcClient('greeter', timeout=WAIT) as client:
        assert client.hello('v3') == 'Hello, v3!'


def test_explicit_start_and_stop(broker, greeter):
    client = ClusterRpcProxy(broker.config, timeout=WAIT)
    proxy = client.start()
    assert proxy.greeter.hello('x') == 'Hello, x!'
    client.stop()
    with pytest.raises(RpcClientStopped) as info:
        proxy.greeter.hello('y')
    assert isinstance(info.value, RuntimeError)
    # it can be started again
    proxy = client.start()
    try:
        assert proxy.greeter.hello('z') == 'Hello, z!'
    finally:
        client.stop()


def test_context_data_and_call_stack_cross_hops(broker, containers):
    class Inner:
        name = 'inner'

        @rpc
        def record(self):
            return None

    class Outer:
        name = 'outer'
        inner = RpcProxy('inner')

        @rpc
        def call_inner(self):
            return self.inner.record()

    inner = containers(Inner, broker.config)
    outer = containers(Outer, broker.config)
    inner.start()
    outer.start()

    context = {'language': 'fr', 'user_id': 7}
    with entrypoint_waiter(inner, 'record') as result:
        with ClusterRpcProxy(broker.config, timeout=WAIT,
                             context_data=context) as proxy:
            proxy.outer.call_inner()

    data = result.worker_ctx.data
    assert data['language'] == 'fr'
    assert data['user_id'] == 7
    stack = result.worker_ctx.call_id_stack
    assert len(stack) == 3
    assert stack[0].startswith('standalone_rpc_proxy.call.')
    assert stack[1].startswith('outer.call_inner.')
    assert stack[2].startswith('inner.record.')


def test_round_robin_between_two_instances(broker, containers):
    served_by = []

    def make_service(instance):
        class Worker:
            name = 'worker'

            @rpc
            def work(self):
                served_by.append(instance)
                return instance
        return Worker

    for instance in ('a', 'b'):
        containers(make_service(instance), broker.config).start()

    with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
        results = [proxy.worker.work() for _ in range(10)]
    assert results.count('a') == 5
    assert results.count('b') == 5


def test_killed_instance_work_is_redelivered_to_the_other(
        broker, containers):
    started = threading.Event()
    release = threading.Event()

    class Slow:
        name = 'slow'

        @rpc
        def work(self):
            started.set()
            release.wait(WAIT)
            return 'slow instance'

    class Fast:
        name = 'slow'

        @rpc
        def work(self):
            return 'fast instance'

    slow = containers(Slow, broker.config)
    slow.start()
    try:
        with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
            reply = proxy.slow.work.call_async()
            assert started.wait(WAIT)
            containers(Fast, broker.config).start()
            slow.kill()
            assert reply.result() == 'fast instance'
    finally:
        release.set()


def test_calls_succeed_after_broker_drops_all_connections(
        broker, greeter, front):
    with ClusterRpcProxy(broker.config, timeout=WAIT) as proxy:
        assert proxy.front.greet('before') == 'Hello, before! (via front)'
        broker.drop_connections()
        # the services and the client reconnect by themselves; a call made
        # while they do may time out, but calls succeed again soon after
        assert _eventually(lambda: proxy.front.greet('after')) == (
            'Hello, after! (via front)')
    assert greeter.started and front.started


def _eventually(call, attempts=20):
    """Retry ``call`` while it fails with a timeout or unknown service (the
    service's queue consumer is reconnecting)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except (RpcTimeout, UnknownService):
            continue
    return call()


class Gated:
    """Counts its runs; a run waits until the test opens the gate."""

    name = 'gated'

    entered = threading.Event()
    gate = threading.Event()
    runs = []

    @rpc
    def work(self, value):
        Gated.runs.append(value)
        Gated.entered.set()
        assert Gated.gate.wait(WAIT)
        return value * 2


def test_call_in_flight_when_connections_drop_is_answered(
        broker, containers):
    # the worker finishes after its connection died: its reply can't go
    # out and its request was never acked, so the broker redelivers the
    # request, the method runs again, and the caller gets an answer
    Gated.entered.clear()
    Gated.gate.clear()
    del Gated.runs[:]
    container = containers(Gated, broker.config)
    container.start()
    with ClusterRpcProxy(broker.config, timeout=WAIT * 2) as proxy:
        reply = proxy.gated.work.call_async(21)
        assert Gated.entered.wait(WAIT)
        broker.drop_connections()
        Gated.gate.set()
        assert reply.result() == 42
    assert Gated.runs == [21, 21]
