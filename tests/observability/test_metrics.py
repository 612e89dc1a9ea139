"""Prometheus metrics on ``METRICS_ADDRESS``: known traffic into services on
RabbitMQ and over HTTP, then ``GET /metrics`` over real HTTP, parsed with
``prometheus_client``'s text parser, must show exactly that traffic."""

from http.client import HTTPConnection
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from support import WAIT, child_env, http_fetch, poll, web_port

from threadko.amqp.entities import Exchange, Queue
from threadko.events import event_handler
from threadko.exceptions import ConfigurationError, RemoteError
from threadko.messaging import Publisher
from threadko.observability.server import metrics_port
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ServiceRpcProxy
from threadko.web.handlers import http


class Expected(Exception):
    pass


class Failure(Exception):
    pass


def rpc_labels(container, method, **more):
    return dict(service=container.service_name, entrypoint='rpc',
                method=method, **more)


class Calls:
    name = 'calls'

    @rpc
    def ok(self):
        return 'ok'

    @rpc(expected_exceptions=Expected)
    def refuse(self):
        raise Expected('no')

    @rpc
    def crash(self):
        raise Failure('boom')


def test_rpc_calls_by_outcome(container_factory, metrics_config, unique,
                              scrape):
    container = container_factory(
        unique(Calls), dict(metrics_config, max_workers=4))
    container.start()
    service = container.service_name

    with ServiceRpcProxy(service, metrics_config) as proxy:
        for _ in range(3):
            assert proxy.ok() == 'ok'
        for _ in range(2):
            with pytest.raises(RemoteError, match='Expected'):
                proxy.refuse()
        with pytest.raises(RemoteError, match='Failure'):
            proxy.crash()

    metrics = scrape(container)
    calls = 'threadko_entrypoint_calls_total'
    assert metrics.value(calls, **rpc_labels(
        container, 'ok', outcome='success')) == 3
    assert metrics.value(calls, **rpc_labels(
        container, 'ok', outcome='error')) == 0
    assert metrics.value(calls, **rpc_labels(
        container, 'refuse', outcome='expected_error')) == 2
    assert metrics.value(calls, **rpc_labels(
        container, 'refuse', outcome='error')) == 0
    assert metrics.value(calls, **rpc_labels(
        container, 'crash', outcome='error')) == 1
    assert metrics.value(calls, **rpc_labels(
        container, 'crash', outcome='success')) == 0
    for method, count in (('ok', 3), ('refuse', 2), ('crash', 1)):
        assert metrics.value(
            'threadko_entrypoint_duration_seconds_count',
            **rpc_labels(container, method)) == count
        assert metrics.value(
            'threadko_entrypoint_in_flight',
            **rpc_labels(container, method)) == 0

    assert metrics.value('threadko_workers_max', service=service) == 4
    assert metrics.value('threadko_workers_busy', service=service) == 0
    assert metrics.value('threadko_workers_waiting', service=service) == 0

    queue = dict(service=service, queue='rpc-' + service)
    assert metrics.value('threadko_consumer_deliveries_total', **queue) == 6
    assert metrics.value(
        'threadko_consumer_redeliveries_total', **queue) == 0
    connection = dict(service=service, connection='consumer')
    assert metrics.value(
        'threadko_broker_connection_up', **connection) == 1
    assert metrics.value(
        'threadko_broker_reconnects_total', **connection) == 0
    assert metrics.value('threadko_publish_returns_total',
                         service=service) == 0
    assert metrics.value('threadko_publish_nacks_total',
                         service=service) == 0

    # a request is acked once its reply is confirmed, after the caller
    # has the reply
    poll(lambda: scrape(container).value(
        'threadko_consumer_unacked', **queue) == 0, 'the last acks')
    poll(lambda: scrape(container).value(
        'threadko_publish_confirm_duration_seconds_count',
        service=service) == 6, 'the confirms of the six replies')


