"""Broker URIs and connections: one :class:`Connector` turns the config keys
``AMQP_URI``, ``AMQP_SSL``, ``LOGIN_METHOD``, ``TRANSPORT_OPTIONS`` and a
heartbeat into connections, pika ``BlockingConnection`` for RabbitMQ or
:class:`~threadko.amqp.memory.MemoryConnection` for ``memory://``.

A connection belongs to the thread that uses it (pika's rule); only
``add_callback_threadsafe`` may be called from other threads.
"""

import logging
import os
import socket
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
from threadko.amqp.errors import explain_connection_error
from threadko.exceptions import ConfigurationError, describe_error
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


#: the ``AMQP_SSL`` key of the password of an encrypted ``keyfile``
#: (threadko only: py-amqp has none); never logged or shown
SSL_PASSWORD_KEY = 'password'

# the AMQP_SSL keys that may appear in messages (not the password)
_SSL_SHOWN_KEYS = ('ca_certs', 'certfile', 'keyfile', 'cert_reqs',
                   'server_hostname')


class _PasswordNeeded(Exception):
    """The key file is encrypted and AMQP_SSL has no password (raised by
    the password callback, so OpenSSL never prompts on a terminal)."""


def _no_password():
    raise _PasswordNeeded()


def _ssl_context(option):
    """Build an SSLContext from ``AMQP_SSL`` (``True`` or a dict of
    ``ca_certs``, ``certfile``, ``keyfile``, ``password``, ``cert_reqs``).

    :raises ConfigurationError: a file cannot be read or is not what its
        key says, or the key cannot be decrypted; the message names the
        key and the file, never the password
    """
    if option is True:
        return ssl.create_default_context()
    options = dict(option)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cert_reqs = options.pop('cert_reqs', None)
    ca_certs = options.pop('ca_certs', None)
    if ca_certs:
        _load_ca_certs(context, ca_certs)
    else:
        context.load_default_certs()
    certfile = options.pop('certfile', None)
    password = options.pop(SSL_PASSWORD_KEY, None)
    if certfile:
        _load_cert_chain(
            context, certfile, options.pop('keyfile', None), password)
    if cert_reqs is not None:
        if int(cert_reqs) == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = ssl.VerifyMode(int(cert_reqs))
    if not options.get('server_hostname'):
        context.check_hostname = False
    return context


def _load_ca_certs(context, ca_certs):
    try:
        context.load_verify_locations(ca_certs)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            reason = 'it holds no CA certificate in PEM format ({})'.format(
                getattr(exc, 'reason', None) or exc)
        else:
            reason = 'it cannot be read ({})'.format(
                exc.strerror or describe_error(exc))
        raise ConfigurationError(
            "AMQP_SSL['ca_certs'] is {!r}, and {}: point it at the PEM file "
            "of the CA that signed the broker's certificate.".format(
                ca_certs, reason)) from None


def _load_cert_chain(context, certfile, keyfile, password):
    for key, path in (('certfile', certfile), ('keyfile', keyfile)):
        if path and not os.access(path, os.R_OK):
            raise ConfigurationError(
                "AMQP_SSL['{}'] is {!r}, which cannot be read: {}".format(
                    key, path, 'no such file' if not os.path.exists(path)
                    else 'permission denied'))
    if password is None:
        password = _no_password
    elif not isinstance(password, (str, bytes)):
        password = str(password)
    key_source = ("AMQP_SSL['keyfile'] ({!r})".format(keyfile) if keyfile
                  else "the key in AMQP_SSL['certfile'] ({!r})".format(
                      certfile))
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except _PasswordNeeded:
        raise ConfigurationError(
            "{} is encrypted, and AMQP_SSL has no '{}': set AMQP_SSL['{}'] "
            'to the password of the key.'.format(
                key_source, SSL_PASSWORD_KEY, SSL_PASSWORD_KEY)) from None
    except ssl.SSLError as exc:
        reason = getattr(exc, 'reason', None)
        if reason == 'KEY_VALUES_MISMATCH':
            problem = ('is not the key of the certificate in '
                       "AMQP_SSL['certfile'] ({!r}): give the key that "
                       'belongs to it'.format(certfile))
        elif password is not _no_password:
            problem = ("cannot be decrypted with AMQP_SSL['{}'] (a wrong "
                       'password?), or is not a PEM private key'.format(
                           SSL_PASSWORD_KEY))
        else:
            problem = ("cannot be loaded ({}): AMQP_SSL['certfile'] ({!r}) "
                       'must be a PEM certificate, and keyfile its PEM '
                       'key'.format(reason or exc, certfile))
        raise ConfigurationError('{} {}.'.format(key_source, problem)) \
            from None


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


def abort(connection):
    """Cut ``connection``'s socket instead of closing it gracefully: a
    connection the broker blocks (a resource alarm) is not read by it, so
    the Close handshake would wait until the alarm clears. The broker
    requeues what the connection had not acked."""
    transport = getattr(getattr(connection, '_impl', None), '_transport',
                        None)
    sock = getattr(transport, '_sock', None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # gone already


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
        self._addresses = addresses
        self._login_method = config.get(LOGIN_METHOD_CONFIG_KEY)
        self._tls = None  # AMQP_SSL's settings, for messages: no password
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
                self._tls = (
                    {key: ssl_option[key] for key in _SSL_SHOWN_KEYS
                     if ssl_option.get(key) is not None}
                    if isinstance(ssl_option, dict) else True)
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

    @property
    def broker_text(self):
        """Where connections go, for messages: ``host:port``, or each of
        a failover list."""
        places = ['{}:{}'.format(address.host, address.port)
                  for address in self._addresses]
        if len(places) == 1:
            return places[0]
        return '{} (AMQP_URI lists {})'.format(
            ' or '.join(places), len(places))

    def explain_connection_error(self, exc):
        """Words for a failed :meth:`connect` that retrying will not fix
        (a certificate, the TLS port, the login, the vhost: see
        :func:`threadko.amqp.errors.explain_connection_error`), or None
        for an outage."""
        if self.is_memory:
            return None
        first = self._addresses[0]
        return explain_connection_error(
            exc, self.broker_text, tls=self._tls,
            login_method=self._login_method, username=first.username,
            vhost=first.vhost)

    def configuration_error(self, exc):
        """A :class:`ConfigurationError` (caused by ``exc``) for a failed
        :meth:`connect` that retrying will not fix, or None for an outage,
        which is worth retrying. Publishers call this before retrying."""
        message = self.explain_connection_error(exc)
        if message is None:
            return None
        error = ConfigurationError(message)
        error.__cause__ = exc
        return error

    def __repr__(self):
        return '<Connector {}>'.format(self.safe_uri)
