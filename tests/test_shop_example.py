"""The shop example (examples/shop, docs/tutorial.rst): concurrent orders
never oversell, on SQLite and on a real MariaDB server through MySQLdb;
the tutorial's commands work; the example's own tests pass.

The MariaDB server is started for this module (bench/databases.py) on a
unix socket in a temporary directory. ``scripts/test`` installs it (and
``mysqlclient``); when it cannot be installed or started these tests fail,
unless ``THREADKO_TEST_SKIP_MARIADB=1`` says to skip them.
"""

import http.client
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from urllib.parse import urlencode

import pytest

from support import ChildProcess

from threadko.standalone.rpc import ClusterRpcProxy
from threadko.testing.utils import (
    assert_stops_raising, find_free_port, get_container, get_extension,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# examples and bench are imported, and `pytest` run as a script (tox) does
# not put the repository root on sys.path as `python -m pytest` does
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.shop.database import Database, connect  # noqa: E402
from examples.shop.exceptions import OutOfStock  # noqa: E402
from examples.shop.inventory import InventoryService  # noqa: E402
from examples.shop.orders import OrdersService  # noqa: E402
from examples.shop.web import JsonHttpRequestHandler  # noqa: E402

SKIP_MARIADB_ENV = 'THREADKO_TEST_SKIP_MARIADB'
WAIT = 30  # seconds for anything that must happen
ORDERS = 200
CLIENTS = 20
INITIAL_STOCK = 150  # well below the ~400 the orders ask for


def child_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED='1', **extra)
    env.pop('PYTHONWARNINGS', None)
    return env


# -- databases ----------------------------------------------------------------

@pytest.fixture(scope='module')
def mariadb_server():
    """A MariaDB server of this module's own; fails the tests that use it
    when it cannot run, unless THREADKO_TEST_SKIP_MARIADB is set."""
    if os.environ.get(SKIP_MARIADB_ENV):
        pytest.skip('{} is set: MariaDB tests skipped'.format(
            SKIP_MARIADB_ENV))
    advice = ('scripts/bootstrap test installs it (or set {}=1 to skip '
              'the MariaDB tests)'.format(SKIP_MARIADB_ENV))
    try:
        importlib.import_module('MySQLdb')
    except ImportError as exc:
        pytest.fail('MySQLdb (the mysqlclient package) is missing: {}; '
                    '{}'.format(exc, advice), pytrace=False)
    from bench.databases import DatabaseError, MariaDB

    workdir = tempfile.mkdtemp(prefix='threadko-shop-', dir='/tmp')
    server = MariaDB(workdir)
    try:
        try:
            server.start()
        except DatabaseError as exc:
            pytest.fail('could not start MariaDB: {}\n{}'.format(
                exc, advice), pytrace=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=[
    'sqlite', pytest.param('mariadb', marks=pytest.mark.slow)])
def database_url(request, tmp_path):
    """A ``DATABASE_URL`` for an empty database: a SQLite file, or the
    MariaDB server's database (emptied again afterwards)."""
    if request.param == 'sqlite':
        yield 'sqlite:///{}'.format(tmp_path / 'shop.db')
        return
    server = request.getfixturevalue('mariadb_server')
    url = 'mysql://{user}:{password}@localhost/{database}?{query}'.format(
        query=urlencode({'unix_socket': server.socket}), **server.dsn)
    yield url
    db = connect(url)
    try:
        db.execute('DROP TABLE IF EXISTS orders, products, reservations')
    finally:
        db.close()


def query(url, sql):
    """The rows of a query, as a list of tuples."""
    db = connect(url)
    try:
        return [tuple(row) for row in db.execute(sql).fetchall()]
    finally:
        db.close()


# -- placing orders from many threads -----------------------------------------

def place_orders(place, count=ORDERS):
    """Call ``place(sku, quantity)`` ``count`` times from CLIENTS threads,
    asking for 1, 2 or 3 in turn; return ``(quantity, order or None)``
    pairs, None for the orders refused as out of stock."""
    def one(n):
        quantity = n % 3 + 1
        return quantity, place('tea', quantity)

    with ThreadPoolExecutor(
            CLIENTS, thread_name_prefix='threadko-test-shop-client') as pool:
        return list(pool.map(one, range(count)))


