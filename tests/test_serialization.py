"""Serializer registry, encode/decode and ACCEPT (wire protocol §2)."""

import datetime
import decimal
import json
import pickle
import uuid

import pytest
import yaml

from threadko import serialization
from threadko.exceptions import ConfigurationError
from threadko.serialization import (
    ContentDisallowed, DecodeError, EncodeError, accepted_content_types,
    decode, encode,
)

JSON = 'application/json'
ALL = accepted_content_types(['json', 'yaml', 'pickle'])


# a custom serializer, registered by dotted path in the tests below
def custom_encode(value):
    return 'CUSTOM:' + json.dumps(value)


def custom_decode(text):
    assert text.startswith('CUSTOM:')
    return json.loads(text[len('CUSTOM:'):])


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register serializers without leaving them behind."""
    monkeypatch.setattr(serialization, 'registry',
                        dict(serialization.registry))
    monkeypatch.setattr(serialization, '_by_content_type',
                        dict(serialization._by_content_type))


# -- built-in serializers -----------------------------------------------------

PAYLOAD = {'text': 'héllo', 'n': 1, 'f': 1.5, 'items': [1, 'two', None],
           'flag': True, 'nested': {'a': []}}


@pytest.mark.parametrize('name, content_type, content_encoding', [
    ('json', 'application/json', 'utf-8'),
    ('yaml', 'application/x-yaml', 'utf-8'),
    ('pickle', 'application/x-python-serialize', 'binary'),
])
def test_round_trip(name, content_type, content_encoding):
    body, ctype, cencoding = encode(PAYLOAD, name)
    assert isinstance(body, bytes)
    assert (ctype, cencoding) == (content_type, content_encoding)
    assert decode(body, ctype, cencoding, ALL) == PAYLOAD


def test_json_is_the_default():
    body, content_type, content_encoding = encode({'a': (1, 2)})
    assert content_type == JSON and content_encoding == 'utf-8'
    # Python's default separators; tuples become arrays
    assert body == b'{"a": [1, 2]}'


def test_json_body_is_utf8():
    body, _, _ = encode('é')
    assert json.loads(body.decode('utf-8')) == 'é'


def test_yaml_and_pickle_bodies_are_what_other_clients_expect():
    body, _, _ = encode({'a': 1}, 'yaml')
    assert yaml.safe_load(body) == {'a': 1}
    body, _, _ = encode({'a': 1}, 'pickle')
    assert pickle.loads(body) == {'a': 1}


def test_yaml_refuses_arbitrary_objects():
    # safe_dump/safe_load only: no Python object tags either way
    with pytest.raises(EncodeError):
        encode(object(), 'yaml')
    with pytest.raises(DecodeError):
        decode(b'!!python/object/apply:os.getcwd []', 'application/x-yaml',
               'utf-8', ALL)


def test_decode_uses_the_serializers_encoding_when_none_is_given():
    assert decode(b'{"a": "\xc3\xa9"}', JSON, None, ALL) == {'a': 'é'}


def test_decode_honours_content_encoding():
    body = '{"a": "é"}'.encode('latin-1')
    assert decode(body, JSON, 'latin-1', ALL) == {'a': 'é'}


def test_serializer_for_content_type():
    assert serialization.serializer_for(JSON).name == 'json'
    assert serialization.serializer_for('application/x-yaml').name == 'yaml'
    assert serialization.serializer_for('application/x-nothing') is None


# -- JSON extra types ---------------------------------------------------------

def test_datetime_encodes_as_iso_string():
    utc = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000,
                            tzinfo=datetime.timezone.utc)
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    offset = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(
        datetime.timedelta(hours=2)))
    body, _, _ = encode([utc, naive, offset])
    assert json.loads(body) == [
        '2024-01-02T03:04:05.006000Z', '2024-01-02T03:04:05',
        '2024-01-02T03:04:05+02:00']


def test_time_decimal_uuid_encode_as_strings():
    value = uuid.UUID('12345678-1234-5678-1234-567812345678')
    body, _, _ = encode([datetime.time(12, 30), decimal.Decimal('1.50'),
                         value])
    assert json.loads(body) == [
        '12:30:00', '1.50', '12345678-1234-5678-1234-567812345678']


def test_date_encodes_as_midnight_datetime_like_kombu():
    body, _, _ = encode(datetime.date(2024, 1, 2))
    assert json.loads(body) == '2024-01-02T00:00:00'


def test_object_with_json_method():
    class Point:
        def __json__(self):
            return {'x': 1}

    body, _, _ = encode([Point()])
    assert json.loads(body) == [{'x': 1}]


def test_unencodable_value_is_an_encode_error():
    with pytest.raises(EncodeError) as error:
        encode({'value': object()})
    assert 'json' in str(error.value)
    with pytest.raises(EncodeError):
        encode(b'bytes are not JSON')


@pytest.mark.parametrize('tagged, expected', [
    ({'__type__': 'datetime', '__value__': '2024-01-02T03:04:05.000006'},
     datetime.datetime(2024, 1, 2, 3, 4, 5, 6)),
    ({'__type__': 'datetime', '__value__': '2024-01-02T03:04:05+00:00'},
     datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
    ({'__type__': 'date', '__value__': '2024-01-02'},
     datetime.date(2024, 1, 2)),
    ({'__type__': 'time', '__value__': '12:30:00'}, datetime.time(12, 30)),
    ({'__type__': 'decimal', '__value__': '1.50'}, decimal.Decimal('1.50')),
    ({'__type__': 'uuid', '__value__': {
        'hex': '12345678123456781234567812345678', 'version': 4}},
     uuid.UUID('12345678-1234-5678-1234-567812345678')),
    ({'__type__': 'uuid', '__value__': {
        'hex': '12345678123456781234567812345678'}},
     uuid.UUID('12345678-1234-5678-1234-567812345678')),
    ({'__type__': 'bytes', '__value__': 'abc'}, b'abc'),
    ({'__type__': 'base64', '__value__': 'AP+A'}, b'\x00\xff\x80'),
])
def test_kombu_53_tagged_objects_decode(tagged, expected):
    body = json.dumps({'value': tagged, 'list': [tagged]}).encode()
    decoded = decode(body, JSON, 'utf-8', ALL)
    assert decoded == {'value': expected, 'list': [expected]}
    assert type(decoded['value']) is type(expected)


def test_kombu_53_tagged_non_ascii_bytes_decode():
    body = json.dumps({'__type__': 'bytes', '__value__': 'hé'}).encode()
    assert decode(body, JSON, 'utf-8', ALL) == 'hé'.encode('utf-8')


def test_objects_that_only_look_tagged_are_left_alone():
    plain = [
        {'__type__': 'unknown', '__value__': 1},
        {'__type__': 'datetime', '__value__': '2024-01-02', 'more': 1},
        {'__type__': 'datetime'},
    ]
    body = json.dumps(plain).encode()
    assert decode(body, JSON, 'utf-8', ALL) == plain


# -- ACCEPT -------------------------------------------------------------------

def test_accepted_content_types():
    assert accepted_content_types(['json', 'pickle']) == {
        'application/json', 'application/x-python-serialize'}


def test_content_type_not_accepted_is_refused():
    body, content_type, content_encoding = encode({'a': 1}, 'pickle')
    with pytest.raises(ContentDisallowed) as error:
        decode(body, content_type, content_encoding,
               accepted_content_types(['json']))
    message = str(error.value)
    assert 'application/x-python-serialize' in message
    assert 'ACCEPT' in message  # says how to fix it


def test_unknown_content_type_is_refused():
    with pytest.raises(ContentDisallowed):
        decode(b'x', 'text/plain', 'utf-8', ALL)


@pytest.mark.parametrize('content_type', [None, ''])
def test_missing_content_type_is_refused(content_type):
    with pytest.raises(ContentDisallowed) as error:
        decode(b'{}', content_type, 'utf-8', ALL)
    assert 'content_type' in str(error.value)


@pytest.mark.parametrize('body, content_type, encoding', [
    (b'{not json', 'application/json', 'utf-8'),
    (b'\xff\xfe', 'application/json', 'utf-8'),
    (b'not a pickle', 'application/x-python-serialize', 'binary'),
    (b'a: [unclosed', 'application/x-yaml', 'utf-8'),
])
def test_invalid_body_is_a_decode_error(body, content_type, encoding):
    with pytest.raises(DecodeError):
        decode(body, content_type, encoding, ALL)


# -- setup(config) -----------------------------------------------------------

def test_setup_defaults():
    assert serialization.setup({}) == ('json', ['json'])


def test_setup_accept_defaults_to_the_serializer():
    assert serialization.setup({'serializer': 'yaml'}) == ('yaml', ['yaml'])


def test_setup_with_accept():
    assert serialization.setup(
        {'serializer': 'yaml', 'ACCEPT': ['json', 'yaml']}) == (
        'yaml', ['json', 'yaml'])


@pytest.mark.parametrize('config', [
    {'serializer': 'x'},
    {'ACCEPT': ['json', 'x']},
])
def test_setup_unknown_name_is_a_configuration_error(config):
    with pytest.raises(ConfigurationError) as error:
        serialization.setup(config)
    assert str(error.value) == 'Please register a serializer for "x" format'


def test_setup_registers_custom_serializers(isolated_registry):
    config = {
        'serializer': 'custom',
        'SERIALIZERS': {'custom': {
            'encoder': __name__ + '.custom_encode',
            'decoder': __name__ + '.custom_decode',
            'content_type': 'application/x-custom',
        }},
    }
    assert serialization.setup(config) == ('custom', ['custom'])

    body, content_type, content_encoding = encode({'a': [1]}, 'custom')
    assert body == b'CUSTOM:{"a": [1]}'
    assert (content_type, content_encoding) == (
        'application/x-custom', 'utf-8')
    accept = accepted_content_types(['custom'])
    assert decode(body, content_type, content_encoding, accept) == {'a': [1]}
    # the config itself is left as it was
    assert config['SERIALIZERS']['custom']['encoder'] == (
        __name__ + '.custom_encode')


def test_setup_custom_binary_serializer(isolated_registry):
    serialization.setup({'SERIALIZERS': {'raw': {
        'encoder': __name__ + '.custom_encode',
        'decoder': 'threadko.serialization.json_loads',
        'content_type': 'application/x-raw',
        'content_encoding': 'binary',
    }}, 'ACCEPT': ['json', 'raw']})
    # binary: the decoder gets the body bytes as they are
    body = b'{"a": 1}'
    assert decode(body, 'application/x-raw', 'binary',
                  accepted_content_types(['raw'])) == {'a': 1}


@pytest.mark.parametrize('entry', [
    {'decoder': __name__ + '.custom_decode', 'content_type': 'a/b'},
    {'encoder': __name__ + '.no_such_function',
     'decoder': __name__ + '.custom_decode', 'content_type': 'a/b'},
])
def test_setup_bad_serializer_paths_are_configuration_errors(
        isolated_registry, entry):
    with pytest.raises(ConfigurationError) as error:
        serialization.setup({'SERIALIZERS': {'broken': entry}})
    assert 'broken' in str(error.value)
