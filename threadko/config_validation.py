"""Checking a configuration before anything starts.

:func:`validate_config` checks the value of every key threadko reads
(:data:`CHECKS`: one checker per key) and raises
:class:`~threadko.exceptions.ConfigurationError` with one line naming the
first bad value, instead of a traceback from deep inside pika or the
worker pool once the services start. Keys that are absent get their
defaults; keys threadko does not read belong to the services and are not
looked at.

A checker is ``check(value, config)``: it returns when ``value`` is fine
and raises :class:`_Invalid` saying what it expected otherwise (``config``
is there for the checks that depend on another key). They accept what
the code reading the key accepts, and what docs/configuration.rst
promises: no more (a ``bool`` is never a number, an ``'x'`` is never
``True``), no less.

Text for a number: the YAML loader reads ``${PORT:8000}`` as a number
already, so text only arrives from a quoted or ``!raw_env_var`` value. It
is accepted (``text=True``) only for the keys whose code converts it
(``int(...)``, ``float(...)``) today: ``WEB_SERVER_THREADS``,
``WEB_SERVER_STOP_TIMEOUT``, ``SHUTDOWN_GRACE_PERIOD``, ``START_TIMEOUT``
and ``AMQP_SSL``'s ``cert_reqs``; everywhere else text fails later, so it
is refused here.

Nothing heavy is imported here: the checks that reuse code of pika's or
waitress's modules import it when they run.
"""

import math
from collections.abc import Mapping

from threadko.constants import (
    ACCEPT_CONFIG_KEY, AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY,
    DEFAULT_WEBSOCKET_PING_INTERVAL, HANDLER_RETRY_CONFIG_KEY,
    HEARTBEAT_CONFIG_KEY, LOGGING_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY,
    MAX_WORKERS_CONFIG_KEY, PARENT_CALLS_CONFIG_KEY,
    PUBLISH_BLOCKED_TIMEOUT_CONFIG_KEY, RPC_TIMEOUT_CONFIG_KEY,
    QUEUE_DELIVERY_LIMIT_CONFIG_KEY, QUEUE_TYPE_CONFIG_KEY,
    RPC_EXCHANGE_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY, SERIALIZERS_CONFIG_KEY,
    SERVICE_CONTAINER_CLS_CONFIG_KEY, SHUTDOWN_GRACE_PERIOD_CONFIG_KEY,
    START_TIMEOUT_CONFIG_KEY, THREAD_JOIN_TIMEOUT_CONFIG_KEY,
    TRANSPORT_OPTIONS_CONFIG_KEY, WEB_SERVER_CONFIG_KEY,
)
from threadko.utils import redact_secrets, sanitize_url

__all__ = ['validate_config', 'CHECKS']

_LONGEST_SHOWN = 120  # characters of a bad value's repr in the message


class _Invalid(Exception):
    """A checker's verdict: ``expected`` says what would do; ``where`` is
    the path to the bad part inside the value (``['socket_timeout']``),
    empty when the whole value is bad."""

    def __init__(self, expected):
        super().__init__(expected)
        self.expected = expected
        self.where = []
        self.value = None  # the bad part, when ``where`` is not empty

    def inside(self, part, bad_value):
        """The same verdict, one level further out: about the mapping or
        list that holds ``bad_value`` at ``part``."""
        if not self.where:
            self.value = bad_value
        self.where.insert(0, part)
        return self


def validate_config(config):
    """Check the value of every key threadko reads that ``config`` (a
    mapping) holds; an absent key is fine, its default applies.

    :raises ~threadko.exceptions.ConfigurationError: for the first bad
        value, in one line that names the key, shows the value (passwords
        in URIs and values under secret-looking keys masked) and says what
        is expected, e.g. ``Invalid config value max_workers: 'abc'
        (expected a whole number of 1 or more; 0 or null means the
        default, 10)``
    """
    for key, check in CHECKS.items():
        if key not in config:
            continue
        value = config[key]
        try:
            check(value, config)
        except _Invalid as invalid:
            # here, not at the top: threadko.exceptions imports pika
            from threadko.exceptions import ConfigurationError
            path = [key] + invalid.where
            bad_part = value if not invalid.where else invalid.value
            raise ConfigurationError(
                'Invalid config value {}: {} (expected {})'.format(
                    key + ''.join('[{!r}]'.format(part)
                                  for part in invalid.where),
                    _shown(path, bad_part), invalid.expected)) from None


