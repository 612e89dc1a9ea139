"""The README's first command: run the example services on the embedded
broker, call them from a standalone client, and serve until Ctrl-C.

Usage: ``python -m examples [AMQP_URI]`` (default ``memory://``, the
in-process broker, which needs no setup; the client then has to live in
this same process, as it does here). Pass a RabbitMQ URI to run the same
services on RabbitMQ, where other processes can call them too.

``http_service`` (``examples/http.py``) serves HTTP on ``127.0.0.1:8000``,
or on the ``[host:]port`` in ``$THREADKO_EXAMPLES_WEB_ADDRESS``.
"""

import os
import signal
import sys
import threading

from examples.events import ServiceA, ServiceB
from examples.http import HttpService
from examples.rpc import ServiceX, ServiceY
from examples.standalone_events import main as dispatch_event
from examples.standalone_rpc import main as call_services
from threadko.exceptions import ConfigurationError
from threadko.runners import ServiceRunner
from threadko.standalone.rpc import ClusterRpcProxy

SERVICES = (ServiceX, ServiceY, ServiceA, ServiceB, HttpService)
WEB_ADDRESS_VARIABLE = "THREADKO_EXAMPLES_WEB_ADDRESS"
DEFAULT_WEB_ADDRESS = "127.0.0.1:8000"


def curl_hint(web_address):
    """The command that asks ``http_service`` for something."""
    host, _, port = web_address.rpartition(":")
    if host in ("", "0.0.0.0", "127.0.0.1"):
        host = "localhost"
    return "curl http://{}:{}/get/42".format(host, port)


def serve(amqp_uri):
    web_address = os.environ.get(WEB_ADDRESS_VARIABLE, DEFAULT_WEB_ADDRESS)
    config = {"AMQP_URI": amqp_uri, "WEB_SERVER_ADDRESS": web_address}
    runner = ServiceRunner(config)
    for service_cls in SERVICES:
        runner.add_service(service_cls)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())

    try:
        runner.start()
    except ConfigurationError as exc:  # the port is taken, say
        runner.kill()
        sys.exit("Error: {}\nFor this demo, set {} instead: {}=127.0.0.1:8001 "
                 "scripts/run-examples".format(
                     exc, WEB_ADDRESS_VARIABLE, WEB_ADDRESS_VARIABLE))
    print("{} are running on {}".format(
        ", ".join(cls.name for cls in SERVICES), amqp_uri), flush=True)
    try:
        call_services(amqp_uri)
        # an event dispatched by a service worker, then one from a script;
        # service_b prints each as it handles it
        with ClusterRpcProxy(config, timeout=10) as cluster_rpc:
            cluster_rpc.service_a.dispatching_method("hellø event")
        dispatch_event(amqp_uri)
        print("http_service answers HTTP on {}; try: {}".format(
            web_address, curl_hint(web_address)), flush=True)
        print("serving until Ctrl-C ...", flush=True)
        stop.wait()
    finally:
        runner.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else "memory://")
