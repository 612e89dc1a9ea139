"""Context data <-> AMQP message headers, as Nameko puts them on the wire.

Every context key travels as a header named ``nameko.<key>``; keys whose
value is ``None`` are not sent. On the way in every header becomes context
data: ``nameko.`` is stripped, other headers keep their raw names.
"""

from threadko.constants import HEADER_PREFIX


def _field_value(value):
    """``value`` in a form pika can put in a header table."""
    # AMQP field tables have arrays but no tuples
    if isinstance(value, (tuple, list)):
        return [_field_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _field_value(item) for key, item in value.items()}
    return value


def field_table(headers):
    """``headers`` with every value converted by the rules above."""
    return {key: _field_value(value) for key, value in headers.items()}


def encode_to_headers(context_data, prefix=HEADER_PREFIX):
    """Return the message headers carrying ``context_data``."""
    return {
        '{}.{}'.format(prefix, key): _field_value(value)
        for key, value in context_data.items()
        if value is not None
    }


def decode_from_headers(headers, prefix=HEADER_PREFIX):
    """Return the context data carried by message ``headers``."""
    if not headers:
        return {}
    start = len(prefix) + 1
    marker = prefix + '.'
    return {
        (key[start:] if key.startswith(marker) else key): value
        for key, value in headers.items()
    }
