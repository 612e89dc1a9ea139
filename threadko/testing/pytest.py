"""threadko's pytest plugin (registered through the ``pytest11`` entry
point, so installing threadko makes its fixtures available).

The fixtures keep Nameko's names and accept both Nameko 2 style (config
dicts passed around) and Nameko 3 style (the global :data:`threadko.config`)
tests. There are no eventlet options: threadko needs no monkey-patching.

RabbitMQ fixtures (``rabbit_manager``, ``rabbit_config``, ``amqp_uri``,
``get_message_from_queue``) use the broker given by ``--amqp-uri`` and its
management API given by ``--rabbit-api-uri``; ``scripts/test`` starts one.
``memory_config`` uses the embedded ``memory://`` broker instead.

threadko is imported inside the fixtures, not at module level, so that
loading the plugin does not import it before coverage measurement starts.
"""

import os
import random
import string
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

DEFAULT_AMQP_URI = 'amqp://guest:guest@localhost:5672/'
DEFAULT_API_URI = 'http://guest:guest@localhost:15672'


def pytest_addoption(parser):
    group = parser.getgroup('threadko', 'threadko RabbitMQ fixtures')
    group.addoption(
        '--amqp-uri', '--rabbit-amqp-uri',
        action='store',
        dest='RABBIT_AMQP_URI',
        default=os.environ.get('THREADKO_TEST_AMQP_URI', DEFAULT_AMQP_URI),
        help=(
            'URI of the RabbitMQ broker for the rabbit_config fixture '
            '(default: $THREADKO_TEST_AMQP_URI or {}). Its vhost is '
            'ignored: every test gets a vhost of its own.'.format(
                DEFAULT_AMQP_URI)))
    group.addoption(
        '--rabbit-api-uri', '--rabbit-ctl-uri',
        action='store',
        dest='RABBIT_API_URI',
        default=os.environ.get('THREADKO_TEST_API_URI', DEFAULT_API_URI),
        help=(
            "URI of RabbitMQ's management HTTP API (default: "
            '$THREADKO_TEST_API_URI or {}).'.format(DEFAULT_API_URI)))


@pytest.fixture
def empty_config():
    """Clear the global :data:`threadko.config` for the test (it is
    restored afterwards) and provide an empty dict, for Nameko 2 style
    tests that pass a config dict around."""
    from threadko import config

    with config.patch({}, clear=True):
        yield {}


@pytest.fixture
def mock_container():
    """An autospec'd :class:`~threadko.containers.ServiceContainer` class
    mock, for unit tests of extensions.

    Its ``config`` is the global :data:`threadko.config`, patched for the
    test with ``{"serializer": "json"}`` (so both ``mock_container.config[
    key] = value`` and ``config.patch(...)`` work and are undone
    afterwards); ``serializer`` and ``accept`` are set to match, and
    ``shared_extensions`` is an empty dict, so extensions with shared
    sub-extensions bind to it.
    """
    from unittest.mock import create_autospec

    from threadko import config
    from threadko.constants import DEFAULT_SERIALIZER, SERIALIZER_CONFIG_KEY
    from threadko.containers import ServiceContainer

    container = create_autospec(ServiceContainer)
    with config.patch({SERIALIZER_CONFIG_KEY: DEFAULT_SERIALIZER}):
        container.config = config
        container.serializer = DEFAULT_SERIALIZER
        container.accept = [DEFAULT_SERIALIZER]
        container.shared_extensions = {}
        yield container


def _apply_config(config):
    """Patch the global config with ``config`` (its previous contents come
    back when the calling fixture's own patch ends) and return a snapshot
    dict of the result."""
    from threadko import config as global_config

    global_config.update(config)
    return dict(global_config)


@pytest.fixture
def container_factory():
    """``make(service_cls, config=None)`` returns an unstarted container
    (of the ``SERVICE_CONTAINER_CLS`` class, if set).

    - ``config=None`` (Nameko 3 style): the container reads the global
      :data:`threadko.config`.
    - a dict (a full Nameko 2 config, or a Nameko 3 partial patch): the
      global config is updated with it for the rest of the test, and the
      container gets a snapshot dict of the updated global config.

    At teardown every container made is killed, newest first, and the
    global config is restored to what it was when the fixture was set up.
    """
    from threadko import config as global_config
    from threadko.containers import get_container_cls

    made = []

    def make_container(service_cls, config=None):
        if config is None:
            container = get_container_cls()(service_cls)
        else:
            snapshot = _apply_config(config)
            container = get_container_cls(snapshot)(service_cls, snapshot)
        made.append(container)
        return container

    # snapshot the config now, so it is restored in the right order however
    # this fixture's teardown interleaves with other config fixtures'
    with global_config.patch({}):
        try:
            yield make_container
        finally:
            _kill_all(reversed(made))


