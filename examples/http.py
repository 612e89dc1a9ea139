"""A service with two HTTP entrypoints.

Run it with ``threadko run examples.http`` (it serves on
``WEB_SERVER_ADDRESS``, by default ``0.0.0.0:8000``), then::

    curl http://localhost:8000/get/42
    curl -d "hellø" http://localhost:8000/post

``python -m examples`` runs it too, beside the RPC and events examples.
"""

import json

from threadko.web.handlers import http


class HttpService:
    name = "http_service"

    @http("GET", "/get/<int:value>")
    def get_method(self, request, value):
        return json.dumps({"value": value})

    @http("POST", "/post")
    def do_post(self, request):
        return "received: {}".format(request.get_data(as_text=True))
