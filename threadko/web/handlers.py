"""The ``@http`` entrypoint.

::

    class Hello:
        name = "hello"

        @http("GET", "/hello/<string:name>")
        def greet(self, request, name):
            return "Hello, {}!".format(name)

The method gets the werkzeug ``Request`` and the url's values as keyword
arguments, and returns one of:

- a string or bytes: the body of a 200 response;
- ``(status, body)``;
- ``(status, headers, body)``, headers as a dict or a list of pairs;
- a werkzeug ``Response``, sent as it is.

Exceptions become responses in :meth:`HttpRequestHandler.response_from_exception`:
400 for ``expected_exceptions`` and :class:`~threadko.exceptions.BadRequest`,
a werkzeug ``HTTPException`` (``abort(404)``, a malformed JSON body) as
itself, 500 otherwise; the body names the exception, never the traceback.
With ``WEB_SERVER_HIDE_ERROR_DETAILS: true`` the body of a 500 says only
``Internal Server Error (error id <hex>)``, and the same id is logged with
the error (see :meth:`HttpRequestHandler.hidden_error_response`).

Each request runs a worker, like any entrypoint: at most ``max_workers`` at
once, the request waiting for a free slot. The worker runs on the request's
own thread (see :meth:`~threadko.containers.ServiceContainer.run_worker`),
which saves two thread switches per request.
"""


import logging
import uuid

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule
from werkzeug.wrappers import Response

from threadko.containers import _describe
from threadko.exceptions import BadRequest, ContainerBeingKilled, serialize
from threadko.extensions import Entrypoint
from threadko.web.server import WebServer

__all__ = ['HttpRequestHandler', 'http']

_log = logging.getLogger(__name__)

#: true: a 500 tells the client an error id, not the exception (default
#: false: its type and message, as in Nameko)
HIDE_ERROR_DETAILS_CONFIG_KEY = 'WEB_SERVER_HIDE_ERROR_DETAILS'


class _Outcome:
    """A worker's result, captured by its ``handle_result``."""

    __slots__ = ('done', 'result', 'exc_info', 'worker_ctx')

    def __init__(self):
        self.done = False
        self.result = None
        self.exc_info = None
        self.worker_ctx = None

    def handle_result(self, worker_ctx, result, exc_info):
        self.done, self.result, self.exc_info = True, result, exc_info
        self.worker_ctx = worker_ctx
        return result, exc_info

    def raised(self, exc):
        """True if ``exc`` is what the service method raised (the
        container has logged it, with its traceback)."""
        return self.exc_info is not None and self.exc_info[1] is exc

    def get(self):
        if not self.done:
            # the container was killed while the worker ran
            raise ContainerBeingKilled()
        if self.exc_info is not None:
            raise self.exc_info[1]
        return self.result