def _shown(path, value):
    """``repr(value)`` for an error message, in one line and not too long,
    without the passwords of URIs nor the values of secret-looking keys
    (as ``threadko show-config`` shows them) anywhere along ``path``."""
    nested = value
    for part in reversed(path):
        nested = {part: nested}
    redacted = redact_secrets(nested)
    for part in path:
        redacted = redacted[part]
    text = sanitize_url(repr(redacted)).replace('\n', '\\n')
    if len(text) > _LONGEST_SHOWN:
        text = text[:_LONGEST_SHOWN - 3] + '...'
    return text


# -- reusable checkers --------------------------------------------------------

def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not math.isnan(value))


def _converted(value, convert):
    """``convert(value)`` for text that converts, else ``value``."""
    if isinstance(value, str):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def whole_number(minimum, maximum=None, default=None, text=False):
    """A checker of an ``int`` from ``minimum`` (to ``maximum``). With
    ``default`` (its description), 0 and null are fine too and mean that
    default. With ``text``, text that ``int()`` converts is fine too."""
    if maximum is None:
        expected = 'a whole number of {} or more'.format(minimum)
    else:
        expected = 'a whole number from {} to {}'.format(minimum, maximum)
    if default is not None:
        expected += '; 0 or null means the default, {}'.format(default)

    def check_whole_number(value, config):
        if default is not None and (
                value is None or (_is_integer(value) and value == 0)):
            return
        if text:
            value = _converted(value, int)
        if not (_is_integer(value) and value >= minimum
                and (maximum is None or value <= maximum)):
            raise _Invalid(expected)
    return check_whole_number


def seconds(above_zero=False, text=False):
    """A checker of a finite number of seconds, 0 or more (above 0 with
    ``above_zero``). With ``text``, text that ``float()`` converts is fine
    too."""
    expected = 'a number of seconds {}'.format(
        'above 0' if above_zero else 'of 0 or more')

    def check_seconds(value, config):
        if text:
            value = _converted(value, float)
        if not (_is_number(value) and math.isfinite(value)
                and (value > 0 if above_zero else value >= 0)):
            raise _Invalid(expected)
    return check_seconds


def time_limit(value, config):
    """A limit in seconds: a number, text that ``float()`` converts (the
    code reading these keys converts it), or null; null or 0 or less
    means no limit."""
    if value is not None and not _is_number(_converted(value, float)):
        raise _Invalid(
            'a number of seconds; null, or 0 or less, means no limit')


def optional(check, null_means):
    """``check``, or null, which ``null_means`` (text that completes
    "null ...", e.g. ``'means no limit'``)."""
    def check_optional(value, config):
        if value is None:
            return
        try:
            check(value, config)
        except _Invalid as invalid:
            if invalid.where:
                raise
            raise _Invalid('{}; null {}'.format(invalid.expected, null_means))
    return check_optional


def boolean(value, config):
    """``True`` or ``False``, nothing else: the text ``'false'`` is true
    to Python, so it would silently mean the opposite."""
    if not isinstance(value, bool):
        raise _Invalid('true or false')


def string(value, config):
    """Any text."""
    if not isinstance(value, str):
        raise _Invalid('text')


def one_of(*choices):
    """A checker of text that is one of ``choices``, in any case."""
    expected = 'one of {} (in any case)'.format(', '.join(choices))

    def check_one_of(value, config):
        if not (isinstance(value, str) and value.upper() in choices):
            raise _Invalid(expected)
    return check_one_of


def choice(*choices):
    """A checker of text that is exactly one of ``choices``."""
    expected = 'one of {}'.format(', '.join(map(repr, choices)))

    def check_choice(value, config):
        if not (isinstance(value, str) and value in choices):
            raise _Invalid(expected)
    return check_choice


