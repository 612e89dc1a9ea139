"""Serializer registry: JSON by default, more through the ``SERIALIZERS``
config key (``{name: {encoder: dotted.path, decoder: dotted.path,
content_type: ..., content_encoding: ...}}``)."""

import copy
import datetime
import decimal
import json
import uuid
from collections import namedtuple

from threadko.constants import (
    ACCEPT_CONFIG_KEY, DEFAULT_SERIALIZER, SERIALIZER_CONFIG_KEY,
    SERIALIZERS_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError
from threadko.utils import import_from_path

Serializer = namedtuple(
    'Serializer', 'name content_type content_encoding encoder decoder')


class _JSONEncoder(json.JSONEncoder):
    # the same extra types kombu's JSON encoder (used by Nameko) accepts
    def default(self, o):
        if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
            return o.isoformat()
        if isinstance(o, (uuid.UUID, decimal.Decimal)):
            return str(o)
        return super().default(o)


def json_dumps(value):
    return json.dumps(value, cls=_JSONEncoder)


def json_loads(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode('utf-8')
    return json.loads(data)


registry = {
    'json': Serializer(
        'json', 'application/json', 'utf-8', json_dumps, json_loads),
}


def register(name, encoder, decoder, content_type,
             content_encoding='utf-8'):
    """Register a serializer under ``name``."""
    registry[name] = Serializer(
        name, content_type, content_encoding, encoder, decoder)


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

    serializer = config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER)
    accept = config.get(ACCEPT_CONFIG_KEY, [serializer])

    for name in [serializer] + list(accept):
        if name not in registry:
            raise ConfigurationError(
                'Please register a serializer for "{}" format'.format(name))
    return serializer, accept