class HttpRequestHandler(Entrypoint):
    """The ``@http(method, url)`` entrypoint.

    :param method: an HTTP method, or several joined by commas
        (``"GET,POST"``)
    :param url: a werkzeug url rule, e.g. ``/items/<int:item_id>``
    :param expected_exceptions: exceptions answered with 400
    """

    server = WebServer()
    #: from ``WEB_SERVER_HIDE_ERROR_DETAILS`` at setup
    hide_error_details = False

    def __init__(self, method, url, **kwargs):
        self.method = method
        self.url = url
        self._stopping = False
        super().__init__(**kwargs)

    def get_url_rule(self):
        """The werkzeug ``Rule`` this entrypoint answers."""
        methods = [method.strip().upper()
                   for method in self.method.split(',') if method.strip()]
        return Rule(self.url, methods=methods)

    def setup(self):
        self.hide_error_details = bool(
            self.container.config.get(HIDE_ERROR_DETAILS_CONFIG_KEY))
        self.server.register_provider(self)

    def start(self):
        self._stopping = False  # after a restart

    def stop(self):
        # requests arriving from now on get 503; the ones already in
        # workers finish before the container's stop() returns
        self._stopping = True
        self.server.unregister_provider(self)

    def kill(self):
        self._stopping = True
        self.server.unregister_provider(self)

    def get_entrypoint_parameters(self, request):
        """``(args, kwargs)`` for the service method: the request, and the
        values parsed from the url."""
        return (request,), dict(request.path_values)

    def handle_request(self, request):
        """Run a worker for ``request`` and return its response."""
        request.shallow = False
        outcome = None
        try:
            if self._stopping:
                raise ContainerBeingKilled()
            context_data = self.server.context_data_from_headers(request)
            args, kwargs = self.get_entrypoint_parameters(request)
            self.check_signature(args, kwargs)
            outcome = _Outcome()
            # the request thread would only wait for a pool thread: run
            # the worker here (it still takes a max_workers slot)
            self.container.run_worker(
                self, args, kwargs, context_data=context_data,
                handle_result=outcome.handle_result, origin=request)
            response = self.response_from_result(outcome.get())
        except Exception as exc:
            response = self.response_from_exception(exc)
            error_id = getattr(response, 'error_id', None)
            if error_id is not None:
                self._log_hidden_error(error_id, exc, request, outcome)
        return response

    def _log_hidden_error(self, error_id, exc, request, outcome):
        """One ERROR line with the id the client was given. An error of
        the service method has been logged with its traceback just before,
        by the container (``error handling worker <worker>: ...``): this
        line names that worker. Any other error (a bad return value, a
        failing override) is logged nowhere else: it gets its traceback
        here. The query string is left out: it may carry secrets."""
        if outcome is not None and outcome.raised(exc):
            _log.error(
                'error id %s: %s %s answered 500 without details; the '
                'error of worker %s: %s: %s', error_id, request.method,
                request.path, outcome.worker_ctx, type(exc).__name__,
                _describe(exc), extra={'error_id': error_id})
        else:
            _log.error(
                'error id %s: %s %s answered 500 without details: %s: %s',
                error_id, request.method, request.path, type(exc).__name__,
                _describe(exc), extra={'error_id': error_id},
                exc_info=(type(exc), exc, exc.__traceback__))

    def response_from_result(self, result):
        """Turn a method's return value into a ``Response``."""
        if isinstance(result, Response):
            return result
        headers = None
        if isinstance(result, tuple):
            if len(result) == 3:
                status, headers, payload = result
            else:
                status, payload = result
        else:
            status, payload = 200, result
        if not isinstance(payload, (str, bytes)):
            raise TypeError(
                'An @http method must return a string or bytes body (or a '
                'Response); got {!r}'.format(payload))
        return Response(payload, status=status, headers=headers)

    def response_from_exception(self, exc):
        """Turn an exception into a ``Response``. Override it for other
        error formats (JSON, say)."""
        if isinstance(exc, HTTPException):
            return exc.get_response()
        if isinstance(exc, ContainerBeingKilled):
            return Response(
                'Error: the service is stopping\n', status=503,
                headers={'Retry-After': '1'})
        if isinstance(exc, self.expected_exceptions) or isinstance(
                exc, BadRequest):
            status = 400
        elif self.hide_error_details:
            return self.hidden_error_response(exc)
        else:
            status = 500
        error = serialize(exc)
        return Response(
            'Error: {exc_type}: {value}\n'.format(**error), status=status)

    def hidden_error_response(self, exc):
        """The 500 for an unexpected ``exc`` under
        ``WEB_SERVER_HIDE_ERROR_DETAILS``: ``Internal Server Error (error
        id <32 hex digits>)``, nothing about ``exc``. The response carries
        the id as its ``error_id`` attribute; :meth:`handle_request` logs
        the error with that id, for any response with an ``error_id``
        (an override of :meth:`response_from_exception` making JSON
        errors can call this and reuse the id, or set its own)."""
        error_id = uuid.uuid4().hex
        response = Response(
            'Internal Server Error (error id {})\n'.format(error_id),
            status=500)
        response.error_id = error_id
        return response


http = HttpRequestHandler.decorator
