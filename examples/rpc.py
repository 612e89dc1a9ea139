"""Two services, one calling the other over RPC.

``service_x.remote_method("hellø")`` appends ``-x`` and asks ``service_y``
to append ``-y``: the result is ``"hellø-x-y"``. Run them on RabbitMQ with::

    threadko run examples.rpc --broker amqp://guest:guest@localhost

and call them with ``python -m examples.standalone_rpc
amqp://guest:guest@localhost``. ``python -m examples`` runs them on the
embedded broker instead, calls them, and keeps serving until Ctrl-C.
"""

from threadko.rpc import RpcProxy, rpc


class ServiceY:
    name = "service_y"

    @rpc
    def append_identifier(self, value):
        return "{}-y".format(value)


class ServiceX:
    name = "service_x"

    y = RpcProxy("service_y")

    @rpc
    def remote_method(self, value):
        res = "{}-x".format(value)
        return self.y.append_identifier(res)