def test_busy_workers_in_flight_and_unacked(container_factory,
                                            metrics_config, unique,
                                            scrape_until):
    release = threading.Event()

    class Holding:
        name = 'holding'

        @rpc
        def hold(self):
            release.wait(WAIT)
            return 'released'

    container = container_factory(
        unique(Holding), dict(metrics_config, max_workers=2))
    container.start()
    service = container.service_name
    queue = dict(service=service, queue='rpc-' + service)

    with ServiceRpcProxy(service, metrics_config) as proxy:
        replies = [proxy.hold.call_async() for _ in range(2)]

        scrape_until(container, 'two workers holding', [
            ('threadko_entrypoint_in_flight',
             rpc_labels(container, 'hold'), 2),
            ('threadko_consumer_unacked', queue, 2),
            ('threadko_workers_busy', {'service': service}, 2),
            ('threadko_workers_waiting', {'service': service}, 0),
        ])

        release.set()
        assert [reply.result() for reply in replies] == ['released'] * 2

    scrape_until(container, 'the workers done and the requests acked', [
        ('threadko_entrypoint_in_flight', rpc_labels(container, 'hold'), 0),
        ('threadko_consumer_unacked', queue, 0),
        ('threadko_workers_busy', {'service': service}, 0),
    ])


class Web:
    name = 'web'

    @http('GET', '/items/<int:item_id>')
    def item(self, request, item_id):
        return 'item {}'.format(item_id)

    @http('GET', '/boom')
    def boom(self, request):
        raise Failure('boom')


def http_labels(container, route, **more):
    return dict(service=container.service_name, route=route, **more)


def test_http_requests_by_route_and_status(container_factory, metrics_config,
                                           unique, scrape):
    container = container_factory(unique(Web), metrics_config)
    container.start()
    port = web_port(container)

    for path, status in (('/items/1', 200), ('/items/2', 200),
                         ('/boom', 500), ('/nowhere', 404)):
        assert http_fetch(port, 'GET', path).status == status
    assert http_fetch(port, 'DELETE', '/items/1').status == 405
    assert http_fetch(port, 'BREW', '/items/1').status == 405

    metrics = scrape(container)
    requests = 'threadko_http_requests_total'
    item = '/items/<int:item_id>'
    assert metrics.value(requests, **http_labels(
        container, item, method='GET', status=200)) == 2
    assert metrics.value(requests, **http_labels(
        container, '/boom', method='GET', status=500)) == 1
    assert metrics.value(requests, service='', route='(unmatched)',
                         method='GET', status=404) >= 1
    assert metrics.value(requests, service='', route='(unmatched)',
                         method='DELETE', status=405) >= 1
    # a made-up method does not make a label value of its own
    assert metrics.value(requests, service='', route='(unmatched)',
                         method='other', status=405) >= 1
    assert 'BREW' not in metrics.label_values(requests, 'method')
    assert metrics.value(
        'threadko_http_request_duration_seconds_count',
        **http_labels(container, item, method='GET')) == 2

    # the workers behind them
    def web_calls(method, outcome):
        return metrics.value(
            'threadko_entrypoint_calls_total', service=container.service_name,
            entrypoint='http', method=method, outcome=outcome)

    assert web_calls('item', 'success') == 2
    assert web_calls('boom', 'error') == 1


def test_http_route_label_is_the_rule_not_the_url(container_factory,
                                                  metrics_config, unique,
                                                  scrape):
    container = container_factory(unique(Web), metrics_config)
    container.start()

    connection = HTTPConnection(
        '127.0.0.1', web_port(container), timeout=WAIT)
    try:
        for item_id in range(1000):
            connection.request('GET', '/items/{}'.format(item_id))
            response = connection.getresponse()
            assert response.read() == 'item {}'.format(item_id).encode()
    finally:
        connection.close()

    metrics = scrape(container)
    service = container.service_name
    requests = 'threadko_http_requests_total'
    assert metrics.label_values(requests, 'route', service=service) == {
        '/items/<int:item_id>'}
    assert metrics.value(requests, service=service, status=200) == 1000
    assert metrics.label_values(
        'threadko_http_request_duration_seconds_count', 'route',
        service=service) == {'/items/<int:item_id>'}
    assert '/items/999' not in metrics.text


