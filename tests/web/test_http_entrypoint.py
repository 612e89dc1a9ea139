"""The ``@http`` entrypoint, through real HTTP requests to real waitress:
return conventions, url converters and methods, the request object,
errors, and the worker lifecycle and pool bound behind each request."""

import json
import os
import threading

import pytest
from werkzeug.exceptions import abort
from werkzeug.wrappers import Response

from support import WAIT, Recorder, RecordingProvider

from threadko.exceptions import BadRequest, MalformedRequest
from threadko.web.handlers import HttpRequestHandler, http


@pytest.fixture
def serve(containers, local_config, port_of):
    """``serve(service_cls, **config)`` starts a container serving on
    loopback and returns its port."""

    def start(service_cls, **config):
        container = containers(service_cls, dict(local_config, **config))
        container.start()
        return port_of(container)

    return start


# -- return conventions -------------------------------------------------------

class Returns:
    name = 'returns'

    @http('GET', '/str')
    def text(self, request):
        return 'héllo'

    @http('GET', '/bytes')
    def raw(self, request):
        return b'\x00\xffraw'

    @http('GET', '/status-body')
    def status_body(self, request):
        return 201, 'created'

    @http('GET', '/headers-dict')
    def headers_dict(self, request):
        return 202, {'X-Custom': 'one', 'Content-Type': 'text/csv'}, 'a,b'

    @http('GET', '/headers-list')
    def headers_list(self, request):
        return 203, [('X-Multi', 'a'), ('X-Multi', 'b')], 'listed'

    @http('GET', '/response')
    def response(self, request):
        response = Response(
            json.dumps({'ok': True}), status=418,
            mimetype='application/json')
        response.set_cookie('session', 'abc123', httponly=True)
        return response

    @http('GET', '/dict')
    def a_dict(self, request):
        return {'not': 'a string'}

    @http('GET', '/none')
    def nothing(self, request):
        pass

    @http('GET', '/status-none')
    def status_none(self, request):
        return 200, 42

    @http('GET', '/four-tuple')
    def four_tuple(self, request):
        return 200, {}, 'body', 'extra'


def test_a_string_is_a_200_text_plain_body(serve, fetch):
    port = serve(Returns)
    reply = fetch(port, 'GET', '/str')
    assert reply.status == 200
    assert reply.text == 'héllo'
    assert reply.headers['Content-Type'] == 'text/plain; charset=utf-8'


