"""Call the services of ``examples.rpc`` from a plain script.

Usage: ``python -m examples.standalone_rpc [AMQP_URI]`` (default
``amqp://guest:guest@localhost``), while ``threadko run examples.rpc`` runs
on the same broker.
"""

import sys

from threadko.standalone.rpc import ClusterRpcProxy


def main(amqp_uri):
    config = {"AMQP_URI": amqp_uri}
    with ClusterRpcProxy(config, timeout=10) as cluster_rpc:
        result = cluster_rpc.service_x.remote_method("hellø")
        print("service_x.remote_method('hellø') returned {!r}".format(result))

        # several calls in flight at once
        replies = [cluster_rpc.service_y.append_identifier.call_async(n)
                   for n in ("a", "b", "c")]
        print("async results: {}".format([r.result() for r in replies]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost")