def through_rpc(rpc):
    def place(sku, quantity):
        try:
            return rpc.orders.place_order(sku, quantity)
        except OutOfStock:
            return None
    return place


def through_http(post):
    """Place orders with ``post(path, payload)``, which returns
    ``(status, JSON body)``."""
    def place(sku, quantity):
        status, body = post('/orders', {'sku': sku, 'quantity': quantity})
        if status == 409:
            assert body['error'] == 'OUT_OF_STOCK'
            return None
        assert status == 201, (status, body)
        return body
    return place


def web_session_post(session):
    def post(path, payload):
        response = session.post(path, json=payload)
        return response.status_code, response.json()
    return post


def alternately(*places):
    """Place the orders through each of ``places`` in turn."""
    count = iter(range(ORDERS * len(places)))

    def place(sku, quantity):
        return places[next(count) % len(places)](sku, quantity)
    return place


def check_no_oversell(outcomes, final_stock, database_url):
    """Every unit sold came out of stock exactly once, nothing more was
    sold than there was, and no order was refused while it could have been
    served; every placed order's reservation was confirmed by its event."""
    placed = [order for _, order in outcomes if order is not None]
    refused = [quantity for quantity, order in outcomes if order is None]
    sold = sum(order['quantity'] for order in placed)

    assert placed and refused
    assert 0 <= final_stock == INITIAL_STOCK - sold
    # stock only goes down: a refusal means less than that was left, ever after
    assert final_stock < min(refused)
    assert len({order['id'] for order in placed}) == len(placed)

    [(count, total)] = query(
        database_url, 'SELECT COUNT(*), SUM(quantity) FROM orders')
    assert (count, int(total)) == (len(placed), sold)  # MySQL: a Decimal
    expected = sorted((order['reservation_id'], order['id'])
                      for order in placed)

    def all_confirmed():
        # the order_placed events may still be on their way
        assert sorted(query(
            database_url, 'SELECT id, order_id FROM reservations')) == (
            expected)

    assert_stops_raising(all_confirmed, AssertionError, timeout=WAIT)


@pytest.mark.rabbit
def test_concurrent_orders_never_oversell(
        database_url, rabbit_config, web_config, runner_factory,
        web_session):
    config = dict(rabbit_config, DATABASE_URL=database_url, **web_config)
    runner = runner_factory(config, OrdersService, InventoryService)
    runner.start()

    with ClusterRpcProxy(rabbit_config, timeout=WAIT) as rpc:
        assert rpc.inventory.add_stock('tea', INITIAL_STOCK) == INITIAL_STOCK
        # one proxy shared by all the client threads
        outcomes = place_orders(alternately(
            through_rpc(rpc), through_http(web_session_post(web_session))))
        final_stock = rpc.inventory.get_stock('tea')

    check_no_oversell(outcomes, final_stock, database_url)
    for service_cls in (OrdersService, InventoryService):
        pool = get_extension(get_container(runner, service_cls), Database).pool
        # several workers held a connection at the same moment
        assert pool.peak_in_use > 1, service_cls


# -- the tutorial's commands --------------------------------------------------

