"""An integration test of several services, with its scope narrowed.

The toy shop of the ACME Corporation: ``AcmeShopService`` takes orders and
relies on ``StockService``, ``InvoiceService`` and ``PaymentService``. The
services are deliberately minimal; what matters is the test at the end. It
runs three of the four services for real, over RabbitMQ, and keeps the
parts that are out of its scope from acting:

- ``replace_dependencies`` swaps the shop's event dispatcher and its proxy
  to the payment service for mocks, so no payment service has to run and
  no event reaches anyone;
- ``restrict_entrypoints`` leaves the stock service only the two RPC
  methods the shop calls: its timer never fires and its event handler
  never consumes.
"""

import threading
from collections import defaultdict

import pytest

from threadko.events import EventDispatcher, event_handler
from threadko.exceptions import RemoteError
from threadko.extensions import DependencyProvider
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.rpc import ServiceRpcProxy
from threadko.testing.services import (
    replace_dependencies, restrict_entrypoints,
)
from threadko.testing.utils import get_container
from threadko.timer import timer


class NotLoggedInError(Exception):
    pass


class ItemOutOfStockError(Exception):
    pass


class ItemDoesNotExistError(Exception):
    pass


class ShoppingBasket(DependencyProvider):
    """The basket of the user whose ``user_id`` came with the call."""

    def setup(self):
        self.lock = threading.Lock()  # workers run in parallel
        self.baskets = defaultdict(list)

    def get_dependency(self, worker_ctx):
        try:
            user_id = worker_ctx.data["user_id"]
        except KeyError:
            raise NotLoggedInError()
        provider = self

        class Basket:
            def add(self, item):
                with provider.lock:
                    provider.baskets[user_id].append(item)

            def __iter__(self):
                with provider.lock:
                    return iter(list(provider.baskets[user_id]))

        return Basket()


class AcmeShopService:
    name = "acmeshopservice"

    user_basket = ShoppingBasket()
    stock_rpc = RpcProxy("stockservice")
    invoice_rpc = RpcProxy("invoiceservice")
    payment_rpc = RpcProxy("paymentservice")

    fire_event = EventDispatcher()

    @rpc
    def add_to_basket(self, item_code):
        """Put the item ``item_code`` in the user's basket.

        A toy: two users can both get the last anvil.
        """
        stock_level = self.stock_rpc.check_stock(item_code)
        if stock_level > 0:
            self.user_basket.add(item_code)
            self.fire_event("item_added_to_basket", item_code)
            return item_code

        raise ItemOutOfStockError(item_code)

    @rpc
    def checkout(self):
        """Charge the user for everything in the basket."""
        total_price = sum(self.stock_rpc.check_price(item)
                          for item in self.user_basket)

        invoice = self.invoice_rpc.prepare_invoice(total_price)
        self.payment_rpc.take_payment(invoice)

        # only once the invoice and the payment went through
        self.fire_event("checkout_complete", {
            "invoice": invoice,
            "items": list(self.user_basket),
        })
        return total_price


class Warehouse(DependencyProvider):
    """What the warehouse holds. A toy: a dict is not a database."""

    def setup(self):
        self.database = {
            "anvil": {"price": 100, "stock": 3},
            "dehydrated_boulders": {"price": 999, "stock": 12},
            "invisible_paint": {"price": 10, "stock": 30},
            "toothpicks": {"price": 1, "stock": 0},
        }

    def get_dependency(self, worker_ctx):
        return self.database


class StockService:
    name = "stockservice"

    warehouse = Warehouse()

    @rpc
    def check_price(self, item_code):
        try:
            return self.warehouse[item_code]["price"]
        except KeyError:
            raise ItemDoesNotExistError(item_code)

    @rpc
    def check_stock(self, item_code):
        try:
            return self.warehouse[item_code]["stock"]
        except KeyError:
            raise ItemDoesNotExistError(item_code)

    @rpc
    @timer(interval=100)
    def monitor_stock(self):
        """A costly periodic stock check (also callable over RPC), which
        the integration test has no business running."""
        raise NotImplementedError()

    @event_handler("acmeshopservice", "checkout_complete")
    def dispatch_items(self, event_data):
        """Ships the items of a completed checkout; costly too, and out of
        the test's scope."""
        raise NotImplementedError()


