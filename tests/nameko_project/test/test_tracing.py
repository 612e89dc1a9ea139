"""nameko-tracer: what its log records (logger ``nameko_tracer``) say
about each call, in their ``nameko_trace`` attribute."""

import logging

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_container

from shop.exceptions import NotFound
from shop.orders import OrdersService
from shop.stock import StockService


def traces(records, service, method):
    """``{stage: (record, trace)}`` of the one call of ``method``."""
    found = {}
    for record in records:
        trace = record.nameko_trace
        if (trace['service'], trace['entrypoint_name']) == (service, method):
            assert trace['stage'] not in found, 'more than one call'
            found[trace['stage']] = (record, trace)
    return found


def test_a_call_chain_is_traced(config, runner_factory, redis,
                                tracer_records):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()
    orders = get_container(runner, OrdersService)
    stock = get_container(runner, StockService)

    with ClusterRpcProxy(config) as cluster_rpc:
        cluster_rpc.stock.add_stock('plum', 4)
        with entrypoint_waiter(stock, 'record_sale'), \
                entrypoint_waiter(orders, 'create_order'):
            created = cluster_rpc.orders.create_order(
                'dee', [{'sku': 'plum', 'quantity': 3}])

    records = tracer_records()
    create = traces(records, 'orders', 'create_order')
    assert set(create) == {'request', 'response'}
    request_record, request = create['request']
    response_record, response = create['response']
    assert request_record.levelno == logging.INFO
    assert request_record.getMessage() == (
        '[{}] entrypoint call trace'.format(request['call_id']))
    assert response_record.getMessage() == (
        '[{}] entrypoint result trace'.format(request['call_id']))

    assert request['entrypoint_type'] == 'Rpc'
    assert request['call_id'].startswith('orders.create_order.')
    assert request['call_id_stack'][-1] == request['call_id']
    assert request['call_args'] == {
        'customer': 'dee', 'lines': [{'sku': 'plum', 'quantity': 3}]}
    assert request['call_args_redacted'] is False
    assert response['call_id'] == request['call_id']
    assert response['response_status'] == 'success'
    assert response['response'] == created
    assert response['response_time'] >= 0
    assert response['timestamp'] >= request['timestamp']

    # the calls it made carry its call id on their stacks
    _, reserve = traces(records, 'stock', 'reserve')['response']
    assert reserve['call_args'] == {'sku': 'plum', 'quantity': 3}
    assert reserve['response'] == 1
    assert reserve['call_id_stack'][:-1] == request['call_id_stack']
    assert reserve['origin_call_id'] == request['call_id_stack'][0]
    _, sale = traces(records, 'stock', 'record_sale')['response']
    assert sale['entrypoint_type'] == 'EventHandler'
    assert sale['call_id_stack'][:-1] == request['call_id_stack']


def test_an_error_is_traced(config, runner_factory, redis, tracer_records):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()
    orders = get_container(runner, OrdersService)

    with ClusterRpcProxy(config) as cluster_rpc:
        with entrypoint_waiter(orders, 'get_order'):
            with pytest.raises(NotFound):
                cluster_rpc.orders.get_order(12345)

    record, trace = traces(tracer_records(), 'orders', 'get_order')[
        'response']
    assert record.levelno == logging.WARNING
    assert trace['response_status'] == 'error'
    assert trace['exception_type'] == 'NotFound'
    assert trace['exception_path'] == 'shop.exceptions.NotFound'
    assert trace['exception_value'] == 'order 12345 does not exist'
    assert trace['exception_args'] == ['order 12345 does not exist']
    assert trace['exception_expected'] is True
    assert 'Traceback' in trace['exception_traceback']


def test_an_http_request_is_traced(config, runner_factory, redis,
                                   web_session, tracer_records):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()
    orders = get_container(runner, OrdersService)

    with entrypoint_waiter(orders, 'get_order_http'):
        response = web_session.get('/orders/7', headers={'X-Trace': 'me'})
    assert response.status_code == 404

    found = traces(tracer_records(), 'orders', 'get_order_http')
    _, request = found['request']
    _, response = found['response']
    assert request['entrypoint_type'] == 'HttpRequestHandler'
    call_args = request['call_args']
    assert call_args['order_id'] == 7
    assert call_args['request']['method'] == 'GET'
    assert call_args['request']['url'].endswith('/orders/7')
    assert call_args['request']['headers']['x_trace'] == 'me'
    assert response['response']['status_code'] == 404
    assert response['response_status'] == 'success'