@pytest.fixture
def runner_factory():
    """``make(config, *service_classes)`` (Nameko 2) or
    ``make(*service_classes)`` (Nameko 3) returns an unstarted
    :class:`~threadko.runners.ServiceRunner` hosting the classes.

    A config mapping as first argument is handled as by
    :func:`container_factory`. At teardown every runner made is killed,
    newest first, and the global config is restored.
    """
    from collections.abc import Mapping

    from threadko import config as global_config
    from threadko.runners import ServiceRunner

    made = []

    def make_runner(*args):
        if args and isinstance(args[0], Mapping):
            runner = ServiceRunner(_apply_config(args[0]))
            service_classes = args[1:]
        else:
            runner = ServiceRunner()
            service_classes = args
        made.append(runner)
        for service_cls in service_classes:
            runner.add_service(service_cls)
        return runner

    with global_config.patch({}):
        try:
            yield make_runner
        finally:
            _kill_all(reversed(made))


def _kill_all(items):
    import logging

    for item in items:
        try:
            item.kill()
        except Exception:
            logging.getLogger(__name__).warning(
                'error killing %r at test teardown', item, exc_info=True)


@pytest.fixture
def predictable_call_ids():
    """Make call ids predictable: ``threadko.containers.new_call_id``
    returns ``"0"``, ``"1"``, ... (thread-safe). Provides the mock."""
    import itertools
    import threading
    from unittest.mock import patch

    counter = itertools.count()
    lock = threading.Lock()

    def next_id():
        with lock:
            return str(next(counter))

    with patch('threadko.containers.new_call_id', autospec=True) as get_id:
        get_id.side_effect = next_id
        yield get_id


@pytest.fixture
def web_config():
    """Patch the global config's ``WEB_SERVER_ADDRESS`` with
    ``127.0.0.1:<a free port>`` for the test, and provide
    ``{"WEB_SERVER_ADDRESS": ...}`` for Nameko 2 style tests."""
    from threadko import config
    from threadko.constants import WEB_SERVER_CONFIG_KEY
    from threadko.testing.utils import find_free_port

    web_config = {
        WEB_SERVER_CONFIG_KEY: '127.0.0.1:{}'.format(find_free_port())}
    with config.patch(web_config):
        yield web_config


@pytest.fixture
def web_config_port(web_config):
    """The port of :func:`web_config`'s address (an ``int``)."""
    from threadko.constants import WEB_SERVER_CONFIG_KEY

    return int(web_config[WEB_SERVER_CONFIG_KEY].rsplit(':', 1)[-1])


@pytest.fixture
def web_session(web_config_port):
    """An HTTP client for the services of :func:`web_config`, in the
    manner of Nameko's ``requests.Session`` (threadko does not depend on
    ``requests``)::

        def test_get(container_factory, web_config, web_session):
            container_factory(HttpService).start()
            response = web_session.get("/get/42")
            assert response.status_code == 200
            assert response.json() == {"value": 42}

    ``get``, ``post``, ``put``, ``patch``, ``delete``, ``head``,
    ``options`` and ``request(method, url, ...)`` take a url relative to
    ``http://127.0.0.1:<web_config_port>/`` (or a full one) and the
    keyword arguments ``params`` (query string values), ``data`` (bytes,
    text, or a dict sent as a form), ``json`` (sent as JSON),
    ``headers``, ``timeout`` (seconds, default 30) and
    ``allow_redirects`` (default ``True``); as ``requests`` does, every
    request says ``Accept: */*`` unless ``headers`` has an ``Accept`` of
    its own. They return a response with
    ``status_code``, ``reason``, ``headers`` (case-insensitive),
    ``content`` (bytes), ``text``, ``json()``, ``ok`` and ``url``.
    Every request uses a connection of its own, so the session can be
    shared by several threads.
    """
    return _WebSession('http://127.0.0.1:{}/'.format(web_config_port))