def mapping(expected, fields=None, values=None, required=(),
            closed=False):
    """A checker of a mapping, described by ``expected``: the keys named
    in ``fields`` (``{key: checker}``) are checked by their checker, every
    value by ``values`` (if given); the ``required`` keys must be there;
    ``closed``: no other keys than those of ``fields``."""
    fields = fields or {}

    def check_mapping(value, config):
        if not isinstance(value, Mapping):
            raise _Invalid(expected)
        missing = [key for key in required if key not in value]
        if missing:
            raise _Invalid('{}; missing: {}'.format(
                expected, ', '.join(missing)))
        unknown = [key for key in value if key not in fields]
        if closed and unknown:
            raise _Invalid('{}; unknown: {}'.format(
                expected, ', '.join(map(str, unknown))))
        for key, item in value.items():
            check = fields.get(key, values)
            if check is None:
                continue
            try:
                check(item, config)
            except _Invalid as invalid:
                raise invalid.inside(key, item)
    return check_mapping


def dotted_path(value, config):
    """Text naming something to import, ``module.name`` (not imported
    here: that would run the code of the module)."""
    parts = value.split('.') if isinstance(value, str) else []
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise _Invalid(
            "a dotted path such as 'package.module.ClassName'")


# -- checkers of one key each -------------------------------------------------

def _amqp_uri(value, config):
    """Text of one broker URI, or several separated by ``;`` (failover),
    as :class:`~threadko.amqp.connection.Connector` reads them; null or
    empty text means the default."""
    if value is None or value == '':
        return
    if not isinstance(value, str):
        raise _Invalid("a broker URI such as 'amqp://guest:guest@localhost'")
    # parse_uri's module imports pika: only when there is a URI to check
    from threadko.amqp.connection import MEMORY_SCHEME, parse_uri
    from threadko.exceptions import ConfigurationError

    uris = [uri.strip() for uri in value.split(';') if uri.strip()]
    if not uris:
        raise _Invalid("a broker URI, or several separated by ';'")
    try:
        addresses = [parse_uri(uri) for uri in uris]
    except (ConfigurationError, ValueError):  # ValueError: a bad IPv6 host
        raise _Invalid(
            "broker URIs separated by ';', each starting with amqp://, "
            "amqps://, pyamqp://, pyamqps:// or memory://, with a port "
            "(if any) from 0 to 65535")
    if len(addresses) > 1 and any(
            address.scheme == MEMORY_SCHEME for address in addresses):
        raise _Invalid(
            "memory:// on its own: it cannot be part of a ';'-separated "
            "failover list")


_amqp_ssl_options = mapping(
    'true, false, null, or a mapping of ca_certs, certfile, keyfile, '
    'cert_reqs and server_hostname', fields={
        'ca_certs': optional(string, "means the system's CAs"),
        'certfile': optional(string, 'means no client certificate'),
        'keyfile': optional(string, 'means the key is in certfile'),
        # ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED; read with int()
        'cert_reqs': optional(
            whole_number(0, 2, text=True), 'means CERT_REQUIRED'),
        'server_hostname': optional(
            string, 'means the host name is not checked'),
    })


def _amqp_ssl(value, config):
    if value is not None and not isinstance(value, bool):
        _amqp_ssl_options(value, config)


def _web_server_address(value, config):
    """``[host:]port`` as :func:`threadko.web.server.parse_address` reads
    it: ``str()`` of the value, so the number 8000 from ``--define`` is
    fine. Null, ``''`` and the number 0 serve nothing (``WebServer.setup``
    serves nothing for a false address; the text ``'0'`` is port 0)."""
    if value is None or value == '' or (_is_integer(value) and value == 0):
        return
    expected = ("'[host:]port' with a port from 0 to 65535, e.g. "
                "'0.0.0.0:8000' ('0' lets the system pick a port); null "
                "serves nothing")
    if not (isinstance(value, str) or _is_integer(value)):
        raise _Invalid(expected)
    # the web server's module imports waitress: only when there is one
    from threadko.exceptions import ConfigurationError
    from threadko.web.server import parse_address

    try:
        port = parse_address(value).port
    except ConfigurationError:
        raise _Invalid(expected)
    if port > 65535:
        raise _Invalid(expected)


def _known_serializers(config):
    """The names the config may use: those registered already, and those
    its ``SERIALIZERS`` registers (``serialization.setup`` does that)."""
    from threadko import serialization

    names = set(serialization.registry)
    extra = config.get(SERIALIZERS_CONFIG_KEY)
    if isinstance(extra, Mapping):
        names.update(extra)
    return names


