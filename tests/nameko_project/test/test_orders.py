import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter, worker_factory
from nameko.testing.utils import get_container

from shop.exceptions import NotFound, OutOfStock
from shop.models import Order, OrderLine
from shop.orders import OrdersService
from shop.stock import StockService

LINES = [{'sku': 'apple', 'quantity': 2}, {'sku': 'pear', 'quantity': 1}]


# -- unit tests: nameko-sqlalchemy's `database` stands in for the dependency

def test_create_order_reserves_stores_and_announces(database):
    service = worker_factory(OrdersService, db=database)

    created = service.create_order('ann', LINES)

    assert created == {'id': created['id'], 'customer': 'ann',
                       'lines': LINES}
    assert [call.args for call in service.stock_rpc.reserve.call_args_list
            ] == [('apple', 2), ('pear', 1)]
    service.dispatch.assert_called_once_with('order_created', created)
    assert service.get_order(created['id']) == created
    assert service.list_orders('ann') == [created]


def test_out_of_stock_gives_back_what_was_reserved(database, db_session):
    service = worker_factory(OrdersService, db=database)
    service.stock_rpc.reserve.side_effect = [None, OutOfStock('no pears')]

    with pytest.raises(OutOfStock):
        service.create_order('bob', LINES)

    service.stock_rpc.release.assert_called_once_with('apple', 2)
    assert not service.dispatch.called
    assert db_session.query(Order).count() == 0


def test_unknown_order_is_not_found(database):
    service = worker_factory(OrdersService, db=database)
    with pytest.raises(NotFound):
        service.get_order(404)


# -- integration: both services on RabbitMQ, the database and Redis ----------

def test_an_order_end_to_end(config, runner_factory, db_session, redis):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()
    stock = get_container(runner, StockService)

    with ClusterRpcProxy(config) as cluster_rpc:
        cluster_rpc.stock.add_stock('apple', 5)
        cluster_rpc.stock.add_stock('pear', 5)

        with entrypoint_waiter(stock, 'record_sale'):
            created = cluster_rpc.orders.create_order('ann', LINES)

        assert cluster_rpc.orders.get_order(created['id']) == created
        assert cluster_rpc.stock.get_level('apple') == 3
        assert cluster_rpc.stock.sales() == {
            'orders': 1, 'sold': {'apple': 2, 'pear': 1}}

    # what the service committed, seen from the test's own session
    lines = db_session.query(OrderLine).order_by(OrderLine.id).all()
    assert [(line.order_id, line.sku, line.quantity) for line in lines] == [
        (created['id'], 'apple', 2), (created['id'], 'pear', 1)]


def test_out_of_stock_over_rpc(config, runner_factory, db_session, redis):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()

    with ClusterRpcProxy(config) as cluster_rpc:
        cluster_rpc.stock.add_stock('apple', 5)
        cluster_rpc.stock.add_stock('pear', 0)

        # the services' own exception class, through two RPC hops
        with pytest.raises(OutOfStock) as raised:
            cluster_rpc.orders.create_order('bob', LINES)
        assert 'pear' in str(raised.value)

        with pytest.raises(NotFound):
            cluster_rpc.orders.get_order(1)
        assert cluster_rpc.stock.get_level('apple') == 5  # given back
    assert db_session.query(Order).count() == 0


def test_orders_over_http(config, runner_factory, web_session, redis):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()

    with ClusterRpcProxy(config) as cluster_rpc:
        cluster_rpc.stock.add_stock('apple', 1)
        created = cluster_rpc.orders.create_order(
            'cy', [{'sku': 'apple', 'quantity': 1}])

    response = web_session.get('/orders/{}'.format(created['id']))
    assert response.status_code == 200
    assert response.json() == created

    response = web_session.get('/orders/{}'.format(created['id'] + 1))
    assert response.status_code == 404
    assert 'does not exist' in response.json()['error']