def http_call(address, method, path, payload=None):
    """``(status, JSON body)`` of a request to ``address``."""
    host, port = address.rsplit(':', 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        body = None if payload is None else json.dumps(payload)
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def run_services(tmp_path):
    """Start ``threadko run SERVICES --config examples/shop/config.yaml``
    from the repository root with extra environment variables; every one
    is stopped at teardown."""
    processes = []

    def run(*services, **env):
        process = ChildProcess(
            [sys.executable, '-m', 'threadko', 'run', *services,
             '--config', 'examples/shop/config.yaml'],
            ROOT, child_env(**env), timeout=WAIT)
        processes.append(process)
        return process

    yield run
    for process in processes:
        process.close()


def stop(process):
    """SIGTERM, as systemd or docker stop send: a graceful stop."""
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 0, process.output
    assert 'services stopped' in process.output


def test_tutorial_one_process_on_the_embedded_broker(run_services, tmp_path):
    """Both services in one process, on memory://, called as the
    tutorial's curl commands call them."""
    address = '127.0.0.1:{}'.format(find_free_port())
    shop = run_services(
        'examples.shop.orders', 'examples.shop.inventory',
        DATABASE_URL='sqlite:///{}'.format(tmp_path / 'shop.db'),
        WEB_SERVER_ADDRESS=address)
    shop.wait_for_line('running services: orders, inventory')

    assert http_call(address, 'POST', '/stock/tea', {'quantity': 10}) == (
        200, {'sku': 'tea', 'stock': 10})
    order = {'id': 1, 'sku': 'tea', 'quantity': 2, 'reservation_id': 1}
    assert http_call(address, 'POST', '/orders',
                     {'sku': 'tea', 'quantity': 2}) == (201, order)
    assert http_call(address, 'GET', '/orders/1') == (200, order)
    assert http_call(address, 'POST', '/orders',
                     {'sku': 'tea', 'quantity': 9}) == (
        409, {'error': 'OUT_OF_STOCK',
              'message': "fewer than 9 'tea' in stock"})
    assert http_call(address, 'GET', '/stock/tea') == (
        200, {'sku': 'tea', 'stock': 8})
    assert http_call(address, 'GET', '/orders/9') == (
        404, {'error': 'ORDER_NOT_FOUND', 'message': 'no order 9'})
    status, body = http_call(address, 'POST', '/orders', 'not an object')
    assert (status, body['error']) == (400, 'INVALID_REQUEST')
    stop(shop)


@pytest.mark.rabbit
@pytest.mark.slow
def test_tutorial_deployment_one_inventory_two_orders_processes(
        run_services, database_url, rabbit_config):
    """As deployed: each service in processes of its own on RabbitMQ,
    orders twice over, sharing one database; concurrent orders through
    both orders processes never oversell; SIGTERM stops each cleanly."""
    amqp_uri = rabbit_config['AMQP_URI']
    addresses = ['127.0.0.1:{}'.format(find_free_port()) for _ in range(3)]
    processes = [
        run_services(module, AMQP_URI=amqp_uri, DATABASE_URL=database_url,
                     WEB_SERVER_ADDRESS=address)
        for module, address in zip(
            ['examples.shop.inventory', 'examples.shop.orders',
             'examples.shop.orders'], addresses)]
    for process in processes:
        process.wait_for_line('running services')

    assert http_call(addresses[0], 'POST', '/stock/tea',
                     {'quantity': INITIAL_STOCK}) == (
        200, {'sku': 'tea', 'stock': INITIAL_STOCK})

    outcomes = place_orders(alternately(
        through_http(partial(http_call, addresses[1], 'POST')),
        through_http(partial(http_call, addresses[2], 'POST'))))
    status, body = http_call(addresses[0], 'GET', '/stock/tea')
    check_no_oversell(outcomes, body['stock'], database_url)

    for process in processes:
        stop(process)


def test_shop_errors_are_answered_in_json_and_others_as_threadko_does():
    handler = JsonHttpRequestHandler('GET', '/')

    response = handler.response_from_exception(OutOfStock('none left'))
    assert response.status_code == 409
    assert response.mimetype == 'application/json'
    assert json.loads(response.get_data()) == {
        'error': 'OUT_OF_STOCK', 'message': 'none left'}

    response = handler.response_from_exception(KeyError('bug'))
    assert response.status_code == 500
    assert response.get_data(as_text=True) == "Error: KeyError: 'bug'\n"


# -- the example's own tests --------------------------------------------------

def test_the_example_tests_pass():
    """``python -m pytest examples/shop/test_shop.py``, as the tutorial
    shows it."""
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', 'examples/shop/test_shop.py',
         '-q', '-p', 'no:cacheprovider'],
        cwd=ROOT, env=child_env(), capture_output=True, text=True,
        timeout=WAIT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '3 passed' in result.stdout
