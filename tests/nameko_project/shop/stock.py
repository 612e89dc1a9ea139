from nameko.events import event_handler
from nameko.rpc import rpc
from nameko_redis import Redis
from nameko_tracer import Tracer

from shop.exceptions import OutOfStock

STOCK = 'stock'  # hash: sku -> units available
SOLD = 'sold'    # hash: sku -> units in orders
ORDERS = 'orders-created'

# take `quantity` units of a sku, atomically, or none if fewer are left
RESERVE = """
local left = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local wanted = tonumber(ARGV[2])
if left < wanted then
    return -1
end
return redis.call('HINCRBY', KEYS[1], ARGV[1], -wanted)
"""


class StockService:
    name = 'stock'

    redis = Redis('stock')
    tracer = Tracer()

    @rpc
    def add_stock(self, sku, quantity):
        return self.redis.hincrby(STOCK, sku, quantity)

    @rpc
    def get_level(self, sku):
        return int(self.redis.hget(STOCK, sku) or 0)

    @rpc(expected_exceptions=OutOfStock)
    def reserve(self, sku, quantity):
        left = self.redis.eval(RESERVE, 1, STOCK, sku, quantity)
        if left < 0:
            raise OutOfStock('{} units of {} wanted, {} left'.format(
                quantity, sku, self.get_level(sku)))
        return left

    @rpc
    def release(self, sku, quantity):
        return self.redis.hincrby(STOCK, sku, quantity)

    @event_handler('orders', 'order_created')
    def record_sale(self, order):
        pipe = self.redis.pipeline()
        pipe.incr(ORDERS)
        for line in order['lines']:
            pipe.hincrby(SOLD, line['sku'], line['quantity'])
        pipe.execute()

    @rpc
    def sales(self):
        return {
            'orders': int(self.redis.get(ORDERS) or 0),
            'sold': {sku: int(count)
                     for sku, count in self.redis.hgetall(SOLD).items()},
        }
