"""Broker URIs and connections: one :class:`Connector` turns the config keys
``AMQP_URI``, ``AMQP_SSL``, ``LOGIN_METHOD``, ``TRANSPORT_OPTIONS`` and a
heartbeat into connections, pika ``BlockingConnection`` for RabbitMQ or
:class:`~threadko.amqp.memory.MemoryConnection` for ``memory://``.

A connection belongs to the thread that uses it (pika's rule); only
``add_callback_threadsafe`` may be called from other threads.
"""

import logging
import ssl
from collections import namedtuple
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from threadko.constants import (
    AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, DEFAULT_AMQP_URI,
    DEFAULT_TRANSPORT_OPTIONS, LOGIN_METHOD_CONFIG_KEY,
    TRANSPORT_OPTIONS_CONFIG_KEY,
)
from threadko.exceptions import ConfigurationError
from threadko.utils import fork, sanitize_url

_log = logging.getLogger(__name__)

PLAIN_SCHEMES = {'amqp', 'pyamqp'}
TLS_SCHEMES = {'amqps', 'pyamqps'}
MEMORY_SCHEME = 'memory'

#: Errors after which a connection is unusable but a new one may work.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ChannelClosedByClient,
    OSError,
)

# TRANSPORT_OPTIONS keys that are kombu retry settings, not pika parameters
_RETRY_KEYS = ('max_retries', 'interval_start', 'interval_step',
               'interval_max')
_PIKA_PARAMETERS = frozenset([
    'channel_max', 'frame_max', 'connection_attempts', 'retry_delay',
    'socket_timeout', 'stack_timeout', 'locale', 'blocked_connection_timeout',
    'client_properties', 'tcp_options',
])

Address = namedtuple(
    'Address', 'scheme host port username password vhost')


class RetryPolicy(namedtuple(
        'RetryPolicy', 'max_retries interval_start interval_step '
                       'interval_max')):
    """kombu-style retry settings; ``max_retries=None`` retries forever."""

    def intervals(self):
        """Yield the wait before each retry: start, start+step, ... capped
        at ``interval_max``; stops after ``max_retries`` retries."""
        interval = self.interval_start
        count = 0
        while self.max_retries is None or count < self.max_retries:
            yield min(interval, self.interval_max)
            interval += self.interval_step
            count += 1

    @classmethod
    def from_options(cls, options, **defaults):
        values = dict(interval_start=1, interval_step=1, interval_max=1,
                      max_retries=3)
        values.update(defaults)
        values.update((key, options[key]) for key in _RETRY_KEYS
                      if key in options)
        return cls(**values)


