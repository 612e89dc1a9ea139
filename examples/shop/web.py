"""JSON over HTTP for the shop's services.

``@http`` here is threadko's, except that a
:class:`~examples.shop.exceptions.ShopError` becomes a JSON answer with the
error's status, e.g. ``409 {"error": "OUT_OF_STOCK", "message": "..."}``.
"""

import json

from werkzeug.wrappers import Response

from threadko.web.handlers import HttpRequestHandler

from examples.shop.exceptions import ShopError


def json_response(payload, status=200):
    """A response with ``payload`` as its JSON body."""
    return Response(
        json.dumps(payload), status=status, mimetype='application/json')


class JsonHttpRequestHandler(HttpRequestHandler):
    """The ``@http`` entrypoint, answering the shop's errors in JSON."""

    def response_from_exception(self, exc):
        if isinstance(exc, ShopError):
            return json_response(
                {'error': exc.error_code, 'message': str(exc)},
                status=exc.status_code)
        return super().response_from_exception(exc)


http = JsonHttpRequestHandler.decorator


def json_body(request):
    """The request's body as a JSON object (a dict), or ``{}`` if it is
    anything else; whatever the ``Content-Type`` says."""
    body = request.get_json(force=True, silent=True)
    return body if isinstance(body, dict) else {}
