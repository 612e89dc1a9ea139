"""nameko-prometheus: the orders service's metrics, scraped over HTTP as
Prometheus would."""

import platform
import time

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client.parser import text_string_to_metric_families

from shop.exceptions import OutOfStock
from shop.orders import OrdersService
from shop.stock import StockService


def scrape(web_session):
    response = web_session.get('/metrics')
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'].startswith('text/plain')
    return {family.name: family
            for family in text_string_to_metric_families(response.text)}


def value(families, family, sample, **labels):
    for found in families[family].samples:
        if found.name == sample and found.labels == labels:
            return found.value
    return None


def scrape_until(web_session, family, sample, expected, **labels):
    """A worker's metrics are recorded once its reply is on its way: scrape
    until they are there."""
    deadline = time.monotonic() + 10
    while True:
        families = scrape(web_session)
        if value(families, family, sample, **labels) == expected:
            return families
        assert time.monotonic() < deadline, (
            family, labels, value(families, family, sample, **labels))
        time.sleep(0.05)


def test_metrics_after_some_calls(config, runner_factory, web_session,
                                  redis):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()

    with ClusterRpcProxy(config) as cluster_rpc:
        cluster_rpc.stock.add_stock('apple', 3)
        created = [
            cluster_rpc.orders.create_order(
                'ann', [{'sku': 'apple', 'quantity': 1}])
            for _ in range(2)]
        with pytest.raises(OutOfStock):
            cluster_rpc.orders.create_order(
                'ann', [{'sku': 'apple', 'quantity': 5}])
    last = created[-1]['id']
    assert web_session.get('/orders/{}'.format(last)).status_code == 200
    assert web_session.get('/orders/{}'.format(last + 1)).status_code == 404

    families = scrape_until(
        web_session, 'orders_rpc_requests', 'orders_rpc_requests_total', 3,
        method_name='create_order')
    families = scrape_until(
        web_session, 'orders_http_requests', 'orders_http_requests_total', 1,
        http_method='GET', endpoint='/orders/<int:order_id>',
        status_code='404')

    assert value(families, 'orders_rpc_request_latency_seconds',
                 'orders_rpc_request_latency_seconds_count',
                 method_name='create_order') == 3
    assert value(families, 'orders_service_max_workers',
                 'orders_service_max_workers') == 10
    assert value(families, 'orders_service_running_workers',
                 'orders_service_running_workers') >= 1
    assert value(families, 'orders_http_requests',
                 'orders_http_requests_total', http_method='GET',
                 endpoint='/orders/<int:order_id>', status_code='200') == 1
    assert value(families, 'orders_service_info', 'orders_service_info',
                 service_version='unknown',
                 python_version=platform.python_version()) == 1
    # the stock service has no metrics dependency
    assert not any(name.startswith('stock_') for name in families)

    # the previous scrapes are requests too
    families = scrape(web_session)
    assert value(families, 'orders_http_requests',
                 'orders_http_requests_total', http_method='GET',
                 endpoint='/metrics', status_code='200') >= 2


def test_metrics_of_one_registry_only(config, runner_factory, web_session,
                                      redis):
    runner = runner_factory(config, OrdersService, StockService)
    runner.start()

    # the service's state is recorded when a worker ends: after the first
    # request, say
    assert web_session.get('/metrics').status_code == 200
    response = web_session.get(
        '/metrics', params={'name': 'orders_service_max_workers'},
        headers={'Accept': 'application/openmetrics-text'})
    assert response.status_code == 200
    assert response.headers['Content-Type'].startswith(
        'application/openmetrics-text')
    assert 'orders_service_max_workers 10.0' in response.text
    assert 'orders_rpc_requests_total' not in response.text
