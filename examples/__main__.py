"""The README's first command: run the example services on the embedded
broker, call them from a standalone client, and serve until Ctrl-C.

Usage: ``python -m examples [AMQP_URI]`` (default ``memory://``, the
in-process broker, which needs no setup; the client then has to live in
this same process, as it does here). Pass a RabbitMQ URI to run the same
services on RabbitMQ, where other processes can call them too.

``http_service`` (``examples/http.py``) serves HTTP on ``127.0.0.1:8000``,
or on the ``[host:]port`` in ``$THREADKO_EXAMPLES_WEB_ADDRESS``, and so
does ``price_ticker`` (``examples/websocket_live.py``): its live page, at
``/``, shows the prices this script dispatches every second.
"""

import importlib.util
import os
import random
import signal
import sys
import threading

from examples.events import ServiceA, ServiceB
from examples.http import HttpService
from examples.rpc import ServiceX, ServiceY
from examples.standalone_events import main as dispatch_event
from examples.standalone_rpc import main as call_services
from examples.websocket_live import PriceTicker
from threadko.exceptions import ConfigurationError
from threadko.runners import ServiceRunner
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

# websockets need wsproto (pip install "threadko[websocket]")
HAVE_WEBSOCKETS = importlib.util.find_spec("wsproto") is not None
SERVICES = (ServiceX, ServiceY, ServiceA, ServiceB, HttpService) + (
    (PriceTicker,) if HAVE_WEBSOCKETS else ())
WEB_ADDRESS_VARIABLE = "THREADKO_EXAMPLES_WEB_ADDRESS"
DEFAULT_WEB_ADDRESS = "127.0.0.1:8000"
#: the live page's symbols (its default ones), and their first prices
PRICES = {"ACME": 101.25, "GLOBEX": 42.0, "INITECH": 7.5}


def base_url(web_address):
    """Where a browser (or curl) on this machine reaches ``web_address``."""
    host, _, port = web_address.rpartition(":")
    if host in ("", "0.0.0.0", "127.0.0.1"):
        host = "localhost"
    return "http://{}:{}".format(host, port)


def curl_hint(web_address):
    """The command that asks ``http_service`` for something."""
    return "curl {}/get/42".format(base_url(web_address))


def feed_prices(config, stop, interval=1.0):
    """A make-believe market, until ``stop`` is set: every ``interval``
    seconds, a ``price_changed`` event of the ``market`` service for each
    symbol, its price a random walk."""
    prices = dict(PRICES)
    dispatch = event_dispatcher(config)
    try:
        while not stop.wait(interval):
            for symbol in prices:
                prices[symbol] = round(
                    prices[symbol] * random.uniform(0.99, 1.01), 2)
                dispatch("market", "price_changed",
                         {"symbol": symbol, "price": prices[symbol]})
    finally:
        dispatch.close()


def serve(amqp_uri):
    web_address = os.environ.get(WEB_ADDRESS_VARIABLE, DEFAULT_WEB_ADDRESS)
    config = {"AMQP_URI": amqp_uri, "WEB_SERVER_ADDRESS": web_address}
    runner = ServiceRunner(config)
    for service_cls in SERVICES:
        runner.add_service(service_cls)

    stop = threading.Event()
    market = threading.Thread(target=feed_prices, args=(config, stop),
                              name="market")
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
        if HAVE_WEBSOCKETS:
            market.start()
            print("price_ticker's live page, with prices every second: "
                  "{}/".format(base_url(web_address)), flush=True)
        else:
            print("(price_ticker's live page needs wsproto: "
                  ".venv/bin/pip install 'threadko[websocket]')", flush=True)
        print("serving until Ctrl-C ...", flush=True)
        stop.wait()
    finally:
        stop.set()
        if market.is_alive():
            market.join()
        runner.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else "memory://")
