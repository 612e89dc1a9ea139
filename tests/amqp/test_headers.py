"""Context data <-> AMQP headers (wire protocol §3.1, §3.2)."""

import pika
import pytest

from threadko.amqp import memory
from threadko.amqp.headers import decode_from_headers, encode_to_headers


def test_encode_prefixes_every_key():
    headers = encode_to_headers({
        'call_id_stack': ['svc.method.1'], 'language': 'en', 'custom': 3})
    assert headers == {
        'nameko.call_id_stack': ['svc.method.1'],
        'nameko.language': 'en',
        'nameko.custom': 3,
    }


def test_encode_drops_none_values_only():
    headers = encode_to_headers({
        'user_id': None, 'auth_token': '', 'count': 0, 'flag': False})
    assert headers == {
        'nameko.auth_token': '', 'nameko.count': 0, 'nameko.flag': False}


def test_encode_turns_tuples_into_lists_also_nested():
    headers = encode_to_headers({
        'stack': ('a', 'b'),
        'nested': {'pair': (1, (2, 3)), 'items': [(4, 5)]},
    })
    assert headers == {
        'nameko.stack': ['a', 'b'],
        'nameko.nested': {'pair': [1, [2, 3]], 'items': [[4, 5]]},
    }
    assert type(headers['nameko.stack']) is list
    assert type(headers['nameko.nested']['pair'][1]) is list


def test_encode_does_not_change_the_context_data():
    context = {'stack': ('a',), 'nested': {'x': (1,)}}
    encode_to_headers(context)
    assert context == {'stack': ('a',), 'nested': {'x': (1,)}}


def test_encode_empty():
    assert encode_to_headers({}) == {}


def test_decode_strips_the_prefix():
    assert decode_from_headers({
        'nameko.call_id_stack': ['a.b.c'], 'nameko.language': 'en',
    }) == {'call_id_stack': ['a.b.c'], 'language': 'en'}


def test_decode_keeps_foreign_headers_under_their_raw_name():
    decoded = decode_from_headers({
        'x-death': [{'count': 1}],
        'compression': 'application/x-gzip',
        'nameko': 'no dot, so not prefixed',
        'namekoish.key': 1,
        'nameko.user_id': 'u1',
    })
    assert decoded == {
        'x-death': [{'count': 1}],
        'compression': 'application/x-gzip',
        'nameko': 'no dot, so not prefixed',
        'namekoish.key': 1,
        'user_id': 'u1',
    }


@pytest.mark.parametrize('headers', [None, {}])
def test_decode_no_headers(headers):
    assert decode_from_headers(headers) == {}


def _publish_and_get(vhost, headers):
    connection = memory.connect(vhost)
    try:
        channel = connection.channel()
        channel.queue_declare('headers-round-trip')
        channel.basic_publish(
            '', 'headers-round-trip', b'{}',
            pika.BasicProperties(headers=headers))
        _, properties, _ = channel.basic_get(
            'headers-round-trip', auto_ack=True)
    finally:
        connection.close()
    return properties.headers


def test_round_trip_through_the_broker(memory_config):
    context = {
        'call_id_stack': ('svc.method.1', 'other.method.2'),
        'language': 'en-gb',
        'user_id': None,
        'attempt': 3,
        'flag': True,
        'nested': {'ids': (1, 2), 'name': 'x'},
    }
    headers = _publish_and_get(
        memory_config['vhost'], encode_to_headers(context))
    assert decode_from_headers(headers) == {
        'call_id_stack': ['svc.method.1', 'other.method.2'],
        'language': 'en-gb',
        'attempt': 3,
        'flag': True,
        'nested': {'ids': [1, 2], 'name': 'x'},
    }


def test_float_context_values_can_be_published(memory_config):
    # Nameko (py-amqp) sends floats as doubles; context data received from
    # a Nameko service is re-emitted on every onward publish (§3.2)
    headers = _publish_and_get(
        memory_config['vhost'], encode_to_headers({'score': 0.5}))
    assert decode_from_headers(headers) == {'score': 0.5}
