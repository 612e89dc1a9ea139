"""Context data taken from HTTP request headers (docs/web.rst).

``@http`` workers start with empty context data, as in Nameko. This
``http`` copies the ``Accept-Language`` header into it, where the
``Language`` dependency provider (and every RPC call or event the worker
sends on) finds it::

    threadko run examples.http_context_data
    curl -H "Accept-Language: fr" http://localhost:8000/language    # fr
"""

from threadko.contextdata import Language
from threadko.web.handlers import HttpRequestHandler
from threadko.web.server import WebServer


class HeaderContextServer(WebServer):
    def context_data_from_headers(self, request):
        return {"language": request.headers.get("Accept-Language")}


class HeaderContextHttp(HttpRequestHandler):
    server = HeaderContextServer()


http = HeaderContextHttp.decorator


class Greeter:
    name = "greeter"

    language = Language()

    @http("GET", "/language")
    def get_language(self, request):
        return str(self.language)
