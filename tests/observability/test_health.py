"""Health probes on ``METRICS_ADDRESS``, over real HTTP: ``/health/ready``
answers 200 only while every container on the address runs with its broker
connection up, ``/health/live`` 200 unless one died of an error; the server
starts with the first container's setup and goes with the last one."""

import threading

import pytest

from support import WAIT, closed_port, http_fetch, poll

from threadko.events import event_handler
from threadko.extensions import DependencyProvider
from threadko.observability.server import metrics_port
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ServiceRpcProxy


class Plain:
    name = 'plain'

    @rpc
    def ping(self):
        return 'pong'


def refused(port):
    """Whether nothing listens on ``port`` any more."""
    try:
        http_fetch(port, 'GET', '/health/live')
    except ConnectionRefusedError:
        return True
    return False


def test_a_running_service(container_factory, metrics_config, unique,
                           probe):
    container = container_factory(unique(Plain), metrics_config)
    container.start()
    service = container.service_name

    assert probe(container, 'ready') == (
        200, {'status': 'ready', 'services': {service: 'running'}})
    assert probe(container, 'live') == (
        200, {'status': 'live', 'services': {service: 'running'}})
    reply = http_fetch(metrics_port(container), 'HEAD', '/health/ready')
    assert (reply.status, reply.body) == (200, b'')


def test_starting_while_the_broker_is_unreachable(container_factory, unique,
                                                  probe):
    with closed_port() as broker_port:
        container = container_factory(unique(Plain), {
            'AMQP_URI': 'amqp://guest:guest@127.0.0.1:{}/'.format(
                broker_port),
            'METRICS_ADDRESS': '127.0.0.1:0'})
        starter = threading.Thread(target=container.start,
                                   name='test-starter')
        starter.start()
        try:
            port = poll(lambda: metrics_port(container), 'the server')
            service = container.service_name
            assert probe(port, 'ready') == (
                503, {'status': 'not ready',
                      'services': {service: 'starting'}})
            assert probe(port, 'live') == (
                200, {'status': 'live', 'services': {service: 'starting'}})
        finally:
            container.kill()
            starter.join(WAIT)
    assert not starter.is_alive()
    assert refused(port)


def test_a_graceful_stop(container_factory, metrics_config, unique, probe,
                         scrape):
    release = threading.Event()
    holding = threading.Event()

    class Slow:
        name = 'slow'

        @rpc
        def hold(self):
            holding.set()
            release.wait(WAIT)
            return 'done'

    container = container_factory(unique(Slow), metrics_config)
    container.start()
    service = container.service_name
    port = metrics_port(container)

    stopper = threading.Thread(target=container.stop, name='test-stopper')
    with ServiceRpcProxy(service, metrics_config) as proxy:
        reply = proxy.hold.call_async()
        assert holding.wait(WAIT)
        stopper.start()
        try:
            poll(lambda: probe(port, 'ready')[0] == 503, 'not ready')
            # the worker goes on: the container stays until it is done
            assert probe(port, 'ready') == (
                503, {'status': 'not ready',
                      'services': {service: 'stopping'}})
            assert probe(port, 'live') == (
                200, {'status': 'live', 'services': {service: 'stopping'}})
            assert scrape(port).value(
                'threadko_workers_busy', service=service) == 1
        finally:
            release.set()
            stopper.join(WAIT)
        assert not stopper.is_alive()
        assert reply.result() == 'done'
    assert refused(port)


class Broken(DependencyProvider):
    """Fails every worker's setup: that kills the container."""

    def worker_setup(self, worker_ctx):
        raise RuntimeError('broken dependency')


class Fragile:
    name = 'fragile'
    broken = Broken()

    @event_handler('obs-health', 'poke')
    def poked(self, payload):
        pass


def test_a_container_killed_by_an_error(container_factory, metrics_config,
                                        unique, probe):
    healthy = container_factory(unique(Plain), metrics_config)
    fragile = container_factory(unique(Fragile), metrics_config)
    healthy.start()
    fragile.start()
    port = metrics_port(healthy)
    assert metrics_port(fragile) == port

    event_dispatcher(metrics_config)('obs-health', 'poke', None)
    with pytest.raises(RuntimeError, match='broken dependency'):
        fragile.wait()

    services = {healthy.service_name: 'running',
                fragile.service_name: 'died'}
    assert probe(port, 'live') == (
        503, {'status': 'dead', 'services': services})
    assert probe(port, 'ready') == (
        503, {'status': 'not ready', 'services': services})

    healthy.stop()
    assert refused(port)


def test_a_container_killed_without_an_error(container_factory,
                                             metrics_config, unique, probe):
    staying = container_factory(unique(Plain), metrics_config)
    killed = container_factory(unique(Plain), metrics_config)
    staying.start()
    killed.start()
    port = metrics_port(staying)

    killed.kill()
    services = {staying.service_name: 'running'}
    assert probe(port, 'live') == (
        200, {'status': 'live', 'services': services})
    assert probe(port, 'ready') == (
        200, {'status': 'ready', 'services': services})


def test_containers_sharing_the_address(container_factory, metrics_config,
                                        unique, probe, scrape):
    first = container_factory(unique(Plain), metrics_config)
    second = container_factory(unique(Plain), metrics_config)
    first.start()
    assert probe(first, 'ready') == (
        200, {'status': 'ready',
              'services': {first.service_name: 'running'}})
    second.start()
    port = metrics_port(first)
    assert metrics_port(second) == port
    assert probe(port, 'ready') == (
        200, {'status': 'ready',
              'services': {first.service_name: 'running',
                           second.service_name: 'running'}})

    first.stop()
    assert probe(port, 'ready') == (
        200, {'status': 'ready',
              'services': {second.service_name: 'running'}})
    assert scrape(port).label_values(
        'threadko_workers_max', 'service') >= {second.service_name}

    second.stop()
    assert refused(port)
