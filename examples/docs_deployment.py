"""A service with the two checks a process manager can probe.

Run it with::

    threadko run --broker amqp://guest:guest@localhost examples.docs_deployment

then ``curl http://localhost:8000/health`` answers ``ok``, and
``echo 'print(n.rpc.orders.ping())' | threadko shell`` prints ``pong``.
Both answers come from a worker, so they also show that the service's
worker pool is not stuck.
"""

from threadko.rpc import rpc
from threadko.web.handlers import http


class Orders:
    name = "orders"

    @http("GET", "/health")
    def health(self, request):
        return "ok"

    @rpc
    def ping(self):
        return "pong"