def _serializer_name(value, config):
    if not (isinstance(value, str) and value in _known_serializers(config)):
        raise _Invalid(
            'the name of a registered serializer ({}); register a '
            'serializer of another name in {}'.format(
                ', '.join(sorted(_known_serializers(config), key=str)),
                SERIALIZERS_CONFIG_KEY))


def _accept(value, config):
    if value is None:
        return  # [serializer]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _Invalid(
            'a list of serializer names, e.g. [json]; null or [] means '
            '[serializer]')
    for index, name in enumerate(value):
        try:
            _serializer_name(name, config)
        except _Invalid as invalid:
            raise invalid.inside(index, name)


# what ``serialization.register(name, **entry)`` takes
_serializer_entry = mapping(
    'a mapping of encoder, decoder, content_type and (optional) '
    'content_encoding', required=('encoder', 'decoder', 'content_type'),
    closed=True, fields={
        'encoder': dotted_path,
        'decoder': dotted_path,
        'content_type': string,
        'content_encoding': string,
    })

# ``Connector`` takes the retry settings, and hands the others it knows on
# to pika's ConnectionParameters: checked here as pika checks them, except
# that a bool is not a number
_transport_options = mapping(
    'a mapping such as {max_retries: 3, interval_start: 2}', fields={
        'max_retries': optional(whole_number(0), 'retries forever'),
        'interval_start': seconds(),
        'interval_step': seconds(),
        'interval_max': seconds(),
        'socket_timeout': optional(seconds(above_zero=True), 'means none'),
        'stack_timeout': optional(seconds(above_zero=True), 'means none'),
        'blocked_connection_timeout': optional(seconds(), 'means none'),
        'connection_attempts': whole_number(1),
        'retry_delay': seconds(),
        'channel_max': whole_number(1, 65535),
        'frame_max': whole_number(4096, 131072),
        'locale': string,
        'client_properties': optional(mapping('a mapping'), 'means none'),
        'tcp_options': optional(mapping('a mapping'), 'means none'),
    })


def _websocket_idle_timeout(value, config):
    """Seconds, longer than the ping interval plus the second the server
    may take to notice: else a client that answers pings is closed."""
    seconds(above_zero=True)(value, config)
    ping = config.get('WEBSOCKET_PING_INTERVAL',
                      DEFAULT_WEBSOCKET_PING_INTERVAL)
    if _is_number(ping) and value <= ping + 1:
        raise _Invalid(
            'a number of seconds above WEBSOCKET_PING_INTERVAL + 1 ({}), '
            'so that a client has time to answer a ping'.format(ping + 1))


