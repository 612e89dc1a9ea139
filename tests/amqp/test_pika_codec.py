"""Float header values survive pika in both directions (pika decodes them as
integers and cannot encode them on its own; threadko.amqp fixes both)."""

import struct

import pika
import pika.data
import pytest

import threadko.amqp  # noqa: F401  (installs the fix)
from threadko.amqp import pika_codec

TABLE = {
    'ratio': 1.5,
    'pi': 3.141592653589793,
    'tiny': -2.5e-300,
    'nested': {'weights': [0.25, 2, 'x', 0.125]},
    'count': 7,
    'text': 'plain',
    'flag': True,
}


def roundtrip(table):
    pieces = []
    pika.data.encode_table(pieces, table)
    decoded, _ = pika.data.decode_table(b''.join(pieces), 0)
    return decoded


def test_floats_roundtrip_exactly_as_doubles():
    decoded = roundtrip(TABLE)
    assert decoded == TABLE
    assert type(decoded['ratio']) is float
    assert type(decoded['nested']['weights'][0]) is float


def test_a_float_is_written_as_an_amqp_double():
    pieces = []
    pika.data.encode_value(pieces, 1.5)
    assert b''.join(pieces) == b'd' + struct.pack('>d', 1.5)


def test_single_precision_floats_from_other_clients_decode_as_floats():
    encoded = b'f' + struct.pack('>f', 0.75)
    assert pika.data.decode_value(encoded, 0) == (0.75, 5)


def test_install_is_idempotent():
    encode = pika.data.encode_value
    pika_codec.install()
    assert pika.data.encode_value is encode


@pytest.mark.rabbit
def test_float_headers_cross_rabbitmq(rabbit_config):
    connection = pika.BlockingConnection(
        pika.URLParameters(rabbit_config['AMQP_URI']))
    try:
        channel = connection.channel()
        queue = channel.queue_declare('', exclusive=True).method.queue
        channel.basic_publish('', queue, b'',
                              pika.BasicProperties(headers=TABLE))
        method, properties, _ = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        assert properties.headers == TABLE
    finally:
        connection.close()
