"""The orders service: places orders, reserving their stock from the
inventory service first, and shows them.

A placed order is announced with an ``order_placed`` event, which the
inventory service handles.
"""

from threadko.events import EventDispatcher
from threadko.rpc import RpcProxy, rpc

from examples.shop.database import Database
from examples.shop.exceptions import OrderNotFound, ShopError, check_item
from examples.shop.web import http, json_body, json_response

SCHEMA = [
    'CREATE TABLE IF NOT EXISTS orders ('
    ' id {serial},'
    ' sku VARCHAR(64) NOT NULL,'
    ' quantity INTEGER NOT NULL,'
    ' reservation_id INTEGER NOT NULL)',
]
FIELDS = ('id', 'sku', 'quantity', 'reservation_id')


class OrdersService:
    name = 'orders'

    db = Database(SCHEMA)
    inventory = RpcProxy('inventory')
    dispatch = EventDispatcher()

    @rpc(expected_exceptions=ShopError)
    def place_order(self, sku, quantity):
        """Order ``quantity`` of ``sku`` and return the order; raise
        :exc:`~examples.shop.exceptions.OutOfStock` if there are not
        enough."""
        check_item(sku, quantity)
        reservation_id = self.inventory.reserve_stock(sku, quantity)
        order_id = self.db.execute(
            'INSERT INTO orders (sku, quantity, reservation_id)'
            ' VALUES (?, ?, ?)', (sku, quantity, reservation_id)).lastrowid
        order = dict(zip(FIELDS, (order_id, sku, quantity, reservation_id)))
        self.dispatch('order_placed', order)
        return order

    @rpc(expected_exceptions=ShopError)
    def get_order(self, order_id):
        """The order with id ``order_id``."""
        row = self.db.execute(
            'SELECT id, sku, quantity, reservation_id FROM orders'
            ' WHERE id = ?', (order_id,)).fetchone()
        if row is None:
            raise OrderNotFound('no order {!r}'.format(order_id))
        return dict(zip(FIELDS, row))

    @http('POST', '/orders', expected_exceptions=ShopError)
    def create_order(self, request):
        body = json_body(request)
        order = self.place_order(body.get('sku'), body.get('quantity'))
        return json_response(order, status=201)

    @http('GET', '/orders/<int:order_id>', expected_exceptions=ShopError)
    def show_order(self, request, order_id):
        return json_response(self.get_order(order_id))
