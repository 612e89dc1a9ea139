from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class OutOfStock(Exception):
    """Raised by stock.reserve, and by orders.create_order in turn: callers
    get an instance of this class, not a RemoteError."""


@deserialize_to_instance
class NotFound(Exception):
    pass
