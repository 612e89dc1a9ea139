"""Tests of the shop, as an application built on threadko would have them.
From the root of the repository::

    python -m pytest examples/shop/test_shop.py

They need neither a broker nor a database server: the services run on the
embedded ``memory://`` broker and keep their data in SQLite files in a
temporary directory. threadko's pytest plugin provides the fixtures
``runner_factory``, ``memory_config``, ``web_config`` and ``web_session``.
"""

import pytest

from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.services import entrypoint_waiter, worker_factory
from threadko.testing.utils import get_container

from examples.shop import orders
from examples.shop.database import connect
from examples.shop.exceptions import OrderNotFound, OutOfStock
from examples.shop.inventory import InventoryService
from examples.shop.orders import OrdersService


# -- unit tests: one service, its other dependencies replaced by mocks -------

@pytest.fixture
def orders_db(tmp_path):
    """A real database for the orders service, with its tables."""
    db = connect('sqlite:///{}'.format(tmp_path / 'orders.db'))
    db.create_schema(orders.SCHEMA)
    yield db
    db.close()


def test_an_order_is_reserved_recorded_and_announced(orders_db):
    service = worker_factory(OrdersService, db=orders_db)
    service.inventory.reserve_stock.return_value = 7

    order = service.place_order('tea', 2)

    assert order == {'id': 1, 'sku': 'tea', 'quantity': 2,
                     'reservation_id': 7}
    service.inventory.reserve_stock.assert_called_once_with('tea', 2)
    service.dispatch.assert_called_once_with('order_placed', order)
    assert service.get_order(1) == order


def test_an_order_without_stock_is_neither_recorded_nor_announced(
        orders_db):
    service = worker_factory(OrdersService, db=orders_db)
    service.inventory.reserve_stock.side_effect = OutOfStock('none left')

    with pytest.raises(OutOfStock):
        service.place_order('tea', 2)

    assert not service.dispatch.called
    with pytest.raises(OrderNotFound):
        service.get_order(1)


# -- integration test: both services running, called over HTTP and RPC -------

@pytest.fixture
def database_url(tmp_path):
    return 'sqlite:///{}'.format(tmp_path / 'shop.db')


@pytest.fixture
def shop(runner_factory, memory_config, web_config, database_url):
    """Both services, started, on a broker and a database of their own."""
    config = dict(memory_config, DATABASE_URL=database_url, **web_config)
    runner = runner_factory(config, OrdersService, InventoryService)
    runner.start()
    return runner


def test_orders_take_stock_until_there_is_not_enough(
        shop, memory_config, web_session, database_url):
    inventory = get_container(shop, InventoryService)

    with ClusterRpcProxy(memory_config, timeout=10) as rpc:
        assert rpc.inventory.add_stock('tea', 3) == 3

        # wait until the inventory has handled the order_placed event too
        with entrypoint_waiter(inventory, 'confirm_reservation'):
            response = web_session.post(
                '/orders', json={'sku': 'tea', 'quantity': 2})
        assert response.status_code == 201
        order = response.json()
        assert order['quantity'] == 2

        response = web_session.post(
            '/orders', json={'sku': 'tea', 'quantity': 2})
        assert response.status_code == 409
        assert response.json()['error'] == 'OUT_OF_STOCK'

        with pytest.raises(OutOfStock):
            rpc.orders.place_order('tea', 2)
        assert rpc.orders.place_order('tea', 1)['quantity'] == 1
        assert rpc.inventory.get_stock('tea') == 0

    assert web_session.get('/orders/{}'.format(order['id'])).json() == order
    db = connect(database_url)
    try:
        reserved_for = db.execute(
            'SELECT order_id FROM reservations WHERE id = ?',
            (order['reservation_id'],)).fetchone()
    finally:
        db.close()
    assert reserved_for == (order['id'],)
