"""threadko services inside a WSGI application, beside a plain WSGI app.

One process serves both, on one port:

- ``/api/...``: the ``@http`` routes of ``greeter``, a threadko service
  that :class:`~threadko.web.wsgi.ServiceApp` runs in this process;
- everything else: ``Frontend``, a small werkzeug application (it could
  as well be Flask or Django), whose pages call ``greeter`` over RPC
  through one ``ClusterRpcProxy`` shared by every request thread.

Usage: ``python -m examples.wsgi_embedding [AMQP_URI]`` (default
``memory://``: services, client and broker all live in this process),
serving with waitress on ``127.0.0.1:8000`` (or the ``[host:]port`` in
``$THREADKO_EXAMPLES_WEB_ADDRESS``) until Ctrl-C or SIGTERM::

    curl http://localhost:8000/api/greet/Ada     # greeter's own @http route
    curl http://localhost:8000/hello/Ada         # the frontend, over RPC
"""

import os
import signal
import sys

import waitress
from werkzeug.exceptions import HTTPException, ServiceUnavailable
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from threadko.exceptions import UnknownService
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.web.handlers import http
from threadko.web.wsgi import ServiceApp


class Greeter:
    name = "greeter"

    @rpc
    def greet(self, name):
        return "Hello, {}!".format(name)

    @http("GET", "/greet/<name>")
    def greet_over_http(self, request, name):
        return self.greet(name) + "\n"


class Frontend:
    """A plain WSGI application; its pages call services over RPC."""

    url_map = Map([
        Rule("/", endpoint="index"),
        Rule("/hello/<name>", endpoint="hello"),
    ])

    def __init__(self, rpc_client):
        # one client for every request thread: its calls are thread-safe
        self.rpc_client = rpc_client

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, values = self.url_map.bind_to_environ(environ).match()
            response = getattr(self, endpoint)(request, **values)
        except HTTPException as exc:
            response = exc
        return response(environ, start_response)

    def index(self, request):
        return Response("try /hello/<name> and /api/greet/<name>\n")

    def hello(self, request, name):
        # connects on the first call only; later calls return at once
        cluster_rpc = self.rpc_client.start()
        try:
            greeting = cluster_rpc.greeter.greet(name)
        except UnknownService:
            raise ServiceUnavailable("greeter is not running")
        return Response("{} (over RPC)\n".format(greeting))


def make_app(config):
    """The WSGI application, the services it runs and the RPC client it
    shares: ``(application, services, rpc_client)``."""
    services = ServiceApp([Greeter], config)
    rpc_client = ClusterRpcProxy(config, timeout=10)
    application = DispatcherMiddleware(
        Frontend(rpc_client), {"/api": services})
    return application, services, rpc_client


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # waitress stops on it, as on Ctrl-C


def main(amqp_uri):
    web_address = os.environ.get(
        "THREADKO_EXAMPLES_WEB_ADDRESS", "127.0.0.1:8000")
    host, _, port = web_address.rpartition(":")
    application, services, rpc_client = make_app({"AMQP_URI": amqp_uri})
    # greeter must run before the frontend calls it (otherwise it would
    # start on the first /api request)
    services.start()
    server = waitress.create_server(
        application, host=host or "0.0.0.0", port=int(port), threads=8)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    print("serving on http://{}:{}/ (frontend) and /api/ (greeter) "
          "until Ctrl-C".format(host or "0.0.0.0", server.effective_port),
          flush=True)
    try:
        server.run()  # returns after Ctrl-C or SIGTERM
    finally:
        server.close()
        rpc_client.stop()
        services.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "memory://")
