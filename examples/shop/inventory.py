"""The inventory service: how much of each product is in stock, and the
reservations taken out of it for orders.

Stock can never go negative, however many orders arrive at once: the
database checks and takes it in one statement (and a ``CHECK`` constraint
refuses negative stock outright).
"""

from threadko.events import event_handler
from threadko.rpc import rpc

from examples.shop.database import Database
from examples.shop.exceptions import OutOfStock, ShopError, check_item
from examples.shop.web import http, json_body, json_response

SCHEMA = [
    'CREATE TABLE IF NOT EXISTS products ('
    ' sku VARCHAR(64) PRIMARY KEY,'
    ' stock INTEGER NOT NULL CHECK (stock >= 0))',
    'CREATE TABLE IF NOT EXISTS reservations ('
    ' id {serial},'
    ' sku VARCHAR(64) NOT NULL,'
    ' quantity INTEGER NOT NULL,'
    ' order_id INTEGER)',  # set when the order is placed
]


class InventoryService:
    name = 'inventory'

    db = Database(SCHEMA)

    @rpc(expected_exceptions=ShopError)
    def reserve_stock(self, sku, quantity):
        """Take ``quantity`` of ``sku`` out of stock and return the id of
        the reservation; raise :exc:`OutOfStock` (taking nothing) if fewer
        are left."""
        check_item(sku, quantity)
        with self.db.transaction():
            # check and take in one statement: concurrent reservations
            # wait for each other's row lock, and each one sees the stock
            # the one before it left
            taken = self.db.execute(
                'UPDATE products SET stock = stock - ?'
                ' WHERE sku = ? AND stock >= ?',
                (quantity, sku, quantity)).rowcount
            if taken != 1:
                raise OutOfStock('fewer than {} {!r} in stock'.format(
                    quantity, sku))
            return self.db.execute(
                'INSERT INTO reservations (sku, quantity) VALUES (?, ?)',
                (sku, quantity)).lastrowid

    @rpc(expected_exceptions=ShopError)
    def add_stock(self, sku, quantity):
        """Add ``quantity`` of ``sku``, a new product or a known one;
        return how many are in stock now."""
        check_item(sku, quantity)
        with self.db.transaction():
            added = self.db.execute(
                'UPDATE products SET stock = stock + ? WHERE sku = ?',
                (quantity, sku)).rowcount
            if not added:  # a new product
                self.db.execute(
                    'INSERT INTO products (sku, stock) VALUES (?, ?)',
                    (sku, quantity))
            return self.get_stock(sku)

    @rpc
    def get_stock(self, sku):
        """How many of ``sku`` are in stock (0 for an unknown product)."""
        row = self.db.execute(
            'SELECT stock FROM products WHERE sku = ?', (sku,)).fetchone()
        return row[0] if row else 0

    @event_handler('orders', 'order_placed')
    def confirm_reservation(self, order):
        """Note which order a reservation went to. One that never gets an
        order (its caller failed in between) can be found and put back."""
        self.db.execute(
            'UPDATE reservations SET order_id = ? WHERE id = ?',
            (order['id'], order['reservation_id']))

    @http('GET', '/stock/<sku>')
    def show_stock(self, request, sku):
        return json_response({'sku': sku, 'stock': self.get_stock(sku)})

    @http('POST', '/stock/<sku>', expected_exceptions=ShopError)
    def restock(self, request, sku):
        stock = self.add_stock(sku, json_body(request).get('quantity'))
        return json_response({'sku': sku, 'stock': stock})
