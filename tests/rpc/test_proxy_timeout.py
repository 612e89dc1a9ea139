"""Calls from inside a service never hold a worker slot forever: the RPC
proxies injected into services take a timeout (the ``timeout`` argument,
or the ``RPC_TIMEOUT`` config key), and a call whose reply queue was lost
while the container reconnected fails as soon as the container is back,
without waiting for any timeout."""

import subprocess
import threading
import time

import pytest

from threadko.exceptions import (
    RemoteError, ReplyQueueExpiredWithPendingReplies,
)
from threadko.rpc import ClusterRpc, RpcProxy, rpc
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 20  # seconds: anything slower is a failure


class Blocked:
    """A service whose method waits until the test releases it."""

    name = 'blocked'

    started = threading.Event()
    release = threading.Event()

    @rpc
    def wait(self):
        Blocked.started.set()
        assert Blocked.release.wait(WAIT)
        return 'late'


@pytest.fixture
def blocked():
    Blocked.started.clear()
    Blocked.release.clear()
    yield Blocked
    Blocked.release.set()  # let its workers finish before teardown


class Caller:
    """Relays to ``blocked`` with a 1 s timeout; one worker only."""

    name = 'caller'

    blocked = RpcProxy('blocked', timeout=1)

    @rpc
    def relay(self):
        return self.blocked.wait()

    @rpc
    def ping(self):
        return 'pong'


class ClusterCaller:
    """The same through ClusterRpc, with the timeout from RPC_TIMEOUT."""

    name = 'cluster_caller'

    cluster = ClusterRpc()

    @rpc
    def relay(self):
        return self.cluster.blocked.wait()

    @rpc
    def ping(self):
        return 'pong'


@pytest.mark.timeout(60)
@pytest.mark.parametrize('service, extra_config', [
    (Caller, {}),
    (ClusterCaller, {'RPC_TIMEOUT': 1}),
])
def test_a_call_from_a_service_times_out_and_frees_its_worker(
        broker, containers, blocked, service, extra_config):
    config = dict(broker.config, max_workers=1, **extra_config)
    containers(Blocked, broker.config).start()
    containers(service, config).start()

    with ClusterRpcProxy(broker.config, timeout=WAIT) as client:
        proxy = client[service.name]
        began = time.monotonic()
        with pytest.raises(RemoteError) as raised:
            proxy.relay()
        elapsed = time.monotonic() - began

        assert raised.value.exc_type == 'RpcTimeout'
        assert 1 <= elapsed < 5
        assert blocked.started.is_set()  # the call did reach the service
        # its only worker slot is free again
        assert proxy.ping() == 'pong'


@pytest.mark.timeout(60)
def test_a_proxy_timeout_overrides_the_config_default(
        broker, containers, blocked):
    class Patient:
        name = 'patient'
        blocked = RpcProxy('blocked', timeout=None)

        @rpc
        def relay(self):
            reply = self.blocked.wait.call_async()
            return reply._timeout

    containers(Blocked, broker.config).start()
    containers(Patient, dict(broker.config, RPC_TIMEOUT=1)).start()
    blocked.release.set()
    with ClusterRpcProxy(broker.config, timeout=WAIT) as client:
        assert client.patient.relay() is None


def test_rpc_timeout_is_a_proxy_argument_and_a_config_key():
    assert RpcProxy('x', timeout=5).timeout == 5
    assert ClusterRpc(timeout=2.5).timeout == 2.5
    # `timeout` is not a publish option
    assert 'timeout' not in RpcProxy('x', timeout=5, priority=3).options


class Relay:
    """Relays to ``blocked`` without a timeout, keeping what the call
    raised."""

    name = 'relay'

    blocked = RpcProxy('blocked')
    failed = []
    failed_event = threading.Event()

    @rpc
    def relay(self):
        try:
            return self.blocked.wait()
        except Exception as exc:
            Relay.failed.append((time.monotonic(), exc))
            Relay.failed_event.set()
            raise


def _close_all_connections(vhost):
    subprocess.run(
        ['rabbitmqctl', '--quiet', 'close_all_connections', '--vhost', vhost,
         'closed by threadko test'],
        check=True, capture_output=True, timeout=30)


@pytest.mark.rabbit
@pytest.mark.timeout(60)
def test_a_lost_reply_queue_fails_the_waiting_call_once_reconnected(
        rabbit_config, rabbit_manager, containers, blocked):
    Relay.failed.clear()
    Relay.failed_event.clear()
    vhost = rabbit_config['vhost']
    config = dict(rabbit_config, TRANSPORT_OPTIONS={
        'interval_start': 0.2, 'interval_step': 0.2, 'interval_max': 0.5})
    containers(Blocked, config).start()
    relay = containers(Relay, config)
    relay.start()

    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as client:
        reply = client.relay.relay.call_async()
        assert blocked.started.wait(WAIT)  # the relay waits for its reply

        # the relay's reply queue goes away while its connection is down
        [reply_queue] = [
            queue['name'] for queue in rabbit_manager.get_queues(vhost)
            if queue['name'].startswith('rpc.reply-relay-')]
        rabbit_manager._request('DELETE', ('queues', vhost, reply_queue))
        closed = time.monotonic()
        _close_all_connections(vhost)

        # the waiting call fails once the relay has reconnected, long
        # before any timeout (it has none)
        assert Relay.failed_event.wait(WAIT)
        failed_at, error = Relay.failed[0]
        assert isinstance(error, ReplyQueueExpiredWithPendingReplies)
        assert reply_queue in str(error)
        assert failed_at - closed < 10

        # the caller sees the error (the relay's worker slot is free)
        with pytest.raises(RemoteError) as raised:
            reply.result()
        assert raised.value.exc_type == 'ReplyQueueExpiredWithPendingReplies'

        # and the relay works again, on a new reply queue
        blocked.release.set()
        assert client.relay.relay() == 'late'