@pytest.fixture
def websocket(web_config_port):
    """A factory of websocket clients for the services of
    :func:`web_config`, as Nameko's fixture: each call connects one to
    ``ws://127.0.0.1:<web_config_port>/ws`` and returns its socket
    (:class:`threadko.testing.websocket.Socket`: ``rpc(method, **data)``,
    ``wait_for_event(event_type)``, ``get_event_queue(event_type)``, and
    ``app``, the connection, with ``close()``)::

        def test_chat(container_factory, web_config, websocket):
            container_factory(Chat).start()
            ws = websocket()
            ws.rpc("join", room="lobby")
            assert ws.wait_for_event("joined") == ("joined", {...})

    ``websocket(headers={...})`` adds headers to the upgrade request (an
    addition to Nameko's). Every client is closed, and its reader thread
    joined, at teardown."""
    from threadko.testing.websocket import make_virtual_socket

    active_sockets = []

    def socket_creator(headers=None):
        ws_app, connect_socket = make_virtual_socket(
            '127.0.0.1', web_config_port, headers=headers)
        active_sockets.append(ws_app)
        socket = connect_socket()
        socket.app = ws_app
        return socket

    try:
        yield socket_creator
    finally:
        for ws_app in active_sockets:
            try:
                ws_app.close()
            except Exception:  # pragma: no cover
                pass


class _WebResponse:
    """What :func:`web_session` returns for a request."""

    def __init__(self, url, status_code, reason, headers, content):
        self.url = url
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def ok(self):
        return self.status_code < 400

    @property
    def text(self):
        charset = self.headers.get_content_charset() or 'utf-8'
        return self.content.decode(charset, errors='replace')

    def json(self):
        import json

        return json.loads(self.content)

    def __repr__(self):
        return '<Response [{}]>'.format(self.status_code)


def _default_header(headers, name, value):
    if not any(key.lower() == name.lower() for key in headers):
        headers[name] = value


def _default_content_type(headers, content_type):
    _default_header(headers, 'Content-Type', content_type)


class _WebSession:
    """The client :func:`web_session` provides."""

    #: at most this many redirects are followed for one request
    max_redirects = 10
    #: seconds a request may take unless ``timeout=`` says otherwise
    timeout = 30

    def __init__(self, base_url):
        self.base_url = base_url

    def request(self, method, url, params=None, data=None, json=None,
                headers=None, timeout=None, allow_redirects=True):
        import json as jsonlib
        from urllib.parse import urlencode, urljoin

        url = urljoin(self.base_url, url)
        if params:
            url += ('&' if '?' in url else '?') + urlencode(params, True)
        headers = dict(headers or {})
        # requests' default, which handlers may rely on (nameko-prometheus
        # reads request.headers["Accept"], a KeyError without it)
        _default_header(headers, 'Accept', '*/*')
        body = data
        if json is not None:
            body = jsonlib.dumps(json).encode('utf-8')
            _default_content_type(headers, 'application/json')
        elif isinstance(data, dict):
            body = urlencode(data, True).encode('ascii')
            _default_content_type(
                headers, 'application/x-www-form-urlencoded')
        elif isinstance(data, str):
            body = data.encode('utf-8')
        timeout = self.timeout if timeout is None else timeout

        method = method.upper()
        for _ in range(self.max_redirects + 1):
            response = self._send(method, url, body, headers, timeout)
            location = response.headers.get('Location')
            if not (allow_redirects and location
                    and response.status_code in (301, 302, 303, 307, 308)):
                return response
            url = urljoin(url, location)
            if response.status_code in (301, 302, 303) and method != 'HEAD':
                # as browsers (and requests) do: the redirect is a GET
                method, body = 'GET', None
                headers = {key: value for key, value in headers.items()
                           if key.lower() != 'content-type'}
        raise AssertionError('more than {} redirects, the last to {}'.format(
            self.max_redirects, url))

    @staticmethod
    def _send(method, url, body, headers, timeout):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        connection_cls = (http.client.HTTPSConnection
                          if parts.scheme == 'https'
                          else http.client.HTTPConnection)
        connection = connection_cls(parts.netloc, timeout=timeout)
        try:
            path = parts.path or '/'
            if parts.query:
                path += '?' + parts.query
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            return _WebResponse(url, response.status, response.reason,
                                response.headers, content)
        finally:
            connection.close()

    def get(self, url, **kwargs):
        return self.request('GET', url, **kwargs)

    def post(self, url, data=None, json=None, **kwargs):
        return self.request('POST', url, data=data, json=json, **kwargs)

    def put(self, url, data=None, **kwargs):
        return self.request('PUT', url, data=data, **kwargs)

    def patch(self, url, data=None, **kwargs):
        return self.request('PATCH', url, data=data, **kwargs)

    def delete(self, url, **kwargs):
        return self.request('DELETE', url, **kwargs)

    def head(self, url, **kwargs):
        # as requests does, HEAD does not follow redirects by default
        kwargs.setdefault('allow_redirects', False)
        return self.request('HEAD', url, **kwargs)

    def options(self, url, **kwargs):
        return self.request('OPTIONS', url, **kwargs)


