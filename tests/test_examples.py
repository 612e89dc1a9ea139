"""The README's examples run as documented."""

import os
import re
import signal
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import ChildProcess

from threadko.testing.utils import find_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30

# the HTTP examples are imported, and `pytest` run as a script (tox) does
# not put the repository root on sys.path as `python -m pytest` does
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def child_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONIOENCODING='utf-8',
               **extra)
    env.pop('PYTHONWARNINGS', None)
    return env


# never through an http_proxy from the environment
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url):
    """``(status, body text)`` of a GET."""
    with _opener.open(url, timeout=WAIT) as response:
        return response.status, response.read().decode('utf-8')


@pytest.fixture
def web_address():
    """A free loopback ``host:port`` for an example to serve HTTP on."""
    return '127.0.0.1:{}'.format(find_free_port())


@pytest.fixture
def run_example():
    processes = []

    def run(*args, env=None):
        process = ChildProcess([sys.executable, *args], ROOT,
                               child_env(**(env or {})),
                               stream='stdout', timeout=WAIT)
        processes.append(process)
        return process

    yield run
    for process in processes:
        process.close()


def test_demo_on_the_embedded_broker(run_example, web_address):
    """``scripts/run-examples`` = ``python -m examples``: services on
    memory://, called from a standalone client, answering the curl command
    it prints, stopped by Ctrl-C."""
    demo = run_example('-m', 'examples',
                       env={'THREADKO_EXAMPLES_WEB_ADDRESS': web_address})
    demo.wait_for_line('are running on memory://')
    assert "returned 'hellø-x-y'" in demo.wait_for_line('remote_method')
    assert "['a-y', 'b-y', 'c-y']" in demo.wait_for_line('async results')
    demo.wait_for_line("service_b received: 'hellø event'")
    demo.wait_for_line("service_b received: {'from': 'a script'}")
    hint = demo.wait_for_line('try: curl')
    port = web_address.split(':')[1]
    # service_b may print on its own thread between this line and its end
    url = re.search(r'curl (http://\S+?/get/42)', hint).group(1)
    assert url == 'http://localhost:{}/get/42'.format(port)
    assert get(url) == (200, '{"value": 42}')
    demo.wait_for_line('serving until Ctrl-C')
    demo.send_signal(signal.SIGINT)
    assert demo.wait() == 0
    assert 'stopped' in demo.output


def test_rpc_example_on_rabbitmq(run_example, rabbit_config):
    """The README's RabbitMQ variant: ``threadko run examples.rpc`` in one
    process, the standalone client script in another."""
    uri = rabbit_config['AMQP_URI']
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'examples.rpc'], ROOT, child_env(), timeout=WAIT)
    try:
        services.wait_for_line('running services')
        client = run_example('-m', 'examples.standalone_rpc', uri)
        assert "returned 'hellø-x-y'" in client.wait_for_line(
            'remote_method')
        assert client.wait() == 0
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0
    finally:
        services.close()


def test_events_example_on_rabbitmq(run_example, rabbit_config):
    """``threadko run examples.events`` in one process, the standalone
    dispatcher script in another."""
    uri = rabbit_config['AMQP_URI']
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'examples.events'], ROOT, child_env(), stream='both',
        timeout=WAIT)
    try:
        # the dispatcher fails (404) until the services declared the exchange
        services.wait_for_line('running services')
        client = run_example('-m', 'examples.standalone_events', uri)
        assert client.wait() == 0, client.output
        services.wait_for_line("service_b received: {'from': 'a script'}")
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0
    finally:
        services.close()


def test_demo_http_address_defaults_to_localhost_8000():
    from examples.__main__ import DEFAULT_WEB_ADDRESS, curl_hint

    assert DEFAULT_WEB_ADDRESS == '127.0.0.1:8000'
    # the command the README shows
    assert curl_hint(DEFAULT_WEB_ADDRESS) == (
        'curl http://localhost:8000/get/42')


# -- HTTP examples, served for real ------------------------------------------

@pytest.fixture
def serve(container_factory, web_config):
    """Start a container for a service class, serving HTTP on
    ``web_config``'s address (``web_session``'s)."""

    def start(service_cls):
        container = container_factory(service_cls)
        container.start()
        return container

    return start


def test_http_example(serve, web_session):
    from examples.http import HttpService

    serve(HttpService)
    response = web_session.get('/get/42')
    assert response.status_code == 200
    assert response.json() == {'value': 42}
    response = web_session.post('/post', data='hellø')
    assert (response.status_code, response.text) == (200, 'received: hellø')
    assert web_session.get('/get/forty-two').status_code == 404


