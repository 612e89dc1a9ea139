"""Services of the tracing tests.

The shop: ``gateway`` (HTTP) calls ``orders`` over RPC, which calls
``stock`` over RPC and dispatches an ``order_placed`` event handled by
``emails``. ``ticking`` dispatches ``ticked`` (handled by ``tick_log``)
from a timer. ``faulty`` fails in every way a worker can; ``vault`` handles
a password at every hop (HTTP body, RPC argument, event), each entrypoint
naming it in ``sensitive_arguments``.

Imported by the tests and by ``traced_child`` (``threadko run`` in a child
process), so nothing here sets up OpenTelemetry.
"""

import json
import threading

from threadko.events import EventDispatcher, event_handler
from threadko.extensions import DependencyProvider
from threadko.rpc import RpcProxy, rpc
from threadko.timer import timer
from threadko.web.handlers import http
from threadko.web.websocket import rpc as ws_rpc

from support import Journal

WAIT = 10  # seconds a blocked worker waits for the test to release it

#: the password the secrets test sends through every hop
SECRET = 'hunter2-correct-horse-battery-staple'


class Worker(DependencyProvider):
    """Injects the worker context itself."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


# -- the shop -----------------------------------------------------------------

class Gateway:
    name = 'gateway'

    orders = RpcProxy('orders')

    @http('POST', '/orders/<int:customer_id>')
    def place(self, request, customer_id):
        item = request.get_data(as_text=True)
        return json.dumps(self.orders.place(customer_id, item))


class Orders:
    name = 'orders'

    stock = RpcProxy('stock')
    dispatch = EventDispatcher()

    @rpc
    def place(self, customer_id, item):
        reserved = self.stock.reserve(item)
        self.dispatch('order_placed', {'customer_id': customer_id,
                                       'item': item})
        return {'customer_id': customer_id, 'reserved': reserved}


class Stock:
    name = 'stock'

    @rpc
    def reserve(self, item):
        return 'reserved {}'.format(item)


class Emails:
    name = 'emails'

    sent = Journal()
    worker = Worker()

    @event_handler('orders', 'order_placed')
    def on_order_placed(self, order):
        Emails.sent.add({'order': order, 'data': dict(self.worker.data)})


# -- failures -----------------------------------------------------------------

class Refused(Exception):
    """An expected exception: part of the methods' contract."""


class Broken(Exception):
    """An unexpected exception."""


class Faulty:
    name = 'faulty'

    #: set by the test to let a ``slow`` worker finish
    release = threading.Event()
    handled = Journal()

    @rpc(expected_exceptions=Refused)
    def refuse(self):
        raise Refused('not today')

    @rpc
    def fail(self):
        raise Broken('out of order')

    @rpc
    def slow(self):
        return Faulty.release.wait(WAIT)

    @http('GET', '/refused', expected_exceptions=Refused)
    def http_refuse(self, request):
        raise Refused('not today')

    @http('GET', '/broken')
    def http_fail(self, request):
        raise Broken('out of order')

    @event_handler('faulty_source', 'boom')
    def on_boom(self, payload):
        Faulty.handled.add(payload)
        raise Broken('boom')


# -- secrets ------------------------------------------------------------------

class Vault:
    name = 'vault'

    vault = RpcProxy('vault')
    dispatch = EventDispatcher()
    rotated = Journal()

    @http('POST', '/login')
    def http_login(self, request):
        credentials = json.loads(request.get_data(as_text=True))
        return json.dumps(self.vault.login(
            credentials['username'], credentials['password']))

    @rpc(sensitive_arguments=('password',))
    def login(self, username, password):
        self.dispatch('rotated', {'user': username, 'password': password})
        return {'user': username, 'ok': password == SECRET}

    @event_handler('vault', 'rotated', sensitive_arguments=('event.password',))
    def on_rotated(self, event):
        Vault.rotated.add(event['user'])


# -- a timer ------------------------------------------------------------------

class Ticking:
    name = 'ticking'

    dispatch = EventDispatcher()

    @timer(interval=3600, eager=True)
    def tick(self):
        self.dispatch('ticked', {})


class TickLog:
    name = 'tick_log'

    ticks = Journal()

    @event_handler('ticking', 'ticked')
    def on_tick(self, payload):
        TickLog.ticks.add(payload)


# -- websocket RPC ------------------------------------------------------------

class Sockets:
    name = 'sockets'

    stock = RpcProxy('stock')

    @ws_rpc
    def reserve(self, socket_id, item):
        return self.stock.reserve(item)
