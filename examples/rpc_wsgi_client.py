"""One RPC client for a whole threaded WSGI application (docs/rpc.rst).

The client is started once, at import, and stopped at exit; every request
thread calls services through the same ``rpc``. Serve it with any WSGI
server, while ``examples.rpc`` runs on the same broker::

    threadko run examples.rpc --broker amqp://guest:guest@localhost
    waitress-serve --port 8080 examples.rpc_wsgi_client:application
    curl "http://localhost:8080/?Ada"        # Ada-x-y

``$AMQP_URI`` names another broker.
"""

import atexit
import os

from threadko.standalone.rpc import ClusterRpcProxy

AMQP_URI = os.environ.get("AMQP_URI", "amqp://guest:guest@localhost")

client = ClusterRpcProxy({"AMQP_URI": AMQP_URI}, timeout=10)
rpc = client.start()
atexit.register(client.stop)


def application(environ, start_response):
    # called on many threads at once, all sharing `rpc`
    name = environ.get("QUERY_STRING") or "world"
    body = rpc.service_x.remote_method(name).encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
