"""The raw-pika benchmark floor (bench/peers/raw_pika.py) does the same wire work
as threadko and Nameko: a threadko caller gets answers from the raw server,
the raw caller from a threadko service, and raw events all arrive."""

import importlib.util
import os

import pika.exceptions
import pytest

from threadko.exceptions import MethodNotFound
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

pytestmark = pytest.mark.rabbit

WAIT = 10
BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'bench', 'peers', 'raw_pika.py')


def _load_raw_pika():
    spec = importlib.util.spec_from_file_location('bench_raw_pika', BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


raw_pika = _load_raw_pika()


class Echo:
    name = 'tk_echo'

    @rpc
    def echo(self, value):
        return value


@pytest.fixture
def raw_server(rabbit_config):
    server = raw_pika.RawRpcServer(rabbit_config['AMQP_URI'])
    server.start()
    yield server
    server.stop()
    assert server.error is None


def test_raw_server_answers_a_threadko_proxy(rabbit_config, raw_server):
    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as proxy:
        assert proxy.raw_echo.echo('hello') == 'hello'
        assert proxy.raw_echo.echo({'a': [1, 'é']}) == {'a': [1, 'é']}
        replies = [proxy.raw_echo.echo.call_async(i) for i in range(20)]
        assert [reply.result() for reply in replies] == list(range(20))
        with pytest.raises(MethodNotFound):
            proxy.raw_echo.nope('x')


def test_raw_client_calls_a_threadko_service(rabbit_config,
                                             container_factory):
    container = container_factory(Echo, rabbit_config)
    container.start()
    uri = rabbit_config['AMQP_URI']
    with raw_pika.RawRpcClient(uri, target='tk_echo.echo') as client:
        assert client.call('hello', timeout=WAIT) == 'hello'
        values = list(range(50))
        assert client.call_many(values, in_flight=8, timeout=WAIT) == values
    with raw_pika.RawRpcClient(uri, target='nobody.echo') as client:
        with pytest.raises(pika.exceptions.UnroutableError):
            client.call('hello', timeout=WAIT)


def test_raw_client_pipelines_calls_to_the_raw_server(rabbit_config,
                                                      raw_server):
    uri = rabbit_config['AMQP_URI']
    with raw_pika.RawRpcClient(uri) as client:
        values = ['v{}'.format(i) for i in range(100)]
        assert client.call_many(values, in_flight=32, timeout=WAIT) == values
        client.target = 'raw_echo.nope'
        with pytest.raises(raw_pika.RawRemoteError, match='MethodNotFound'):
            client.call('x', timeout=WAIT)


def test_raw_events_are_all_consumed(rabbit_config):
    uri = rabbit_config['AMQP_URI']
    consumer = raw_pika.RawEventConsumer(uri, 300)
    consumer.start()
    try:
        raw_pika.raw_publish_events(uri, 300)
        assert consumer.done.wait(WAIT)
    finally:
        consumer.stop()
    assert consumer.count == 300
    assert consumer.error is None