class AddressBook(DependencyProvider):
    """The details of the user whose ``user_id`` came with the call."""

    def setup(self):
        self.address_book = {
            "wile_e_coyote": {
                "username": "wile_e_coyote",
                "fullname": "Wile E Coyote",
                "address": "12 Long Road, High Cliffs, Utah",
            },
        }

    def get_dependency(self, worker_ctx):
        def get_user_details():
            try:
                user_id = worker_ctx.data["user_id"]
            except KeyError:
                raise NotLoggedInError()
            return self.address_book.get(user_id)
        return get_user_details


class InvoiceService:
    name = "invoiceservice"

    get_user_details = AddressBook()

    @rpc
    def prepare_invoice(self, amount):
        """An invoice of ``amount`` for the calling user."""
        user = self.get_user_details()
        return {
            "message": "Dear {}. Please pay ${} to ACME Corp.".format(
                user["fullname"], amount),
            "amount": amount,
            "customer": user["username"],
            "address": user["address"],
        }


class PaymentService:
    name = "paymentservice"

    @rpc
    def take_payment(self, invoice):
        """Charges the customer; the test replaces it."""
        raise NotImplementedError()


# -- the test ----------------------------------------------------------------

@pytest.fixture
def rpc_proxy_factory(rabbit_config):
    """Makes started standalone RPC proxies, and stops them after the test.
    """
    proxies = []

    def make_proxy(service_name, **kwargs):
        proxy = ServiceRpcProxy(service_name, rabbit_config, **kwargs)
        proxies.append(proxy)
        return proxy.start()

    yield make_proxy

    for proxy in proxies:
        proxy.stop()


def test_shop_checkout_integration(
        rabbit_config, runner_factory, rpc_proxy_factory):
    """A checkout, through the shop, stock and invoice services.

    The payment service does not run: the shop's proxy to it is a mock, and
    so is its event dispatcher. The stock service keeps only the two RPC
    methods the shop uses.
    """
    context_data = {"user_id": "wile_e_coyote"}
    shop = rpc_proxy_factory(
        "acmeshopservice", context_data=context_data, timeout=10)

    runner = runner_factory(
        rabbit_config, AcmeShopService, StockService, InvoiceService)

    # mocks instead of the shop's `fire_event` and `payment_rpc`
    shop_container = get_container(runner, AcmeShopService)
    fire_event, payment_rpc = replace_dependencies(
        shop_container, "fire_event", "payment_rpc")

    # no timer, no event handler on the stock service
    stock_container = get_container(runner, StockService)
    restrict_entrypoints(stock_container, "check_price", "check_stock")

    runner.start()

    assert shop.add_to_basket("anvil") == "anvil"
    assert shop.add_to_basket("invisible_paint") == "invisible_paint"

    # out of stock: the shop's error reaches the caller
    with pytest.raises(RemoteError) as exc_info:
        shop.add_to_basket("toothpicks")
    assert exc_info.value.exc_type == "ItemOutOfStockError"

    # what the payment service would answer
    payment_rpc.take_payment.return_value = "Payment complete."

    total_amount = 100 + 10
    assert shop.checkout() == total_amount

    # the shop asked for the payment of the invoice made for this user
    payment_rpc.take_payment.assert_called_once_with({
        "customer": "wile_e_coyote",
        "address": "12 Long Road, High Cliffs, Utah",
        "amount": total_amount,
        "message": "Dear Wile E Coyote. Please pay $110 to ACME Corp.",
    })

    # two items added, one checkout
    assert fire_event.call_count == 3
