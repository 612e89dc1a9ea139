"""Reading configuration for the command line: YAML files with environment
variable placeholders, ``--define KEY=VALUE`` options and logging set-up.

Placeholders follow Nameko's rules, so a Nameko config file works as is:

- ``${NAME}`` or ``${NAME:default}``, several per value; a default may
  itself contain placeholders and balanced braces
  (``${A:pre_${B:1}}``, ``${URL:https://x/{path}}``);
- a variable that is set (even to ``""``) is used verbatim, never expanded
  again; an unset one gives its default, or ``""`` without one (with a
  warning naming it);
- any plain (unquoted) scalar containing ``${...}`` is expanded; quoted
  scalars only with the explicit ``!env_var`` tag;
- when expansion changed the text, the result is read again as YAML, so
  ``${PORT:8000}`` is an int and an empty result is ``null``; the
  ``!raw_env_var`` tag keeps the result a string.

Nothing here touches PyYAML's global ``SafeLoader``: the placeholders are
registered on a private subclass.
"""

import io
import logging
import logging.config
import os
import re
import warnings

import yaml

from threadko.constants import (
    AMQP_URI_CONFIG_KEY, DEFAULT_AMQP_URI, LOGGING_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError
from threadko.utils import sanitize_url

__all__ = [
    'load_config', 'parse_define', 'build_config',
    'build_config_with_warnings', 'setup_logging',
    'expand_env_vars', 'LOG_FORMAT',
]

LOG_FORMAT = '%(asctime)s %(levelname)-7s %(name)s: %(message)s'
"""Log line format used when the config has no ``LOGGING`` section."""

ENV_VAR_TAG = '!env_var'
RAW_ENV_VAR_TAG = '!raw_env_var'

# which plain scalars get the implicit ``!env_var`` tag (Nameko's pattern)
IMPLICIT_ENV_VAR_MATCHER = re.compile(r'.*\$\{.*\}.*')


# -- placeholder expansion ------------------------------------------------

def _is_name_char(char):
    return char not in '{}:' and not char.isspace()


def _scan_default(text, start):
    """Scan a default value starting at ``start``: any characters except
    braces, plus balanced ``{...}`` groups. Return the index of the ``}``
    that closes the placeholder, or ``None`` if there is none."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == '{':
            depth += 1
        elif char == '}':
            if depth == 0:
                return index
            depth -= 1
    return None


def _scan_placeholder(text, start):
    """Parse the placeholder whose ``${`` is at ``start``.

    :returns: ``(name, default, end)`` with ``default`` ``None`` when the
        placeholder has none and ``end`` the index after its closing ``}``;
        or ``None`` when the text at ``start`` is not a placeholder
    """
    index = start + 2
    while index < len(text) and _is_name_char(text[index]):
        index += 1
    name = text[start + 2:index]
    if not name or index == len(text):
        return None
    if text[index] == '}':
        return name, None, index + 1
    if text[index] != ':':
        return None
    close = _scan_default(text, index + 1)
    if close is None:
        return None
    return name, text[index + 1:close], close + 1


def expand_env_vars(text, environ=None, on_missing=None):
    """Replace every ``${NAME}`` / ``${NAME:default}`` placeholder in
    ``text``.

    :param text: the string to expand
    :param environ: the variables to look up (default ``os.environ``)
    :param on_missing: called with the name of each unset variable that has
        no default (it is replaced by ``""``)
    :returns: the expanded string; text that is not a valid placeholder
        (``$x``, ``${ x}``, an unclosed ``${``) is left as it is
    """
    if environ is None:
        environ = os.environ
    pieces = []
    index = 0
    while True:
        found = text.find('${', index)
        if found < 0:
            pieces.append(text[index:])
            break
        placeholder = _scan_placeholder(text, found)
        if placeholder is None:
            # like a regex substitution: skip this '$' and search on
            pieces.append(text[index:found + 1])
            index = found + 1
            continue
        name, default, end = placeholder
        pieces.append(text[index:found])
        if name in environ:
            pieces.append(environ[name])  # verbatim: never expanded again
        elif default is not None:
            pieces.append(expand_env_vars(default, environ, on_missing))
        elif on_missing is not None:
            on_missing(name)
        index = end
    return ''.join(pieces)


# -- the YAML loader ------------------------------------------------------

def _describe_mark(mark):
    if mark is None:
        return ''
    return '{}, line {}, column {}'.format(
        mark.name, mark.line + 1, mark.column + 1)


def _construct_env_var(loader, node, raw=False):
    raw_value = loader.construct_scalar(node)

    def warn_missing(name):
        warnings.warn(
            'Environment variable {name!r} is not set and its placeholder '
            'has no default ({where}); it was replaced by an empty value. '
            'Set {name} or write ${{{name}:default}}.'.format(
                name=name, where=_describe_mark(node.start_mark)),
            UserWarning, stacklevel=2)

    value = expand_env_vars(raw_value, on_missing=warn_missing)
    if value == raw_value or raw:
        return value
    try:
        # a plain SafeLoader: values from the environment are not expanded
        return yaml.safe_load(value)
    except yaml.YAMLError:
        # the value itself is not shown: it may be a secret
        raise yaml.constructor.ConstructorError(
            None, None,
            'the value after environment variable substitution is not valid '
            'YAML; quote it, or tag it !raw_env_var to keep it a string',
            node.start_mark)


def _construct_raw_env_var(loader, node):
    return _construct_env_var(loader, node, raw=True)


class EnvVarLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``${VAR:default}`` expansion (see the module
    docstring). The registrations below only affect this subclass."""


EnvVarLoader.add_constructor(ENV_VAR_TAG, _construct_env_var)
EnvVarLoader.add_constructor(RAW_ENV_VAR_TAG, _construct_raw_env_var)
EnvVarLoader.add_implicit_resolver(
    ENV_VAR_TAG, IMPLICIT_ENV_VAR_MATCHER, None)


def _yaml_error_message(exc):
    parts = []
    for description, mark in (
            (getattr(exc, 'context', None),
             getattr(exc, 'context_mark', None)),
            (getattr(exc, 'problem', None),
             getattr(exc, 'problem_mark', None))):
        if description:
            if mark is not None:
                description = '{} (line {}, column {})'.format(
                    description, mark.line + 1, mark.column + 1)
            parts.append(description)
    if not parts:
        parts.append(str(exc))
    return ' '.join(' '.join(parts).split())  # one line


def _parse_yaml(stream):
    return yaml.load(stream, Loader=EnvVarLoader)


def load_config(stream_or_path):
    """Read a YAML config file, expanding environment variables.

    :param stream_or_path: a path (``str`` or path-like), or an open text
        stream
    :returns: the configuration dict (``{}`` for an empty file)
    :raises ConfigurationError: the file cannot be read, is not valid YAML,
        or does not hold a mapping at the top level; the one-line message
        names the file and, for YAML errors, the line and column
    """
    if hasattr(stream_or_path, 'read'):
        name = getattr(stream_or_path, 'name', '<stream>')
        opener = None
    else:
        name = os.fspath(stream_or_path)
        opener = name

    try:
        if opener is None:
            loaded = _parse_yaml(stream_or_path)
        else:
            with open(opener, encoding='utf-8') as stream:
                loaded = _parse_yaml(stream)
    except OSError as exc:
        raise ConfigurationError('Cannot read config file {!r}: {}'.format(
            name, exc.strerror or exc))
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            'Cannot read config file {!r}: it is not UTF-8 text ({})'.format(
                name, exc.reason))
    except yaml.YAMLError as exc:
        raise ConfigurationError('Invalid YAML in config file {!r}: {}'.format(
            name, _yaml_error_message(exc)))

    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigurationError(
            'Config file {!r} must hold a mapping of keys to values at the '
            'top level, not a {}'.format(name, type(loaded).__name__))
    return loaded


# -- --define and the final config ----------------------------------------

def parse_define(text):
    """Parse one ``--define`` option.

    ``KEY=VALUE`` gives ``(KEY, VALUE)`` with VALUE read as YAML (so
    ``max_workers=3`` is an int, ``X=`` is ``None`` and placeholders are
    expanded as in files); a bare ``KEY`` gives ``(KEY, True)``. Surrounding
    spaces of KEY are dropped; dots in KEY have no special meaning.

    :raises ConfigurationError: empty KEY, or VALUE not valid YAML
    """
    key, separator, value = text.partition('=')
    key = key.strip()
    if not key:
        raise ConfigurationError(
            'Invalid --define {!r}: expected KEY=VALUE (or KEY alone for '
            'True)'.format(sanitize_url(text)))
    if not separator:
        return key, True
    try:
        return key, _parse_yaml(io.StringIO(value))
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            'Invalid --define {!r}: the value is not valid YAML: {}'.format(
                sanitize_url(text), _yaml_error_message(exc)))


