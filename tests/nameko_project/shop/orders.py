import json
import operator

from nameko.events import EventDispatcher
from nameko.rpc import RpcProxy, rpc
from nameko.web.handlers import http
from nameko_prometheus import PrometheusMetrics
from nameko_sqlalchemy import Database, transaction_retry
from nameko_tracer import Tracer

from shop.exceptions import NotFound, OutOfStock
from shop.models import DeclarativeBase, Order, OrderLine
from shop.reporting import SentryReporter


class OrdersService:
    name = 'orders'

    db = Database(DeclarativeBase)
    stock_rpc = RpcProxy('stock')
    dispatch = EventDispatcher()
    metrics = PrometheusMetrics()
    tracer = Tracer()
    sentry = SentryReporter()

    @rpc(expected_exceptions=OutOfStock)
    def create_order(self, customer, lines):
        """``lines``: ``[{"sku": ..., "quantity": ...}, ...]``. Reserves
        the stock of every line (or none), stores the order, and announces
        it with an ``order_created`` event."""
        reserved = []
        try:
            for line in lines:
                self.stock_rpc.reserve(line['sku'], line['quantity'])
                reserved.append(line)
        except OutOfStock:
            for line in reserved:
                self.stock_rpc.release(line['sku'], line['quantity'])
            raise

        with self.db.get_session() as session:
            order = Order(customer=customer, lines=[
                OrderLine(sku=line['sku'], quantity=line['quantity'])
                for line in lines])
            session.add(order)
            session.flush()
            created = order.to_dict()

        self.dispatch('order_created', created)
        return created

    @rpc(expected_exceptions=NotFound)
    def get_order(self, order_id):
        order = self.db.session.get(Order, order_id)
        if order is None:
            raise NotFound('order {} does not exist'.format(order_id))
        return order.to_dict()

    @rpc
    @transaction_retry(session=operator.attrgetter('db.session'))
    def list_orders(self, customer):
        orders = self.db.session.query(Order).filter_by(
            customer=customer).order_by(Order.id)
        return [order.to_dict() for order in orders]

    @http('GET', '/orders/<int:order_id>')
    def get_order_http(self, request, order_id):
        try:
            return json.dumps(self.get_order(order_id))
        except NotFound as exc:
            return 404, json.dumps({'error': str(exc)})

    @http('GET', '/metrics')
    def expose_metrics(self, request):
        return self.metrics.expose_metrics(request)
