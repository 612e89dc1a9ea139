"""Several RPC calls in flight at once, from a script.

``call_async`` sends the request and returns straight away with a reply
object; its ``result()`` waits for the answer (or raises the remote error).
The services are those of ``examples.rpc``, so run them first::

    threadko run examples.rpc --broker amqp://guest:guest@localhost
    python -m examples.async_rpc amqp://guest:guest@localhost
"""

import sys

from threadko.standalone.rpc import ClusterRpcProxy


def main(amqp_uri):
    config = {"AMQP_URI": amqp_uri}
    with ClusterRpcProxy(config, timeout=10) as cluster_rpc:
        hello_res = cluster_rpc.service_x.remote_method.call_async("hello")
        world_res = cluster_rpc.service_x.remote_method.call_async("world")
        # both requests are on their way; other work can happen here
        hello = hello_res.result()  # "hello-x-y"
        world = world_res.result()  # "world-x-y"
    print(hello, world)
    return hello, world


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost")