def test_http_example_with_threadko_run(web_address):
    """``threadko run examples.http``, as the README shows it."""
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', 'examples.http',
         '--define', 'WEB_SERVER_ADDRESS={}'.format(web_address)],
        ROOT, child_env(), timeout=WAIT)
    try:
        services.wait_for_line('running services')
        assert get('http://{}/get/42'.format(web_address)) == (
            200, '{"value": 42}')
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0, services.output
    finally:
        services.close()


def test_advanced_http_example(serve, web_session):
    from examples.advanced_http import AdvancedHttpService

    serve(AdvancedHttpService)

    created = web_session.post('/notes', data='a pear')
    assert created.status_code == 201
    assert created.headers['Location'] == '/notes/1'
    assert created.text == 'saved: a pear\n'

    empty = web_session.post('/notes', data=b'')
    assert (empty.status_code, empty.text) == (
        400, 'a note needs some text\n')

    export = web_session.get('/notes.csv')
    assert export.status_code == 200
    assert export.headers['Content-Type'] == 'text/csv; charset=utf-8'
    assert export.headers['Content-Disposition'] == (
        'attachment; filename=notes.csv')
    assert export.text == 'id,text\n1,a pear\n'

    for method in ('GET', 'PUT', 'POST', 'DELETE'):
        response = web_session.request(method, '/anything')
        assert (response.status_code, response.text) == (
            200, '{} handled by one method\n'.format(method))
    assert web_session.patch('/anything').status_code == 405


def test_http_exceptions_example(serve, web_session):
    from examples.http_exceptions import ShopService

    serve(ShopService)

    ok = web_session.get('/price/apple', params={'quantity': 3})
    assert ok.status_code == 200
    assert ok.json() == {'item': 'apple', 'quantity': 3, 'total': 9}

    invalid = web_session.get('/price/apple', params={'quantity': 'lots'})
    assert invalid.status_code == 400
    assert invalid.headers['Content-Type'] == 'application/json'
    assert invalid.json() == {
        'error': 'invalid_arguments',
        'message': "quantity must be a whole number, not 'lots'"}

    unknown = web_session.get('/price/kiwi')
    assert unknown.status_code == 404
    assert unknown.json() == {
        'error': 'unknown_item', 'message': "there is no 'kiwi' in the shop"}


def test_http_exceptions_example_keeps_unexpected_errors_plain(
        serve, web_session):
    from examples.http_exceptions import UnknownItem, http

    class Careless:
        name = 'careless'

        @http('GET', '/lookup')
        def lookup(self, request):
            raise UnknownItem('not listed in expected_exceptions')

    serve(Careless)
    response = web_session.get('/lookup')
    assert response.status_code == 500
    assert response.headers['Content-Type'].startswith('text/plain')
    assert response.text == (
        'Error: UnknownItem: not listed in expected_exceptions\n')


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_wsgi_embedding_example(run_example, web_address, signum):
    """A plain WSGI app and threadko's ServiceApp behind one waitress
    server; concurrent requests to both, then a clean exit."""
    app = run_example('-m', 'examples.wsgi_embedding',
                      env={'THREADKO_EXAMPLES_WEB_ADDRESS': web_address})
    app.wait_for_line('serving on http://{}/'.format(web_address))
    base = 'http://{}'.format(web_address)

    def fetch_both(n):
        name = 'caller{}'.format(n)
        return (get('{}/api/greet/{}'.format(base, name)),
                get('{}/hello/{}'.format(base, name)))

    with ThreadPoolExecutor(
            10, thread_name_prefix='threadko-test-client') as pool:
        results = list(pool.map(fetch_both, range(30)))
    for n, (direct, over_rpc) in enumerate(results):
        assert direct == (200, 'Hello, caller{}!\n'.format(n))
        assert over_rpc == (200, 'Hello, caller{}! (over RPC)\n'.format(n))
    assert get(base + '/')[0] == 200

    app.send_signal(signum)
    assert app.wait() == 0, app.output
    assert 'stopped' in app.output


@pytest.mark.parametrize('heading, example', [
    ('## Services that call each other', 'rpc.py'),
    ('## Events', 'events.py'),
    ('## HTTP', 'http.py'),
])
def test_readme_shows_the_example_services_as_they_are(heading, example):
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    section = readme.split(heading + '\n', 1)[1]
    shown = section.split('```python\n', 1)[1].split('```', 1)[0]
    source = open(os.path.join(ROOT, 'examples', example),
                  encoding='utf-8').read()
    # the file is the README's snippet plus its module docstring
    assert source.rstrip().endswith(shown.rstrip())