def test_calls_waiting_for_a_worker(container_factory, metrics_config,
                                    unique, scrape, scrape_until):
    release = threading.Event()

    class Narrow:
        name = 'narrow'

        @http('GET', '/hold')
        def hold(self, request):
            release.wait(WAIT)
            return 'done'

    # three request threads (max_workers + 2): one runs the only worker,
    # two wait for it
    container = container_factory(
        unique(Narrow), dict(metrics_config, max_workers=1))
    container.start()
    port = web_port(container)
    service = container.service_name
    statuses = []

    def get():
        statuses.append(http_fetch(port, 'GET', '/hold').status)

    clients = [threading.Thread(target=get, name='test-client-{}'.format(n))
               for n in range(3)]
    for client in clients:
        client.start()
    try:
        scrape_until(container, 'two requests waiting for the worker', [
            ('threadko_workers_waiting', {'service': service}, 2),
            ('threadko_workers_busy', {'service': service}, 1),
            ('threadko_workers_max', {'service': service}, 1),
            ('threadko_entrypoint_in_flight', {
                'service': service, 'entrypoint': 'http',
                'method': 'hold'}, 1),
        ])
    finally:
        release.set()
        for client in clients:
            client.join(WAIT)
    assert statuses == [200] * 3

    metrics = scrape(container)
    assert metrics.value('threadko_workers_waiting', service=service) == 0
    assert metrics.value('threadko_http_requests_total', service=service,
                         route='/hold', status=200) == 3


def test_a_dropped_connection_is_counted(container_factory, broker, unique,
                                         scrape_until):
    """The broker drops the connection while a handler holds a message:
    the reconnection is counted, the broker redelivers the message (a
    redelivery, waiting for the busy worker), and the unacked count starts
    again from the new connection."""
    release = threading.Event()

    class Handler:
        name = 'handler'

        @event_handler('obs-source', 'happened')
        def handle(self, payload):
            release.wait(WAIT)

    config = dict(broker.config, METRICS_ADDRESS='127.0.0.1:0',
                  max_workers=1)
    container = container_factory(unique(Handler), config)
    container.start()
    service = container.service_name
    connection = dict(service=service, connection='consumer')
    queue = {'service': service}  # it has one queue, one entrypoint

    try:
        event_dispatcher(broker.config)('obs-source', 'happened', 1)
        scrape_until(container, 'the delivery', [
            ('threadko_consumer_unacked', queue, 1),
            ('threadko_entrypoint_in_flight', queue, 1),
        ])

        broker.drop_connections()

        # the first delivery went back to the broker with the connection,
        # which delivers it again on the new one: a redelivery, unacked,
        # waiting for the only worker
        scrape_until(container, 'the redelivery', [
            ('threadko_broker_reconnects_total', connection, 1),
            ('threadko_broker_connection_up', connection, 1),
            ('threadko_consumer_deliveries_total', queue, 2),
            ('threadko_consumer_redeliveries_total', queue, 1),
            ('threadko_consumer_unacked', queue, 1),
            ('threadko_workers_waiting', queue, 1),
        ])
    finally:
        release.set()

    scrape_until(container, 'both deliveries handled, the second acked', [
        ('threadko_entrypoint_calls_total', dict(
            queue, entrypoint='event_handler', outcome='success'), 2),
        ('threadko_consumer_unacked', queue, 0),
        ('threadko_workers_waiting', queue, 0),
    ])


class Publishing:
    name = 'publishing'

    unbound = Publisher(exchange=Exchange('obs-unbound', type='direct'))
    refusing = Publisher(declare=[Queue(
        'obs-full', queue_arguments={
            'x-max-length': 0, 'x-overflow': 'reject-publish'})])
    nobody = RpcProxy('obs-nobody')

    @rpc
    def unroutable(self):
        self.unbound('lost', routing_key='nowhere', mandatory=True)

    @rpc
    def rejected(self):
        self.refusing('refused', routing_key='obs-full', retry=False)

    @rpc
    def call_nobody(self):
        self.nobody.anything()


def test_publish_returns_and_nacks(container_factory, metrics_config, unique,
                                   scrape):
    container = container_factory(unique(Publishing), metrics_config)
    container.start()
    service = container.service_name

    with ServiceRpcProxy(service, metrics_config) as proxy:
        with pytest.raises(RemoteError, match='UndeliverableMessage'):
            proxy.unroutable()
        with pytest.raises(RemoteError, match='NackError'):
            proxy.rejected()
        # an RPC request nobody consumes: returned on the consumer's own
        # connection
        with pytest.raises(RemoteError, match='UnknownService'):
            proxy.call_nobody()

    metrics = scrape(container)
    assert metrics.value(
        'threadko_publish_returns_total', service=service) == 2
    assert metrics.value('threadko_publish_nacks_total', service=service) == 1


