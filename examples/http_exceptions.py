"""An ``@http`` that answers the errors it expects with JSON.

Subclass :class:`~threadko.web.handlers.HttpRequestHandler`, override
``response_from_exception``, and use the subclass's ``decorator`` as your
``http``. Exceptions a method does not list in ``expected_exceptions``
still get the default plain-text 500, which names the exception and
nothing more.

Run it with ``threadko run examples.http_exceptions``, then::

    curl -i "http://localhost:8000/price/apple?quantity=3"
    curl -i "http://localhost:8000/price/apple?quantity=lots"
    curl -i http://localhost:8000/price/kiwi
"""

import json

from werkzeug.wrappers import Response

from threadko.web.handlers import HttpRequestHandler

PRICES = {"apple": 3, "pear": 4}


class ApiError(Exception):
    """An error the client should see: an HTTP status and an error code."""

    status = 400
    code = "bad_request"


class InvalidArguments(ApiError):
    code = "invalid_arguments"


class UnknownItem(ApiError):
    status = 404
    code = "unknown_item"


class JsonErrorsHttp(HttpRequestHandler):
    def response_from_exception(self, exc):
        if isinstance(exc, ApiError) and isinstance(
                exc, self.expected_exceptions):
            body = json.dumps({"error": exc.code, "message": str(exc)})
            return Response(body, status=exc.status,
                            mimetype="application/json")
        return super().response_from_exception(exc)


http = JsonErrorsHttp.decorator


class ShopService:
    name = "shop"

    @http("GET", "/price/<item>",
          expected_exceptions=(InvalidArguments, UnknownItem))
    def price(self, request, item):
        quantity = request.args.get("quantity", "1")
        if not quantity.isdigit():
            raise InvalidArguments(
                "quantity must be a whole number, not {!r}".format(quantity))
        if item not in PRICES:
            raise UnknownItem("there is no {!r} in the shop".format(item))
        total = PRICES[item] * int(quantity)
        return json.dumps({"item": item, "quantity": int(quantity),
                           "total": total})
