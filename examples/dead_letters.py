"""Keeping the messages a service cannot decode (docs/messaging.rst).

threadko rejects an undecodable message without requeueing it. The
``orders`` queue names a dead-letter exchange, so RabbitMQ moves such a
message to ``orders-parked`` instead of dropping it. (The embedded
``memory://`` broker does not dead-letter.)

Nothing in the service consumes ``orders-parked``: the messages there are
as undecodable as before, so a consumer in a threadko service would reject
them once more, and lose them. Read them with the management UI or a tool
of your own.
"""

from threadko.messaging import Exchange, Publisher, Queue, consume

dead_letters = Exchange("orders-dlx", type="fanout")
parked = Queue("orders-parked", exchange=dead_letters)
orders = Queue(
    "orders", exchange=Exchange("orders"), routing_key="new",
    queue_arguments={"x-dead-letter-exchange": "orders-dlx"})


class Fulfilment:
    name = "fulfilment"

    # never publishes: it declares orders-parked when the service starts,
    # so the dead letters have a queue to go to
    parking = Publisher(exchange=dead_letters, declare=[parked])

    @consume(orders)
    def fulfil(self, order):
        ...
