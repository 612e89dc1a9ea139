"""``@http`` routes inside other WSGI servers and applications:
``wsgi_app(containers or runners)`` and ``ServiceApp``."""

import contextlib
import threading

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.test import Client
from werkzeug.wrappers import Response

from support import WAIT

from threadko.extensions import DependencyProvider
from threadko.rpc import RpcProxy, rpc
from threadko.web.handlers import http
from threadko.web.wsgi import ServiceApp, wsgi_app

NO_PORT = {'WEB_SERVER_ADDRESS': None}


@contextlib.contextmanager
def werkzeug_server(app):
    """``app`` served by werkzeug's threaded server on a thread of ours;
    yields the port."""
    server = make_server('127.0.0.1', 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={'poll_interval': 0.05},
        name='threadko-test-werkzeug-server', daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        assert not thread.is_alive()


def plain_app(environ, start_response):
    """A WSGI app that knows nothing of threadko."""
    return Response('plain {}'.format(environ['PATH_INFO']))(
        environ, start_response)


class Squares:
    name = 'squares'

    @http('GET', '/square/<int:n>')
    def square(self, request, n):
        return str(n * n)


class Words:
    name = 'words'

    @http('POST', '/upper')
    def upper(self, request):
        return request.get_data(as_text=True).upper()


# -- wsgi_app -----------------------------------------------------------------

def test_wsgi_app_under_another_server_with_concurrent_requests(
        containers, fetch, port_of, background):
    # each worker waits at a barrier for 9 others: 20 requests pass in two
    # groups of 10, which needs werkzeug's threads and all 10 workers
    barrier = threading.Barrier(10, timeout=WAIT)

    class Meeting:
        name = 'meeting'

        @http('GET', '/square/<int:n>')
        def square(self, request, n):
            barrier.wait()
            return '{}'.format(n * n)

    container = containers(Meeting, dict(NO_PORT, max_workers=10))
    container.start()
    assert port_of(container) is None  # no socket of its own

    try:
        with werkzeug_server(wsgi_app(container)) as port:
            replies = [background(fetch, port, 'GET', '/square/{}'.format(n))
                       for n in range(20)]
            results = [(r.result(WAIT * 2).status, r.result().text)
                       for r in replies]
    finally:
        barrier.abort()
    assert results == [(200, str(n * n)) for n in range(20)]


def test_wsgi_app_of_a_runner_routes_to_all_its_services(runner_factory):
    runner = runner_factory(NO_PORT, Squares, Words)
    runner.start()
    client = Client(wsgi_app(runner))

    response = client.get('/square/12')
    assert (response.status_code, response.text) == (200, '144')
    response = client.post('/upper', data='shout')
    assert (response.status_code, response.text) == (200, 'SHOUT')
    assert client.get('/nowhere').status_code == 404
    response = client.get('/upper')
    assert response.status_code == 405
    assert 'POST' in response.headers['Allow']


def test_wsgi_app_of_several_containers(containers):
    squares = containers(Squares, NO_PORT)
    words = containers(Words, NO_PORT)
    squares.start()
    words.start()
    client = Client(wsgi_app(squares, words))
    assert client.get('/square/3').text == '9'
    assert client.post('/upper', data='a').text == 'A'


def test_wsgi_app_of_a_stopped_container_answers_503(containers):
    container = containers(Squares, NO_PORT)
    container.start()
    client = Client(wsgi_app(container))
    assert client.get('/square/2').text == '4'
    container.stop()
    response = client.get('/square/2')
    assert response.status_code == 503
    assert response.headers['Retry-After']


def test_wsgi_app_refuses_bodies_over_its_limit(containers):
    container = containers(Words, NO_PORT)
    container.start()
    client = Client(wsgi_app(container, max_request_body_size=10))
    assert client.post('/upper', data='a' * 10).text == 'A' * 10
    assert client.post('/upper', data='a' * 11).status_code == 413
    assert client.post('/upper', data='b').text == 'B'


# -- ServiceApp ---------------------------------------------------------------

class Lifecycle(DependencyProvider):
    """Counts its container's starts and stops in ``self.counts``, a dict
    shared with the test."""

    def __init__(self, counts):
        self.counts = counts
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            self.counts['start'] += 1

    def stop(self):
        with self.lock:
            self.counts['stop'] += 1


def counted_service(counts):
    class Counted:
        name = 'counted'
        lifecycle = Lifecycle(counts)

        @http('GET', '/hello/<name>')
        def hello(self, request, name):
            return 'hello {}'.format(name)

    return Counted


@pytest.fixture
def counts():
    return {'start': 0, 'stop': 0}


@pytest.fixture
def service_apps():
    """``make(services, config)``: a ``ServiceApp``, stopped at teardown."""
    made = []

    def make(services, config):
        app = ServiceApp(services, config)
        made.append(app)
        return app

    yield make
    for app in made:
        app.stop()


def test_service_app_beside_a_plain_app_in_a_dispatcher(
        service_apps, counts, fetch, port_of):
    services = service_apps([counted_service(counts)], {})
    assert not services.started
    assert counts['start'] == 0
    # WEB_SERVER_ADDRESS defaults to None: no port of the services' own
    assert services.config['WEB_SERVER_ADDRESS'] is None

    application = DispatcherMiddleware(plain_app, {'/api': services})
    with werkzeug_server(application) as port:
        reply = fetch(port, 'GET', '/api/hello/world')
        assert (reply.status, reply.text) == (200, 'hello world')
        assert services.started
        assert fetch(port, 'GET', '/elsewhere').text == 'plain /elsewhere'
        assert fetch(port, 'GET', '/api/nowhere').status == 404
        assert fetch(port, 'GET', '/hello/world').text == 'plain /hello/world'

    assert [port_of(c) for c in services.runner.containers] == [None]
    assert counts == {'start': 1, 'stop': 0}
    services.stop()
    assert counts == {'start': 1, 'stop': 1}
    assert not services.started


def test_service_app_starts_once_when_many_threads_hit_it_at_once(
        service_apps, counts, background):
    services = service_apps([counted_service(counts)], {})
    barrier = threading.Barrier(10, timeout=WAIT)

    def hit(n):
        client = Client(services)
        barrier.wait()
        response = client.get('/hello/{}'.format(n))
        return response.status_code, response.text

    results = [background(hit, n) for n in range(10)]
    assert [r.result(WAIT) for r in results] == [
        (200, 'hello {}'.format(n)) for n in range(10)]
    assert counts['start'] == 1


def test_service_app_start_and_stop_are_idempotent(service_apps, counts):
    services = service_apps([counted_service(counts)], {})
    services.stop()  # never started: nothing to do
    services.start()
    services.start()
    assert counts == {'start': 1, 'stop': 0}
    services.stop()
    services.stop()
    assert counts == {'start': 1, 'stop': 1}


def test_service_app_as_a_context_manager(counts):
    with ServiceApp([counted_service(counts)], {}) as services:
        assert services.started
        assert Client(services).get('/hello/x').text == 'hello x'
    assert not services.started
    assert counts == {'start': 1, 'stop': 1}


def test_service_app_can_be_started_again_after_stop(service_apps, counts):
    services = service_apps([counted_service(counts)], {})
    client = Client(services)
    assert client.get('/hello/one').text == 'hello one'
    services.stop()
    assert not services.started

    response = client.get('/hello/two')  # starts them again
    assert counts == {'start': 2, 'stop': 1}
    assert (response.status_code, response.text) == (200, 'hello two')


class Backend:
    name = 'backend'

    @rpc
    def describe(self, n):
        return {'n': n, 'even': n % 2 == 0}


class Gateway:
    name = 'gateway'
    backend = RpcProxy('backend')

    @http('GET', '/describe/<int:n>')
    def describe(self, request, n):
        result = self.backend.describe(n)
        return 'n={n} even={even}'.format(**result)


def test_service_app_with_rpc_between_its_services(
        service_apps, memory_config, fetch):
    services = service_apps([Gateway, Backend], memory_config)
    application = DispatcherMiddleware(plain_app, {'/api': services})
    with werkzeug_server(application) as port:
        reply = fetch(port, 'GET', '/api/describe/4')
        assert (reply.status, reply.text) == (200, 'n=4 even=True')
        reply = fetch(port, 'GET', '/api/describe/7')
        assert (reply.status, reply.text) == (200, 'n=7 even=False')


def test_wsgi_app_of_a_runner_without_services_answers_404():
    from werkzeug.test import Client
    from threadko.runners import ServiceRunner
    from threadko.web.wsgi import wsgi_app

    response = Client(wsgi_app(ServiceRunner({}))).get('/anything')
    assert response.status_code == 404
