"""Clients for code that is not a service: RPC calls and event dispatch."""

from threadko.config_validation import validate_config
from threadko.configuration import config as global_config
from threadko.constants import (
    AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY,
)

# Nameko 3 keyword options that select another broker
_CONNECTION_OPTIONS = {
    'uri': AMQP_URI_CONFIG_KEY,
    'ssl': AMQP_SSL_CONFIG_KEY,
    'login_method': LOGIN_METHOD_CONFIG_KEY,
}


def client_config(config, options):
    """The config a standalone client uses: ``config`` (default: the global
    :data:`threadko.config`) with Nameko 3's connection options ``uri``,
    ``ssl`` and ``login_method`` popped from ``options`` and applied.

    :raises ~threadko.exceptions.ConfigurationError: a value in it is
        invalid (see :func:`~threadko.config_validation.validate_config`)
    """
    config = global_config if config is None else config
    overrides = {key: options.pop(option)
                 for option, key in _CONNECTION_OPTIONS.items()
                 if option in options}
    config = dict(config, **overrides)
    validate_config(config)
    return config
