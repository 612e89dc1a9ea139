"""``WEB_SERVER_HIDE_ERROR_DETAILS``: an unexpected exception in an
``@http`` method is a 500 naming the exception and its message (false, the
default, as in Nameko), or a 500 that says only ``Internal Server Error
(error id <hex>)`` while the error is logged with that id (true). Expected
exceptions and werkzeug ``HTTPException`` keep their status and message
either way. Through real HTTP requests to a real server."""

import logging
import re

import pytest
from werkzeug.exceptions import abort

from threadko.exceptions import BadRequest
from threadko.web.handlers import http

SECRET = 'password=hunter2 at 10.0.0.5'
GENERIC = re.compile(r'^Internal Server Error \(error id ([0-9a-f]{32})\)\n$')


class Invalid(BadRequest):
    pass


class Failing:
    name = 'failing'

    @http('GET', '/unexpected')
    def unexpected(self, request):
        raise RuntimeError('could not connect: ' + SECRET)

    @http('GET', '/bad-return')
    def bad_return(self, request):
        return {SECRET: 'not a body'}  # TypeError, outside the worker

    @http('GET', '/expected', expected_exceptions=ValueError)
    def expected(self, request):
        raise ValueError('bad value')

    @http('GET', '/bad-request')
    def bad_request(self, request):
        raise Invalid('not like that')

    @http('GET', '/abort')
    def aborted(self, request):
        abort(409, 'the item changed meanwhile')

    @http('GET', '/fine')
    def fine(self, request):
        return 'fine'


@pytest.fixture
def serve(containers, local_config, port_of):
    def start(**config):
        container = containers(Failing, dict(local_config, **config))
        container.start()
        return port_of(container)
    return start


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger='threadko')
    return caplog


def id_records(log):
    return [record for record in log.records
            if getattr(record, 'error_id', None) is not None]


def worker_error_records(log):
    return [record for record in log.records
            if record.getMessage().startswith('error handling worker')]


# -- default: Nameko's behaviour -------------------------------------------

@pytest.mark.parametrize('config', [{}, {
    'WEB_SERVER_HIDE_ERROR_DETAILS': False}, {
    'WEB_SERVER_HIDE_ERROR_DETAILS': None}])
def test_by_default_a_500_names_the_exception_and_its_message(
        serve, fetch, log, config):
    port = serve(**config)

    reply = fetch(port, 'GET', '/unexpected')

    assert reply.status == 500
    assert reply.text == 'Error: RuntimeError: could not connect: {}\n'.format(
        SECRET)
    assert 'error id' not in reply.text
    assert id_records(log) == []
    assert len(worker_error_records(log)) == 1
    assert fetch(port, 'GET', '/fine').text == 'fine'


# -- hidden ------------------------------------------------------------------

def test_hidden_a_500_says_only_an_error_id_which_the_log_has(
        serve, fetch, log):
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=True)

    reply = fetch(port, 'GET', '/unexpected')

    assert reply.status == 500
    assert reply.headers['Content-Type'].startswith('text/plain')
    match = GENERIC.match(reply.text)
    assert match, reply.text
    for detail in ('hunter2', '10.0.0.5', 'RuntimeError', 'connect'):
        assert detail not in reply.text
    error_id = match.group(1)

    [record] = id_records(log)
    assert record.error_id == error_id
    assert record.levelno == logging.ERROR
    assert record.name == 'threadko.web.handlers'
    message = record.getMessage()
    assert message.startswith('error id {}: GET /unexpected '.format(
        error_id))
    assert 'RuntimeError: could not connect: ' + SECRET in message
    # the traceback is on the container's line for the worker, just
    # before, which this one names; not repeated here
    [worker_record] = worker_error_records(log)
    assert worker_record.exc_info is not None
    assert log.records.index(worker_record) < log.records.index(record)
    worker_name = worker_record.getMessage().split(': ')[0][
        len('error handling worker '):]
    assert worker_name in message
    assert record.exc_info is None

    assert fetch(port, 'GET', '/fine').text == 'fine'


def test_hidden_each_error_gets_its_own_id(serve, fetch, log):
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=True)

    ids = [GENERIC.match(fetch(port, 'GET', '/unexpected').text).group(1)
           for _ in range(3)]

    assert len(set(ids)) == 3
    assert [record.error_id for record in id_records(log)] == ids


def test_hidden_an_error_outside_the_method_is_logged_with_its_traceback(
        serve, fetch, log):
    # a body that is not a string fails after the worker: nothing but
    # the id line logs it
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=True)

    reply = fetch(port, 'GET', '/bad-return')

    assert reply.status == 500
    match = GENERIC.match(reply.text)
    assert match, reply.text
    assert 'hunter2' not in reply.text and 'TypeError' not in reply.text
    [record] = id_records(log)
    assert record.error_id == match.group(1)
    assert match.group(1) in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is TypeError
    assert worker_error_records(log) == []
    assert fetch(port, 'GET', '/fine').text == 'fine'


def test_hidden_the_query_string_is_not_logged(serve, fetch, log):
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=True)

    fetch(port, 'GET', '/unexpected?token=s3cret')

    [record] = id_records(log)
    assert 's3cret' not in record.getMessage()


# -- expected errors keep their status and message either way -----------------

@pytest.mark.parametrize('hide', [False, True])
def test_expected_errors_keep_status_and_message(serve, fetch, log, hide):
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=hide)

    reply = fetch(port, 'GET', '/expected')
    assert (reply.status, reply.text) == (
        400, 'Error: ValueError: bad value\n')
    reply = fetch(port, 'GET', '/bad-request')
    assert (reply.status, reply.text) == (
        400, 'Error: Invalid: not like that\n')
    reply = fetch(port, 'GET', '/abort')
    assert reply.status == 409
    assert 'the item changed meanwhile' in reply.text
    assert 'error id' not in reply.text

    assert id_records(log) == []
    assert fetch(port, 'GET', '/fine').text == 'fine'


@pytest.mark.parametrize('hide', [False, True])
def test_the_service_keeps_serving_after_many_errors(serve, fetch, hide):
    port = serve(WEB_SERVER_HIDE_ERROR_DETAILS=hide)

    for _ in range(20):
        assert fetch(port, 'GET', '/unexpected').status == 500
        assert fetch(port, 'GET', '/fine').text == 'fine'