#: One checker per key threadko reads: ``check(value, config)`` returns
#: when ``value`` is fine, and raises ``_Invalid`` otherwise. The web
#: server's and the events' keys are spelled out: their constants live in
#: modules that import waitress or pika.
CHECKS = {
    AMQP_URI_CONFIG_KEY: _amqp_uri,
    AMQP_SSL_CONFIG_KEY: _amqp_ssl,
    LOGIN_METHOD_CONFIG_KEY: optional(
        one_of('PLAIN', 'AMQPLAIN', 'EXTERNAL'), 'means PLAIN'),
    HEARTBEAT_CONFIG_KEY: optional(
        whole_number(0), 'or 0 turns heartbeats off'),
    TRANSPORT_OPTIONS_CONFIG_KEY: optional(
        _transport_options, 'means the defaults'),
    # before serializer and ACCEPT, which may name its serializers
    SERIALIZERS_CONFIG_KEY: optional(mapping(
        'a mapping of names to {encoder: dotted.path, decoder: '
        'dotted.path, content_type: ...}', values=_serializer_entry),
        'means none'),
    SERIALIZER_CONFIG_KEY: optional(
        _serializer_name, "or '' means the default, json"),
    ACCEPT_CONFIG_KEY: _accept,
    MAX_WORKERS_CONFIG_KEY: whole_number(1, default=10),
    PARENT_CALLS_CONFIG_KEY: whole_number(0),
    THREAD_JOIN_TIMEOUT_CONFIG_KEY: seconds(above_zero=True),
    SERVICE_CONTAINER_CLS_CONFIG_KEY: optional(
        dotted_path, 'means threadko.containers.ServiceContainer'),
    RPC_EXCHANGE_CONFIG_KEY: optional(
        string, "or '' means the default, nameko-rpc"),
    'AUTO_DELETE_EVENT_EXCHANGES': optional(boolean, 'means false'),
    'DECLARE_EVENT_EXCHANGES': optional(boolean, 'means declare them'),
    # x-queue-type values are case-sensitive on the broker
    QUEUE_TYPE_CONFIG_KEY: optional(
        choice('classic', 'quorum'), 'means classic'),
    QUEUE_DELIVERY_LIMIT_CONFIG_KEY: optional(
        whole_number(0), 'or 0 means no limit'),
    # pika's blocked_connection_timeout of publisher connections
    PUBLISH_BLOCKED_TIMEOUT_CONFIG_KEY: optional(
        seconds(above_zero=True), 'waits as long as the alarm lasts'),
    RPC_TIMEOUT_CONFIG_KEY: optional(
        seconds(above_zero=True), 'waits forever'),
    # threadko.retry.Retry's arguments (``on`` is code, not config)
    HANDLER_RETRY_CONFIG_KEY: optional(mapping(
        'a mapping of retry settings: attempts, delay, multiplier, '
        'max_delay, jitter, retry_expected', fields={
            'attempts': whole_number(1),
            'delay': seconds(),
            'multiplier': seconds(),
            'max_delay': seconds(),
            'jitter': seconds(),
            'retry_expected': boolean,
        }, closed=True), 'means no retries'),
    WEB_SERVER_CONFIG_KEY: _web_server_address,
    # threadko.observability's
    'METRICS_ADDRESS': _web_server_address,
    'TRACING': optional(boolean, 'means off'),
    'TRACING_CALL_ARGS': optional(boolean, 'means off'),
    'WEB_SERVER_MAX_REQUEST_BODY_SIZE': optional(
        whole_number(0), 'means no limit'),
    # HttpSite reads it with int()
    'WEB_SERVER_THREADS': whole_number(
        1, default="the containers' max_workers + 2", text=True),
    # HttpSite reads it with float()
    'WEB_SERVER_STOP_TIMEOUT': seconds(text=True),
    # HttpRequestHandler: a 500 says only an error id (logged) when true
    'WEB_SERVER_HIDE_ERROR_DETAILS': optional(boolean, 'means false'),
    # threadko.web.front's (its module imports waitress)
    'WEB_SERVER_CONNECTION_LIMIT': whole_number(1),
    'WEB_SERVER_HEADER_TIMEOUT': seconds(above_zero=True),
    'WEB_SERVER_IDLE_TIMEOUT': seconds(above_zero=True),
    'WEBSOCKET_PING_INTERVAL': seconds(above_zero=True),
    'WEBSOCKET_IDLE_TIMEOUT': _websocket_idle_timeout,
    'WEBSOCKET_MAX_MESSAGE_SIZE': optional(whole_number(1), 'means no limit'),
    'WEBSOCKET_MAX_SEND_BUFFER': optional(whole_number(1), 'means no limit'),
    SHUTDOWN_GRACE_PERIOD_CONFIG_KEY: time_limit,
    START_TIMEOUT_CONFIG_KEY: time_limit,
    LOGGING_CONFIG_KEY: optional(
        mapping('a logging.config.dictConfig mapping'),
        'logs INFO and above to stderr'),
    # threadko.sqlalchemy's (its module imports SQLAlchemy)
    'DB_URIS': optional(mapping(
        "a mapping of '<service name>:<declarative base name>' to database "
        'URIs', values=string), 'means none'),
    'DB_ENGINE_OPTIONS': optional(mapping(
        "a mapping of '<service name>:<declarative base name>' to "
        'create_engine() options', values=mapping('a mapping of options')),
        'means none'),
    'DB_SESSION_OPTIONS': optional(mapping(
        "a mapping of '<service name>:<declarative base name>' to "
        'sessionmaker() options', values=mapping('a mapping of options')),
        'means none'),
}
