"""The ``web_session`` fixture: an HTTP client bound to ``web_config``'s
address, used against a real ``@http`` service."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from werkzeug.wrappers import Response

from threadko.web.handlers import http


class EchoService:
    name = "echo"

    @http("GET", "/get/<int:value>")
    def get_value(self, request, value):
        return json.dumps({"value": value, "args": request.args.to_dict()})

    @http("GET,POST,PUT,PATCH,DELETE,OPTIONS", "/echo")
    def echo(self, request):
        return json.dumps({
            "method": request.method,
            "content_type": request.content_type,
            "body": request.get_data(as_text=True),
            "x_custom": request.headers.get("X-Custom"),
            "accept": request.headers.get("Accept"),
        })

    @http("GET", "/text")
    def text(self, request):
        return Response("grüße".encode("latin-1"),
                        content_type="text/plain; charset=latin-1")

    @http("GET", "/slash/")
    def slash(self, request):
        return "with a slash"

    @http("POST", "/see-other")
    def see_other(self, request):
        return 303, {"Location": "/echo"}, ""

    @http("GET", "/missing")
    def missing(self, request):
        return 404, "not here"


@pytest.fixture
def echo_service(container_factory, web_config):
    container = container_factory(EchoService)
    container.start()
    return container


def test_relative_urls_go_to_the_web_config_address(web_session,
                                                    web_config_port):
    assert web_session.base_url == 'http://127.0.0.1:{}/'.format(
        web_config_port)


def test_get_returns_status_headers_and_body(echo_service, web_session):
    response = web_session.get('/get/42')

    assert response.status_code == 200
    assert response.ok
    assert response.headers['content-type'] == 'text/plain; charset=utf-8'
    assert response.headers['Content-Length'] == str(len(response.content))
    assert response.content == b'{"value": 42, "args": {}}'
    assert response.json() == {'value': 42, 'args': {}}


def test_params_become_the_query_string(echo_service, web_session):
    response = web_session.get('/get/1', params={'a': 'x y', 'b': 2})
    assert response.json()['args'] == {'a': 'x y', 'b': '2'}
    assert response.url.endswith('/get/1?a=x+y&b=2')


def test_full_urls_are_used_as_they_are(echo_service, web_session,
                                        web_config_port):
    url = 'http://127.0.0.1:{}/get/7'.format(web_config_port)
    assert web_session.get(url).json()['value'] == 7


def test_error_statuses_are_returned_not_raised(echo_service, web_session):
    response = web_session.get('/missing')
    assert response.status_code == 404
    assert not response.ok
    assert response.text == 'not here'
    assert web_session.get('/no/such/route').status_code == 404


@pytest.mark.parametrize('call, method', [
    (lambda session: session.get('/echo'), 'GET'),
    (lambda session: session.post('/echo'), 'POST'),
    (lambda session: session.put('/echo'), 'PUT'),
    (lambda session: session.patch('/echo'), 'PATCH'),
    (lambda session: session.delete('/echo'), 'DELETE'),
    (lambda session: session.options('/echo'), 'OPTIONS'),
    (lambda session: session.request('post', '/echo'), 'POST'),
])
def test_each_method_sends_its_verb(echo_service, web_session, call, method):
    assert call(web_session).json()['method'] == method


def test_head_returns_headers_without_a_body(echo_service, web_session):
    response = web_session.head('/get/42')
    assert response.status_code == 200
    assert response.headers['Content-Length'] == str(
        len(b'{"value": 42, "args": {}}'))
    assert response.content == b''


@pytest.mark.parametrize('kwargs, content_type, body', [
    ({'data': b'raw bytes'}, None, 'raw bytes'),
    ({'data': 'hellø'}, None, 'hellø'),
    ({'data': {'a': '1', 'b': 'x y'}}, 'application/x-www-form-urlencoded',
     'a=1&b=x+y'),
    ({'json': {'a': [1, 2]}}, 'application/json', '{"a": [1, 2]}'),
    ({'json': {}, 'headers': {'content-type': 'application/vnd.x+json'}},
     'application/vnd.x+json', '{}'),
])
def test_post_sends_data_or_json(echo_service, web_session, kwargs,
                                 content_type, body):
    echoed = web_session.post('/echo', **kwargs).json()
    assert echoed['content_type'] == content_type
    assert echoed['body'] == body


def test_headers_are_sent(echo_service, web_session):
    response = web_session.get('/echo', headers={'X-Custom': 'yes'})
    assert response.json()['x_custom'] == 'yes'


def test_accept_is_sent_as_requests_does_unless_given(echo_service,
                                                     web_session):
    # Nameko's web_session (a requests.Session) sends "Accept: */*", and
    # handlers rely on it: nameko-prometheus's expose_metrics reads
    # request.headers["Accept"]
    assert web_session.get('/echo').json()['accept'] == '*/*'
    response = web_session.get('/echo', headers={'accept': 'text/plain'})
    assert response.json()['accept'] == 'text/plain'


def test_text_is_decoded_with_the_response_charset(echo_service,
                                                   web_session):
    assert web_session.get('/text').text == 'grüße'


def test_redirects_are_followed_unless_told_not_to(echo_service,
                                                   web_session):
    # werkzeug redirects /slash to the rule's /slash/
    followed = web_session.get('/slash')
    assert followed.status_code == 200
    assert followed.text == 'with a slash'
    assert followed.url.endswith('/slash/')

    not_followed = web_session.get('/slash', allow_redirects=False)
    assert not_followed.status_code == 308
    assert not_followed.headers['Location'].endswith('/slash/')


def test_a_303_after_a_post_is_followed_with_a_get(echo_service,
                                                   web_session):
    response = web_session.post('/see-other', json={'a': 1})
    assert response.json() == {
        'method': 'GET', 'content_type': None, 'body': '', 'x_custom': None,
        'accept': '*/*'}


def test_the_session_can_be_shared_by_threads(echo_service, web_session):
    with ThreadPoolExecutor(
            8, thread_name_prefix='threadko-test-client') as pool:
        responses = list(pool.map(
            lambda n: web_session.get('/get/{}'.format(n)), range(20)))
    assert [r.json()['value'] for r in responses] == list(range(20))
