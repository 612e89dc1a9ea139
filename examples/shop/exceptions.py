"""The errors the shop's services raise on purpose.

Each is registered with :func:`~threadko.exceptions.deserialize_to_instance`,
so an RPC caller gets it back as its own type (``except OutOfStock:``)
rather than as a :class:`~threadko.exceptions.RemoteError`. Its
``status_code`` and ``error_code`` say how :mod:`examples.shop.web`
answers it over HTTP.
"""

from threadko.exceptions import deserialize_to_instance

MAX_SKU_LENGTH = 64  # the width of the sku columns


class ShopError(Exception):
    """Base of the shop's errors: the caller's fault, not a bug."""

    status_code = 400
    error_code = 'BAD_REQUEST'


@deserialize_to_instance
class InvalidRequest(ShopError):
    """A product id or a quantity that makes no sense."""

    error_code = 'INVALID_REQUEST'


@deserialize_to_instance
class OutOfStock(ShopError):
    """Not enough of a product is left; nothing was reserved."""

    status_code = 409
    error_code = 'OUT_OF_STOCK'


@deserialize_to_instance
class OrderNotFound(ShopError):
    """No order has that id."""

    status_code = 404
    error_code = 'ORDER_NOT_FOUND'


def check_item(sku, quantity):
    """Raise :exc:`InvalidRequest` unless ``sku`` is a short non-empty
    string and ``quantity`` a whole number of at least 1 (a negative
    reservation would add stock)."""
    if not isinstance(sku, str) or not 0 < len(sku) <= MAX_SKU_LENGTH:
        raise InvalidRequest(
            'sku must be a string of 1 to {} characters, not {!r}'.format(
                MAX_SKU_LENGTH, sku))
    if isinstance(quantity, bool) or not isinstance(quantity, int) or (
            quantity < 1):
        raise InvalidRequest(
            'quantity must be a whole number of at least 1, not {!r}'.format(
                quantity))