def _random_vhost():
    return 'threadko_test_' + ''.join(
        random.choice(string.ascii_lowercase) for _ in range(10))


@pytest.fixture(scope='session')
def rabbit_manager(request):
    """A :class:`~threadko.testing.rabbit.RabbitManager` for the
    ``--rabbit-api-uri`` management API. Fails (not skips) the tests that
    use it when the API does not answer."""
    from threadko.testing.rabbit import RabbitManager, RabbitManagerError
    from threadko.utils import sanitize_url

    api_uri = request.config.getoption('RABBIT_API_URI')
    manager = RabbitManager(api_uri)
    try:
        manager.get_vhosts()
    except RabbitManagerError as exc:
        pytest.fail(
            'RabbitMQ is not reachable at {} ({}). scripts/test starts one; '
            'or pass --amqp-uri/--rabbit-api-uri for another broker.'.format(
                sanitize_url(api_uri), exc),
            pytrace=False)
    return manager


@pytest.fixture
def rabbit_config(request, rabbit_manager):
    """A fresh vhost on the ``--amqp-uri`` broker, deleted (with its
    queues, exchanges and connections) after the test.

    Provides ``{"AMQP_URI": <the URI with that vhost>, "username": ...,
    "vhost": ...}`` for Nameko 2 style tests, and patches the global
    :data:`threadko.config` with the same values for the test.
    """
    from threadko import config

    parts = urlsplit(request.config.getoption('RABBIT_AMQP_URI'))
    username = unquote(parts.username or 'guest')
    vhost = _random_vhost()
    rabbit_manager.create_vhost(vhost)
    try:
        rabbit_manager.set_vhost_permissions(vhost, username)
        amqp_uri = urlunsplit(
            (parts.scheme, parts.netloc, '/' + quote(vhost, safe=''),
             parts.query, ''))
        conf = {'AMQP_URI': amqp_uri, 'username': username, 'vhost': vhost}
        with config.patch(conf):
            yield conf
    finally:
        _delete_vhost(rabbit_manager, vhost)


def _delete_vhost(rabbit_manager, vhost, attempts=3):
    from threadko.testing.rabbit import RabbitManagerError

    for attempt in range(1, attempts + 1):
        try:
            rabbit_manager.delete_vhost(vhost)
            return
        except RabbitManagerError as exc:
            if exc.status == 404:  # the test deleted it already
                return
            if attempt == attempts:
                raise


@pytest.fixture
def amqp_uri(rabbit_config):
    """The AMQP URI of :func:`rabbit_config`'s vhost."""
    return rabbit_config['AMQP_URI']


@pytest.fixture
def rabbit_uri(rabbit_config):
    """The same as :func:`amqp_uri`."""
    return rabbit_config['AMQP_URI']


@pytest.fixture
def memory_config():
    """A fresh vhost on the embedded broker: provides ``{"AMQP_URI":
    "memory:///<vhost>", "vhost": ...}``, patches the global
    :data:`threadko.config` with it for the test, and deletes the vhost
    (and what is in it) afterwards."""
    from threadko import config
    from threadko.amqp import memory

    vhost = _random_vhost()
    conf = {'AMQP_URI': 'memory:///' + vhost, 'vhost': vhost}
    try:
        with config.patch(conf):
            yield conf
    finally:
        memory.delete_vhost(vhost)


@pytest.fixture
def get_message_from_queue(rabbit_config):
    """``get(queue_name, ack=True, block=True, timeout=1)`` reads one
    message from a queue in :func:`rabbit_config`'s vhost and returns a
    :class:`~threadko.testing.rabbit.ReceivedMessage` (``body``,
    ``properties``, ``headers``, ``payload``). ``ack=False`` puts it back;
    :class:`~threadko.testing.rabbit.QueueEmpty` is raised when none
    arrives within ``timeout`` seconds (at once without ``block``)."""
    from threadko.testing import rabbit

    uri = rabbit_config['AMQP_URI']

    def get(queue_name, ack=True, block=True, timeout=1):
        return rabbit.get_message_from_queue(
            uri, queue_name, ack=ack, block=block, timeout=timeout)

    return get
