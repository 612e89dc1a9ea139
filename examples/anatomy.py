"""The parts of a service: a class with a ``name``, dependencies declared
as class attributes, and entrypoints that decide which methods the outside
world can trigger.
"""

from threadko.rpc import RpcProxy, rpc


class Service:
    name = "service"

    # a dependency: each worker gets a proxy to the RPC methods of
    # "another_service" as `self.other_rpc`
    other_rpc = RpcProxy("another_service")

    @rpc  # an entrypoint: `method` can be called over RPC
    def method(self):
        # the service's own logic goes here
        pass