def test_bytes_are_the_body_as_they_are(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/bytes')
    assert reply.status == 200
    assert reply.body == b'\x00\xffraw'


def test_status_and_body(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/status-body')
    assert (reply.status, reply.text) == (201, 'created')


def test_status_headers_dict_and_body(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/headers-dict')
    assert (reply.status, reply.text) == (202, 'a,b')
    assert reply.headers['X-Custom'] == 'one'
    assert reply.headers['Content-Type'] == 'text/csv'


def test_status_headers_list_and_body_keeps_repeated_headers(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/headers-list')
    assert (reply.status, reply.text) == (203, 'listed')
    assert reply.headers.get_all('X-Multi') == ['a', 'b']


def test_a_response_is_sent_as_it_is(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/response')
    assert reply.status == 418
    assert reply.headers['Content-Type'] == 'application/json'
    assert json.loads(reply.body) == {'ok': True}
    cookie = reply.headers['Set-Cookie']
    assert cookie.startswith('session=abc123')
    assert 'HttpOnly' in cookie


@pytest.mark.parametrize('path', ['/dict', '/none', '/status-none'])
def test_a_body_that_is_not_a_string_is_a_500_naming_type_error(
        serve, fetch, path):
    reply = fetch(serve(Returns), 'GET', path)
    assert reply.status == 500
    assert reply.text.startswith('Error: TypeError: ')


def test_a_tuple_of_the_wrong_length_is_a_500(serve, fetch):
    reply = fetch(serve(Returns), 'GET', '/four-tuple')
    assert reply.status == 500
    assert reply.text.startswith('Error: ValueError: ')


# -- routing: converters, methods, HEAD ---------------------------------------

class Routes:
    name = 'routes'

    @http('GET', '/int/<int:value>')
    def int_value(self, request, value):
        return '{} {}'.format(type(value).__name__, value * 2)

    @http('GET', '/string/<string:word>')
    def string_value(self, request, word):
        return 'word={}'.format(word)

    @http('GET', '/path/<path:rest>')
    def path_value(self, request, rest):
        return 'rest={}'.format(rest)

    @http('GET,PUT,POST,DELETE', '/multi')
    def multi(self, request):
        return 'method={}'.format(request.method)


def test_int_converter_passes_an_int(serve, fetch):
    port = serve(Routes)
    reply = fetch(port, 'GET', '/int/21')
    assert (reply.status, reply.text) == (200, 'int 42')
    assert fetch(port, 'GET', '/int/twenty').status == 404


def test_string_converter_takes_one_decoded_segment(serve, fetch):
    port = serve(Routes)
    reply = fetch(port, 'GET', '/string/caf%C3%A9%20au%20lait')
    assert (reply.status, reply.text) == (200, 'word=café au lait')
    assert fetch(port, 'GET', '/string/a/b').status == 404


def test_path_converter_takes_slashes(serve, fetch):
    reply = fetch(serve(Routes), 'GET', '/path/a/b/c.txt')
    assert (reply.status, reply.text) == (200, 'rest=a/b/c.txt')


def test_one_declaration_answers_several_methods(serve, fetch):
    port = serve(Routes)
    for method in ('GET', 'PUT', 'POST', 'DELETE'):
        reply = fetch(port, method, '/multi')
        assert (reply.status, reply.text) == (200, 'method=' + method)


def test_head_on_a_get_route_runs_it_and_sends_no_body(serve, fetch):
    port = serve(Routes)
    reply = fetch(port, 'HEAD', '/int/4')
    assert reply.status == 200
    assert reply.body == b''
    assert reply.headers['Content-Length'] == str(len('int 8'))


def test_unknown_route_is_404(serve, fetch):
    assert fetch(serve(Routes), 'GET', '/nowhere').status == 404


def test_wrong_method_is_405_with_allow(serve, fetch):
    port = serve(Routes)
    reply = fetch(port, 'POST', '/int/1')
    assert reply.status == 405
    assert {'GET', 'HEAD'} <= _allowed(reply)
    reply = fetch(port, 'PATCH', '/multi')
    assert reply.status == 405
    assert {'GET', 'PUT', 'POST', 'DELETE'} <= _allowed(reply)


def _allowed(reply):
    return {method.strip() for method in reply.headers['Allow'].split(',')}


# -- the request object -------------------------------------------------------

class Echo:
    name = 'echo'

    @http('GET', '/args')
    def args(self, request):
        return json.dumps({
            'x': request.args.getlist('x'), 'y': request.args.get('y')})

    @http('POST', '/form')
    def form(self, request):
        return json.dumps(request.form.to_dict(flat=False))

    @http('POST', '/json')
    def json_body(self, request):
        payload = request.get_json()
        return 200, {'Content-Type': 'application/json'}, json.dumps(
            {'got': payload})

    @http('GET', '/headers')
    def headers(self, request):
        return json.dumps({
            'thing': request.headers.get('X-Thing'),
            'agent': request.headers.get('User-Agent')})

    @http('PUT', '/raw')
    def raw(self, request):
        return request.get_data()[::-1]


def test_request_query_args(serve, fetch):
    reply = fetch(serve(Echo), 'GET', '/args?x=1&x=2&y=%C3%A9')
    assert reply.status == 200
    assert json.loads(reply.body) == {'x': ['1', '2'], 'y': 'é'}


def test_request_form(serve, fetch):
    reply = fetch(
        serve(Echo), 'POST', '/form', body='a=1&a=2&b=two+words',
        headers={'Content-Type': 'application/x-www-form-urlencoded'})
    assert reply.status == 200
    assert json.loads(reply.body) == {'a': ['1', '2'], 'b': ['two words']}


def test_request_json_body(serve, fetch):
    reply = fetch(
        serve(Echo), 'POST', '/json', body=json.dumps({'n': [1, 2]}),
        headers={'Content-Type': 'application/json'})
    assert reply.status == 200
    assert json.loads(reply.body) == {'got': {'n': [1, 2]}}


def test_malformed_json_body_is_400(serve, fetch):
    port = serve(Echo)
    reply = fetch(port, 'POST', '/json', body='{"n": [1,',
                  headers={'Content-Type': 'application/json'})
    assert reply.status == 400
    # the service goes on serving
    assert fetch(port, 'GET', '/args?x=1').status == 200


def test_request_headers(serve, fetch):
    reply = fetch(serve(Echo), 'GET', '/headers',
                  headers={'X-Thing': 'thing', 'User-Agent': 'tests/1.0'})
    assert json.loads(reply.body) == {'thing': 'thing', 'agent': 'tests/1.0'}


def test_request_body_bytes(serve, fetch):
    reply = fetch(serve(Echo), 'PUT', '/raw', body=b'\x01\x02\x03')
    assert (reply.status, reply.body) == (200, b'\x03\x02\x01')


# -- errors -------------------------------------------------------------------

class Invalid(BadRequest):
    pass


class Errors:
    name = 'errors'
    calls = None  # a Recorder, set by the fixture

    @http('GET', '/expected', expected_exceptions=ValueError)
    def expected(self, request):
        raise ValueError('bad value')

    @http('GET', '/expected-tuple', expected_exceptions=(KeyError, TypeError))
    def expected_tuple(self, request):
        raise TypeError('wrong type')

    @http('GET', '/bad-request')
    def bad_request(self, request):
        raise Invalid('not like that')

    @http('GET', '/malformed')
    def malformed(self, request):
        raise MalformedRequest('garbled')

    @http('GET', '/unexpected')
    def unexpected(self, request):
        _fail_deep_down()

    @http('GET', '/abort')
    def forbidden(self, request):
        abort(403)

    @http('GET', '/signature/<int:value>')
    def no_value_parameter(self, request):
        self.calls('ran')
        return 'should not run'


def _fail_deep_down():
    raise RuntimeError('kaboom')


@pytest.fixture
def errors(serve):
    Errors.calls = Recorder()
    yield serve(Errors)
    Errors.calls = None


def test_expected_exception_is_400_naming_it(errors, fetch):
    reply = fetch(errors, 'GET', '/expected')
    assert reply.status == 400
    assert reply.text == 'Error: ValueError: bad value\n'
    assert reply.headers['Content-Type'].startswith('text/plain')
    reply = fetch(errors, 'GET', '/expected-tuple')
    assert (reply.status, reply.text) == (
        400, 'Error: TypeError: wrong type\n')


def test_bad_request_subclasses_are_400(errors, fetch):
    reply = fetch(errors, 'GET', '/bad-request')
    assert (reply.status, reply.text) == (
        400, 'Error: Invalid: not like that\n')
    reply = fetch(errors, 'GET', '/malformed')
    assert (reply.status, reply.text) == (
        400, 'Error: MalformedRequest: garbled\n')


def test_unexpected_exception_is_500_without_traceback(errors, fetch):
    reply = fetch(errors, 'GET', '/unexpected')
    assert reply.status == 500
    assert reply.text == 'Error: RuntimeError: kaboom\n'
    assert 'Traceback' not in reply.text
    assert '.py' not in reply.text
    assert os.path.dirname(__file__) not in reply.text


def test_abort_in_the_method_is_that_http_error(errors, fetch):
    assert fetch(errors, 'GET', '/abort').status == 403


def test_url_values_not_fitting_the_signature_are_400(errors, fetch):
    reply = fetch(errors, 'GET', '/signature/7')
    assert reply.status == 400
    assert reply.text.startswith('Error: IncorrectSignature: ')
    assert Errors.calls.events == []  # no worker ran the method


class JsonErrors(HttpRequestHandler):
    """Errors as JSON bodies."""

    def response_from_exception(self, exc):
        status = 400 if isinstance(exc, self.expected_exceptions) else 500
        return Response(
            json.dumps({'error': type(exc).__name__, 'message': str(exc)}),
            status=status, mimetype='application/json')


json_http = JsonErrors.decorator


class JsonApi:
    name = 'json_api'

    @json_http('GET', '/fail/<kind>', expected_exceptions=KeyError)
    def fail(self, request, kind):
        if kind == 'expected':
            raise KeyError('missing')
        raise RuntimeError('broken')

    @json_http('GET', '/fine')
    def fine(self, request):
        return 'fine'


def test_overridden_response_from_exception_makes_json_errors(serve, fetch):
    port = serve(JsonApi)
    reply = fetch(port, 'GET', '/fail/expected')
    assert reply.status == 400
    assert reply.headers['Content-Type'] == 'application/json'
    assert json.loads(reply.body) == {
        'error': 'KeyError', 'message': "'missing'"}
    reply = fetch(port, 'GET', '/fail/other')
    assert reply.status == 500
    assert json.loads(reply.body) == {
        'error': 'RuntimeError', 'message': 'broken'}
    assert fetch(port, 'GET', '/fine').text == 'fine'


# -- workers ------------------------------------------------------------------

def test_worker_lifecycle_runs_for_each_request(serve, fetch):
    record = Recorder()

    class Lifecycle:
        name = 'lifecycle'
        dep = RecordingProvider(record)

        @http('GET', '/work/<int:n>')
        def work(self, request, n):
            record('method', threading.get_ident())
            return '{}:{}'.format(self.dep, n)

    port = serve(Lifecycle)
    reply = fetch(port, 'GET', '/work/5')
    assert (reply.status, reply.text) == (200, 'dep:5')
    record.wait_for_kind('worker_teardown')

    kinds = [kind for kind in record.kinds()
             if kind not in ('setup', 'start')]
    assert kinds == ['get_dependency', 'worker_setup', 'method',
                     'worker_result', 'worker_result_args', 'worker_teardown']
    assert ('worker_result_args', 'dep:5', None) in record.events
    # the whole worker lifecycle runs on one thread
    threads = {event[1] for event in record.events
               if event[0] in ('get_dependency', 'worker_setup', 'method',
                               'worker_result', 'worker_teardown')}
    assert len(threads) == 1


def test_a_failing_worker_reports_the_exception_to_worker_result(
        serve, fetch):
    record = Recorder()

    class Failing:
        name = 'failing'
        dep = RecordingProvider(record)

        @http('GET', '/fail')
        def fail(self, request):
            raise LookupError('gone')

    reply = fetch(serve(Failing), 'GET', '/fail')
    assert reply.status == 500
    record.wait_for_kind('worker_teardown')
    assert ('worker_result_args', None, LookupError) in record.events


def test_max_workers_bounds_requests_running_at_once(
        serve, fetch, background, in_flight):
    flight = in_flight

    class Bounded:
        name = 'bounded'

        @http('GET', '/block/<int:n>')
        def block(self, request, n):
            flight.enter()
            return str(n)

    port = serve(Bounded, max_workers=3)
    replies = [background(fetch, port, 'GET', '/block/{}'.format(n))
               for n in range(8)]
    flight.wait(lambda f: f.running == 3)
    assert flight.holds_for_a_moment(lambda f: f.running == 3)
    # let them go one at a time: each freed slot goes to a waiting request
    for released in range(1, 6):
        flight.permits.release()
        flight.wait(lambda f: f.finished == released and f.running == 3)
    flight.permits.release(3)
    results = sorted((r.result(WAIT).status, int(r.result(WAIT).text))
                     for r in replies)
    assert results == [(200, n) for n in range(8)]
    assert flight.peak == 3


def test_http_concurrency_reaches_max_workers(serve, fetch, background):
    # every request waits at a barrier only all 8 together can pass: this
    # needs 8 request threads and 8 workers at once
    barrier = threading.Barrier(8, timeout=WAIT)

    class Wide:
        name = 'wide'

        @http('GET', '/meet/<int:n>')
        def meet(self, request, n):
            barrier.wait()
            return str(n)

    port = serve(Wide, max_workers=8)
    try:
        replies = [background(fetch, port, 'GET', '/meet/{}'.format(n))
                   for n in range(8)]
        results = sorted((r.result(WAIT * 2).status, r.result().text)
                         for r in replies)
    finally:
        barrier.abort()
    assert results == [(200, str(n)) for n in range(8)]
