"""Float values in AMQP field tables (message headers), which pika gets
wrong.

pika (1.4 at least; pika issue #599) decodes the ``f`` and ``d`` field types
as *integers*, and refuses to encode floats at all. Nameko (py-amqp) sends
float context data as doubles, so without this a ``1.5`` from a Nameko
caller arrives as ``1``, and a float in threadko's context data cannot be
sent on.

pika offers no hook for this: its table codec looks ``encode_value`` and
``decode_value`` up in :mod:`pika.data` on every call. :func:`install`
wraps those two functions, once per process, to read ``f``/``d`` as floats
and write floats as ``d``; every other type goes to pika's own code. Other
pika users in the process get floats too where they got truncated integers
or an exception before.
"""

import struct

import pika.data

_INSTALLED_MARK = '_threadko_floats'


def install():
    """Make pika encode and decode float field values (idempotent)."""
    if getattr(pika.data, _INSTALLED_MARK, False):
        return
    pika_encode = pika.data.encode_value
    pika_decode = pika.data.decode_value

    def encode_value(pieces, value):
        if isinstance(value, float):
            pieces.append(struct.pack('>cd', b'd', value))
            return 9
        return pika_encode(pieces, value)

    def decode_value(encoded, offset):
        kind = encoded[offset:offset + 1]
        if kind == b'd':
            return struct.unpack_from('>d', encoded, offset + 1)[0], offset + 9
        if kind == b'f':
            return struct.unpack_from('>f', encoded, offset + 1)[0], offset + 5
        return pika_decode(encoded, offset)

    pika.data.encode_value = encode_value
    pika.data.decode_value = decode_value
    setattr(pika.data, _INSTALLED_MARK, True)
