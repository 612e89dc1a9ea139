"""Serializers for message bodies: a registry keyed by name and content type.

Built in: ``json`` (the default), ``yaml``, ``pickle`` and, when the
``msgpack`` package is installed, ``msgpack`` -- with the content types
kombu (and so Nameko) uses for them. More come from the ``SERIALIZERS``
config key: ``{name: {encoder: dotted.path, decoder: dotted.path,
content_type: ..., content_encoding: ...}}``.

A consumer decodes only the content types of the serializers named in
``ACCEPT`` (default: ``[serializer]``); anything else is refused with
:class:`ContentDisallowed`, so ``pickle`` is never decoded unless asked for.
"""

import base64
import copy
import datetime
import decimal
import json
import pickle
import uuid
from collections import namedtuple

import yaml

from threadko.constants import (
    ACCEPT_CONFIG_KEY, DEFAULT_SERIALIZER, SERIALIZER_CONFIG_KEY,
    SERIALIZERS_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError
from threadko.utils import import_from_path

Serializer = namedtuple(
    'Serializer', 'name content_type content_encoding encoder decoder')

# text encodings are decoded to ``str`` before the decoder runs (as kombu
# does); these mean "hand the decoder the raw bytes"
BINARY_ENCODINGS = frozenset(['binary', 'ascii-8bit'])


class ContentDisallowed(Exception):
    """A message's content type is not among the accepted ones."""


class DecodeError(Exception):
    """A message body could not be decoded with its content type."""


class EncodeError(Exception):
    """A value could not be encoded with the chosen serializer."""


class _JSONEncoder(json.JSONEncoder):
    # the same extra types kombu's JSON encoder (up to 5.2) accepts, in the
    # same plain-string form, which every Nameko version can decode
    def default(self, o):
        if isinstance(o, datetime.date):
            if not isinstance(o, datetime.datetime):
                o = datetime.datetime(o.year, o.month, o.day)  # midnight
            text = o.isoformat()
            return text[:-6] + 'Z' if text.endswith('+00:00') else text
        if isinstance(o, datetime.time):
            return o.isoformat()
        if isinstance(o, (uuid.UUID, decimal.Decimal)):
            return str(o)
        if hasattr(o, '__json__'):
            return o.__json__()
        return super().default(o)


# kombu >= 5.3 (Nameko on a newer kombu) sends these as
# {"__type__": name, "__value__": value}; turn them back into values
_TAGGED_DECODERS = {
    'datetime': datetime.datetime.fromisoformat,
    'date': datetime.date.fromisoformat,
    'time': datetime.time.fromisoformat,
    'decimal': decimal.Decimal,
    'uuid': lambda value: uuid.UUID(value['hex']),
    'bytes': lambda value: value.encode('utf-8'),
    'base64': lambda value: base64.b64decode(value),
}


def _decode_tagged(obj):
    if obj.keys() == {'__type__', '__value__'}:
        decoder = _TAGGED_DECODERS.get(obj['__type__'])
        if decoder is not None:
            return decoder(obj['__value__'])
    return obj


# json.dumps/loads with options build a new encoder/decoder per call,
# which shows on the RPC hot path: one of each is made once, below
def json_dumps(value):
    return _json_encoder.encode(value)


def json_loads(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode('utf-8')
    return _json_decoder.decode(data)


_json_encoder = _JSONEncoder()
_json_decoder = json.JSONDecoder(object_hook=_decode_tagged)


def _yaml_dumps(value):
    return yaml.safe_dump(value)


def _pickle_dumps(value):
    return pickle.dumps(value, protocol=pickle.DEFAULT_PROTOCOL)


registry = {}
_by_content_type = {}


def register(name, encoder, decoder, content_type,
             content_encoding='utf-8'):
    """Register a serializer under ``name`` (replacing one of that name)."""
    serializer = Serializer(
        name, content_type, content_encoding, encoder, decoder)
    registry[name] = serializer
    _by_content_type[content_type] = serializer


register('json', json_dumps, json_loads, 'application/json')
register('yaml', _yaml_dumps, yaml.safe_load, 'application/x-yaml')
register('pickle', _pickle_dumps, pickle.loads,
         'application/x-python-serialize', 'binary')
try:
    import msgpack
except ImportError:  # optional, as in kombu
    pass
else:
    register('msgpack', msgpack.packb, msgpack.unpackb,
             'application/x-msgpack', 'binary')


def setup(config):
    """Register the config's custom serializers and return
    ``(serializer, accept)``; raise
    :class:`~threadko.exceptions.ConfigurationError` for unknown names."""
    serializers = copy.deepcopy(config.get(SERIALIZERS_CONFIG_KEY) or {})
    for name, kwargs in serializers.items():
        try:
            encoder = import_from_path(kwargs.pop('encoder'))
            decoder = import_from_path(kwargs.pop('decoder'))
        except (KeyError, ImportError) as exc:
            raise ConfigurationError(
                'Serializer "{}" needs importable `encoder` and `decoder` '
                'paths: {}'.format(name, exc))
        register(name, encoder=encoder, decoder=decoder, **kwargs)

    serializer = config.get(SERIALIZER_CONFIG_KEY) or DEFAULT_SERIALIZER
    accept = config.get(ACCEPT_CONFIG_KEY) or [serializer]

    for name in [serializer] + list(accept):
        if name not in registry:
            raise ConfigurationError(
                'Please register a serializer for "{}" format'.format(name))
    return serializer, list(accept)


def accepted_content_types(accept):
    """The content types of the serializers named in ``accept``."""
    return frozenset(registry[name].content_type for name in accept)


def encode(value, serializer=DEFAULT_SERIALIZER):
    """Encode ``value``; return ``(body_bytes, content_type,
    content_encoding)``. Raises :class:`EncodeError`."""
    codec = registry[serializer]
    try:
        body = codec.encoder(value)
    except Exception as exc:
        raise EncodeError(
            'Cannot encode {!r} as {}: {}'.format(value, serializer, exc))
    if isinstance(body, str):
        body = body.encode(
            'utf-8' if codec.content_encoding in BINARY_ENCODINGS
            else codec.content_encoding)
    return body, codec.content_type, codec.content_encoding


def serializer_for(content_type):
    """The serializer registered for ``content_type``, or ``None``."""
    return _by_content_type.get(content_type)


def decode(body, content_type, content_encoding, accept):
    """Decode a message body.

    :param accept: a set of accepted content types
        (see :func:`accepted_content_types`)
    :raises ContentDisallowed: missing or unaccepted content type
    :raises DecodeError: the body is not valid for its content type
    """
    if not content_type:
        raise ContentDisallowed(
            'message has no content_type; publishers must set it')
    if content_type not in accept:
        raise ContentDisallowed(
            'content type {!r} is not accepted (accepted: {}); add its '
            'serializer to the ACCEPT config key'.format(
                content_type, ', '.join(sorted(accept))))
    codec = _by_content_type[content_type]
    encoding = content_encoding or codec.content_encoding
    try:
        if encoding not in BINARY_ENCODINGS:
            body = bytes(body).decode(encoding)
        return codec.decoder(body)
    except Exception as exc:
        raise DecodeError(
            'Cannot decode {} body: {}'.format(content_type, exc))