def test_open_websockets(container_factory, web_config, websocket, unique,
                         scrape):
    from threadko.web.websocket import rpc as ws_rpc

    class Sockets:
        name = 'sockets'

        @ws_rpc
        def echo(self, socket_id, value):
            return value

    container = container_factory(
        unique(Sockets), dict(web_config, METRICS_ADDRESS='127.0.0.1:0'))
    container.start()
    service = container.service_name

    def open_sockets():
        return scrape(container).value(
            'threadko_websocket_connections', service=service)

    assert open_sockets() == 0
    first, second = websocket(), websocket()
    assert first.rpc('echo', value=1) == 1
    assert second.rpc('echo', value=2) == 2
    poll(lambda: open_sockets() == 2, 'two open websockets')
    first.app.close()
    poll(lambda: open_sockets() == 1, 'one websocket left')
    assert scrape(container).value(
        'threadko_entrypoint_calls_total', service=service,
        entrypoint='websocket_rpc', method='echo', outcome='success') == 2


def test_application_metrics_on_the_same_endpoint(container_factory,
                                                  metrics_config, unique,
                                                  scrape):
    from prometheus_client import REGISTRY, Counter

    container = container_factory(unique(Calls), metrics_config)
    container.start()
    orders = Counter('obs_test_orders', 'Orders taken by the test')
    try:
        orders.inc(3)
        assert scrape(container).value('obs_test_orders_total') == 3
    finally:
        REGISTRY.unregister(orders)


def test_stopped_containers_leave_the_scrape(container_factory,
                                             metrics_config, unique, scrape):
    staying = container_factory(unique(Calls), metrics_config)
    leaving = container_factory(unique(Calls), metrics_config)
    staying.start()
    leaving.start()
    port = metrics_port(staying)
    assert metrics_port(leaving) == port  # one server for the address
    metrics = scrape(port)
    assert metrics.label_values('threadko_workers_max', 'service') >= {
        staying.service_name, leaving.service_name}

    leaving.stop()
    metrics = scrape(port)
    services = metrics.label_values('threadko_workers_max', 'service')
    assert staying.service_name in services
    assert leaving.service_name not in services
    assert leaving.service_name not in metrics.label_values(
        'threadko_broker_connection_up', 'service')


def test_unknown_paths(container_factory, metrics_config, unique):
    container = container_factory(unique(Calls), metrics_config)
    container.start()
    port = metrics_port(container)
    assert http_fetch(port, 'GET', '/').status == 404
    assert http_fetch(port, 'GET', '/metrics/more').status == 404
    reply = http_fetch(port, 'POST', '/health/ready')
    assert reply.status == 405
    assert reply.headers['Allow'] == 'GET, HEAD'


def test_the_address_in_use(container_factory, rabbit_config, unique):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        address = '127.0.0.1:{}'.format(taken.getsockname()[1])
        container = container_factory(
            unique(Calls), dict(rabbit_config, METRICS_ADDRESS=address))
        with pytest.raises(ConfigurationError) as error:
            container.start()
    message = str(error.value)
    assert 'already in use' in message
    assert 'METRICS_ADDRESS' in message


def run_child(source):
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(source)], env=child_env(),
        capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    return result.stdout


SERVICE = '''
    import sys

    from threadko.containers import ServiceContainer
    from threadko.rpc import rpc


    class Service:
        name = 'light'

        @rpc
        def ping(self):
            pass
'''


def test_nothing_imported_when_off():
    out = run_child(SERVICE + '''
    container = ServiceContainer(Service, {'AMQP_URI': 'memory://'})
    container.start()
    container.stop()
    print(sorted(name for name in sys.modules
                 if name.startswith('prometheus_client') or name in (
                     'threadko.observability.metrics',
                     'threadko.observability.server',
                     'threadko.observability.health')))
    ''')
    assert out.strip() == '[]'


def test_without_the_extra():
    out = run_child(SERVICE + '''
    from threadko.exceptions import ConfigurationError

    sys.modules['prometheus_client'] = None  # as if not installed
    try:
        ServiceContainer(Service, {
            'AMQP_URI': 'memory://', 'METRICS_ADDRESS': '127.0.0.1:0'})
    except ConfigurationError as exc:
        print(exc)
    ''')
    assert 'pip install "threadko[metrics]"' in out
    assert 'METRICS_ADDRESS' in out
