from concurrent.futures import ThreadPoolExecutor

import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook, entrypoint_waiter

from shop.exceptions import OutOfStock
from shop.stock import StockService


def test_reserve_takes_what_is_left_or_nothing(stock_config, redis,
                                               container_factory):
    container = container_factory(StockService, stock_config)
    container.start()

    with entrypoint_hook(container, 'add_stock') as add_stock:
        assert add_stock('apple', 5) == 5
    with entrypoint_hook(container, 'reserve') as reserve:
        assert reserve('apple', 3) == 2
        with pytest.raises(OutOfStock):
            reserve('apple', 3)
    with entrypoint_hook(container, 'get_level') as get_level:
        assert get_level('apple') == 2
    assert redis.hget('stock', 'apple') == '2'


def test_concurrent_reservations_never_oversell(stock_config, redis,
                                                runner_factory):
    runner = runner_factory(stock_config, StockService)
    runner.start()
    redis.hset('stock', 'pear', 10)

    with ClusterRpcProxy(stock_config) as cluster_rpc:
        def reserve(_):
            try:
                return cluster_rpc.stock.reserve('pear', 1)
            except OutOfStock:
                return 'out of stock'

        # the proxy is shared by the client threads
        with ThreadPoolExecutor(8) as clients:
            results = list(clients.map(reserve, range(16)))
        assert sorted(r for r in results if r != 'out of stock') == list(
            range(10))
        assert results.count('out of stock') == 6
        assert cluster_rpc.stock.get_level('pear') == 0


def test_order_created_events_are_counted(stock_config, redis,
                                          container_factory):
    container = container_factory(StockService, stock_config)
    container.start()

    dispatch = event_dispatcher(stock_config)
    with entrypoint_waiter(container, 'record_sale'):
        dispatch('orders', 'order_created', {
            'id': 1, 'customer': 'ann',
            'lines': [{'sku': 'fig', 'quantity': 2},
                      {'sku': 'kiwi', 'quantity': 1}]})

    with entrypoint_hook(container, 'sales') as sales:
        assert sales() == {'orders': 1, 'sold': {'fig': 2, 'kiwi': 1}}