def build_config(config_path=None, defines=(), broker=None):
    """Build the configuration the CLI runs with.

    The file comes first, then the ``--define`` values override it. The
    ``--broker`` URI is used only when ``AMQP_URI`` is still unset (absent
    or ``null``); without it ``AMQP_URI`` defaults to
    :data:`threadko.constants.DEFAULT_AMQP_URI` (the in-process broker).

    :param config_path: YAML file path or ``None``
    :param defines: ``--define`` strings (``KEY=VALUE`` or ``KEY``)
    :param broker: the ``--broker`` URI or ``None``
    :returns: a new dict
    :raises ConfigurationError: from :func:`load_config` or
        :func:`parse_define`
    """
    config = load_config(config_path) if config_path is not None else {}
    for text in defines:
        key, value = parse_define(text)
        config[key] = value
    if config.get(AMQP_URI_CONFIG_KEY) is None:
        config[AMQP_URI_CONFIG_KEY] = broker or DEFAULT_AMQP_URI
    return config


def build_config_with_warnings(config_path=None, defines=(), broker=None):
    """:func:`build_config`, returning the warnings raised while reading
    (unset environment variables) instead of issuing them, so that a
    command can report them once logging is set up.

    :returns: ``(config, [warning message, ...])``
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        config = build_config(config_path, defines, broker)
    return config, [str(warning.message) for warning in caught]


def setup_logging(config):
    """Configure logging from the config's ``LOGGING`` dict
    (:func:`logging.config.dictConfig`, with ``disable_existing_loggers``
    false unless the dict says otherwise); without one, log INFO and above
    to stderr as :data:`LOG_FORMAT`.

    :raises ConfigurationError: the ``LOGGING`` dict is rejected
    """
    logging_config = config.get(LOGGING_CONFIG_KEY)
    if logging_config is None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        return
    if isinstance(logging_config, dict):
        # dictConfig's default would silence every logger that exists by
        # now, threadko's own included; a config can still ask for it
        logging_config = dict(
            {'disable_existing_loggers': False}, **logging_config)
    try:
        logging.config.dictConfig(logging_config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ConfigurationError(
            'Invalid {} configuration: {}'.format(LOGGING_CONFIG_KEY, exc))