def parse_uri(uri, tls=False):
    """Split one broker URI into an :class:`Address`.

    The vhost is the path without its first ``/``, percent-decoded; an
    empty path means ``/``. Credentials default to ``guest``/``guest``.
    The default port is 5671 for ``amqps://`` or when ``tls`` is set
    (``AMQP_SSL``), else 5672.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in PLAIN_SCHEMES | TLS_SCHEMES | {MEMORY_SCHEME}:
        raise ConfigurationError(
            'Unsupported broker URI scheme in {!r}: use amqp://, amqps://, '
            'pyamqp:// or memory://'.format(sanitize_url(uri)))
    path = parts.path[1:] if parts.path.startswith('/') else parts.path
    vhost = unquote(path) or '/'
    default_port = 5671 if scheme in TLS_SCHEMES or tls else 5672
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigurationError(
            'Invalid port in broker URI {!r}'.format(sanitize_url(uri)))
    return Address(
        scheme=scheme,
        host=parts.hostname or 'localhost',
        port=port,
        username=unquote(parts.username) if parts.username else 'guest',
        password=unquote(parts.password) if parts.password else 'guest',
        vhost=vhost,
    )


def _ssl_context(option):
    """Build an SSLContext from ``AMQP_SSL`` (``True`` or a dict of
    ``ca_certs``, ``certfile``, ``keyfile``, ``cert_reqs``)."""
    if option is True:
        return ssl.create_default_context()
    options = dict(option)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cert_reqs = options.pop('cert_reqs', None)
    ca_certs = options.pop('ca_certs', None)
    if ca_certs:
        context.load_verify_locations(ca_certs)
    else:
        context.load_default_certs()
    certfile = options.pop('certfile', None)
    if certfile:
        context.load_cert_chain(certfile, options.pop('keyfile', None))
    if cert_reqs is not None:
        if int(cert_reqs) == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = ssl.VerifyMode(int(cert_reqs))
    if not options.get('server_hostname'):
        context.check_hostname = False
    return context


def _credentials(address, login_method):
    if login_method is None or login_method.upper() in ('PLAIN', 'AMQPLAIN'):
        # pika speaks PLAIN, which every RabbitMQ offers; AMQPLAIN carries
        # the same username and password
        return pika.PlainCredentials(address.username, address.password)
    if login_method.upper() == 'EXTERNAL':
        return pika.credentials.ExternalCredentials()
    raise ConfigurationError(
        'LOGIN_METHOD {!r} is not supported: use PLAIN, AMQPLAIN or '
        'EXTERNAL'.format(login_method))


def _close_socket_in_child(connection):
    """A forked child drops its copy of the connection's socket (see
    :func:`threadko.utils.fork.close_in_child`)."""
    # pika 1.x internals: BlockingConnection._impl is the SelectConnection,
    # its _transport (an _AsyncTransportBase) holds the socket in _sock; if
    # a pika version lays them out otherwise, the child keeps the socket
    transport = getattr(getattr(connection, '_impl', None), '_transport',
                        None)
    sock = getattr(transport, '_sock', None)
    if sock is not None:
        fork.close_in_child(sock)


class Connector:
    """Makes broker connections from a config.

    :param config: the container's or client's config mapping
    :param heartbeat: AMQP heartbeat in seconds (``0``/``None`` disables it,
        as for publisher connections that sit idle in a pool)
    :param transport_options: apply ``TRANSPORT_OPTIONS`` (consumers do,
        publishers use the defaults, as in Nameko)
    """

    def __init__(self, config, heartbeat=None, transport_options=True):
        self.uri = config.get(AMQP_URI_CONFIG_KEY) or DEFAULT_AMQP_URI
        self.safe_uri = ';'.join(
            sanitize_url(uri) for uri in self.uri.split(';'))
        ssl_option = config.get(AMQP_SSL_CONFIG_KEY)
        addresses = [parse_uri(uri.strip(), tls=bool(ssl_option))
                     for uri in self.uri.split(';') if uri.strip()]
        if not addresses:
            raise ConfigurationError('AMQP_URI is empty')
        schemes = {address.scheme == MEMORY_SCHEME for address in addresses}
        if len(addresses) > 1 and True in schemes:
            raise ConfigurationError(
                'memory:// cannot be part of a failover list: {}'.format(
                    self.safe_uri))

        options = dict(DEFAULT_TRANSPORT_OPTIONS)
        if transport_options:
            options.update(config.get(TRANSPORT_OPTIONS_CONFIG_KEY) or {})
        self.retry_policy = RetryPolicy.from_options(options)

        self.memory_vhost = None
        if addresses[0].scheme == MEMORY_SCHEME:
            self.memory_vhost = addresses[0].vhost
            self.parameters = []
            return

        login_method = config.get(LOGIN_METHOD_CONFIG_KEY)
        extra = {key: value for key, value in options.items()
                 if key in _PIKA_PARAMETERS}
        extra['client_properties'] = dict(
            {'connection_name': 'threadko'},
            **(extra.get('client_properties') or {}))
        ignored = set(options) - _PIKA_PARAMETERS - set(_RETRY_KEYS)
        if ignored:
            _log.debug('TRANSPORT_OPTIONS not used by pika: %s',
                       ', '.join(sorted(ignored)))

        self.parameters = []
        for address in addresses:
            ssl_options = None
            if address.scheme in TLS_SCHEMES or ssl_option:
                context = _ssl_context(ssl_option or True)
                server_hostname = (
                    ssl_option.get('server_hostname')
                    if isinstance(ssl_option, dict) else None)
                if context.check_hostname and not server_hostname:
                    server_hostname = address.host
                ssl_options = pika.SSLOptions(context, server_hostname)
            self.parameters.append(pika.ConnectionParameters(
                host=address.host, port=address.port,
                virtual_host=address.vhost,
                credentials=_credentials(address, login_method),
                heartbeat=heartbeat or 0,
                ssl_options=ssl_options,
                **extra))

    @property
    def is_memory(self):
        return self.memory_vhost is not None

    def connect(self):
        """Open a new connection (one attempt; failures raise one of
        :data:`CONNECTION_ERRORS`)."""
        if self.is_memory:
            from threadko.amqp import memory
            return memory.connect(self.memory_vhost)
        if len(self.parameters) == 1:
            connection = pika.BlockingConnection(self.parameters[0])
        else:
            connection = pika.BlockingConnection(self.parameters)
        _close_socket_in_child(connection)
        return connection

    def __repr__(self):
        return '<Connector {}>'.format(self.safe_uri)
