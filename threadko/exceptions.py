"""Public exception types, and (de)serialisation of exceptions for the wire.

The serialised shape is Nameko's (``exc_type``, ``exc_path``, ``exc_args``,
``value``), so errors cross between threadko and Nameko services unchanged.
"""

import inspect
import os
from collections.abc import Iterable

import pika.exceptions


class ThreadkoException(Exception):
    """Base of threadko's own exceptions that are not Nameko-shaped."""


class ExtensionNotFound(AttributeError):
    """A testing helper was asked for an extension the container does not have."""


class RpcTimeout(Exception):
    """An RPC call did not get its reply within the proxy's ``timeout``."""


class ReplyQueueExpiredWithPendingReplies(Exception):
    """The reply queue went away while calls were still waiting for replies."""


class RpcClientStopped(RuntimeError):
    """A call was made through a standalone RPC client that is stopped
    (or was never started); start it, or use it as a context manager."""


class ContainerBeingKilled(Exception):
    """Raised by :meth:`ServiceContainer.spawn_worker` once the container is
    being killed (or has stopped) and accepts no more work.

    Entrypoints catch this and behave as if they never received the work;
    AMQP entrypoints requeue the message so another instance can take it.
    """


registry = {}


def get_module_path(exc_type):
    """Return the dotted path of ``exc_type``, e.g.
    ``"threadko.exceptions.MethodNotFound"``."""
    module = inspect.getmodule(exc_type)
    return '{}.{}'.format(module.__name__, exc_type.__name__)


class RemoteError(Exception):
    """Raised at the caller for an exception that happened in a remote worker
    and is not registered with :func:`deserialize_to_instance`.

    :param exc_type: name of the remote exception class
    :param value: its string value
    """

    def __init__(self, exc_type=None, value=''):
        self.exc_type = exc_type
        self.value = value
        message = '{} {}'.format(exc_type, value)
        super().__init__(message)


def safe_for_serialization(value):
    """Make ``value`` JSON-friendly: strings stay, mappings and iterables are
    converted item by item, anything else is stringified (with a fallback
    when ``str()`` itself fails)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {
            safe_for_serialization(key): safe_for_serialization(val)
            for key, val in value.items()
        }
    if isinstance(value, Iterable):
        return list(map(safe_for_serialization, value))
    try:
        return str(value)
    except Exception:
        return '[__unicode__ failed]'  # Nameko's text, kept for the wire


def serialize(exc):
    """Serialise an exception instance into the wire's error dictionary."""
    return {
        'exc_type': type(exc).__name__,
        'exc_path': _wire_path(type(exc)),
        'exc_args': list(map(safe_for_serialization, exc.args)),
        'value': safe_for_serialization(exc),
    }


def _wire_path(exc_type):
    # threadko's versions of Nameko's exceptions travel under Nameko's
    # path, so a Nameko caller re-raises them as its own types
    if exc_type.__module__ == __name__ and exc_type.__name__ in _NAMEKO_NAMES:
        return 'nameko.exceptions.{}'.format(exc_type.__name__)
    return get_module_path(exc_type)


def deserialize(data):
    """Turn a wire error dictionary back into an exception instance.

    Registered exception types (see :func:`deserialize_to_instance`) come
    back as themselves; everything else becomes a :class:`RemoteError`.
    Nameko's own paths (``nameko.exceptions.X``) map to threadko's types.
    """
    key = data.get('exc_path')
    if key in registry:
        exc_args = data.get('exc_args', ())
        return registry[key](*exc_args)

    exc_type = data.get('exc_type')
    value = data.get('value')
    return RemoteError(exc_type=exc_type, value=value)


def deserialize_to_instance(exc_type):
    """Class decorator: register ``exc_type`` so that a remote error of this
    type is raised at the caller as an instance of it, not as a
    :class:`RemoteError`."""
    key = get_module_path(exc_type)
    registry[key] = exc_type
    return exc_type


class BadRequest(Exception):
    """The caller is at fault (HTTP maps it to 400)."""


@deserialize_to_instance
class MalformedRequest(BadRequest):
    """A request that cannot be understood (e.g. an RPC body without
    ``args``/``kwargs``)."""


@deserialize_to_instance
class MethodNotFound(BadRequest):
    """The target service has no such entrypoint method."""


@deserialize_to_instance
class IncorrectSignature(BadRequest):
    """The call's arguments do not match the method's signature."""


class UnknownService(Exception):
    """No queue is bound for the target service."""

    def __init__(self, service_name):
        self._service_name = service_name
        super().__init__(service_name)

    def __str__(self):
        return 'Unknown service `{}`'.format(self._service_name)


class UnserializableValueError(Exception):
    """A result or argument could not be serialised."""

    def __init__(self, value):
        try:
            self.repr_value = repr(value)
        except Exception:
            self.repr_value = '[__repr__ failed]'
        super().__init__()

    def __str__(self):
        return 'Unserializable value: `{}`'.format(self.repr_value)


class ConfigurationError(Exception):
    """The configuration, or a service definition, is invalid."""


class CommandError(Exception):
    """A CLI command cannot proceed; the message is shown to the user."""


class ConnectionNotFound(BadRequest):
    """Unknown websocket connection id."""


class UndeliverableMessage(Exception):
    """A ``mandatory`` publish was not routed to any queue."""


class EventHandlerConfigurationError(Exception):
    """An event handler was declared with incompatible options."""


_REFUSAL_HINTS = {
    404: 'it does not exist: declare it first (or start the service that '
         'declares it)',
    406: 'it exists with different flags: declare it exactly as its other '
         'users do, or delete it',
    403: 'access refused: check the user\'s permissions on this vhost',
    405: 'it is in exclusive use by another connection',
}


# a refused publish concerns the message or its exchange, not flags
_PUBLISH_REFUSAL_HINTS = {
    404: _REFUSAL_HINTS[404],
    406: 'the message itself was refused (for example it is larger than the '
         'broker\'s max_message_size, or a property is invalid)',
    403: _REFUSAL_HINTS[403],
}


class BrokerRefused(pika.exceptions.ChannelClosedByBroker):
    """The broker refused a publish or a declaration and closed the channel
    (``reply_code`` 404 not found, 406 inequivalent flags, 403 access
    refused, ...). A subclass of pika's ``ChannelClosedByBroker``."""

    def __init__(self, action, reply_code, reply_text):
        super().__init__(reply_code, reply_text)
        self.action = action

    def __str__(self):
        publishing = self.action.startswith('publish')
        hint = None
        if self.reply_code == 403:
            # imported here: threadko.amqp imports this module
            from threadko.amqp.errors import access_refused_hint
            hint = access_refused_hint(
                self, 'basic_publish' if publishing else None)
        if hint is None:
            hints = _PUBLISH_REFUSAL_HINTS if publishing else _REFUSAL_HINTS
            hint = hints.get(self.reply_code)
        return 'The broker refused to {}: {} {}{}'.format(
            self.action, self.reply_code, self.reply_text,
            '; {}'.format(hint) if hint else '')


def describe_error(exc):
    """``exc`` in words, its type named once: ``"Type: message"``. pika's
    connection errors often have an empty ``str()`` (a refused connection
    is an ``AMQPConnectionError`` wrapping the socket error), so their repr
    stands in for the message."""
    text = str(exc) or repr(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else '{}: {}'.format(name, text)


class BrokerUnavailable(ThreadkoException, ConnectionError):
    """The broker could not be reached to publish (or declare) something,
    and the retry policy is spent: nothing was sent.

    Raised by publishers (``EventDispatcher``, ``Publisher``, RPC calls and
    the standalone clients) during a broker outage that outlasts their
    ``retry_policy``. A ``ConnectionError``; the original error is its
    ``__cause__``. Retry later, or allow more retries (``retry_policy`` on
    the publisher, or ``max_retries`` etc. in ``TRANSPORT_OPTIONS``).
    """

    def __init__(self, action, safe_uri, attempts, error):
        self.action = action
        self.safe_uri = safe_uri
        self.attempts = attempts
        self.error = error
        super().__init__(action, safe_uri, attempts, error)

    def __str__(self):
        return (
            'Could not {}: the broker at {} was unreachable on {} '
            'attempt{} (last error: {}). Nothing was sent; try again '
            'once the broker is back, or allow more retries with '
            'retry_policy or TRANSPORT_OPTIONS.'.format(
                self.action, self.safe_uri, self.attempts,
                '' if self.attempts == 1 else 's',
                describe_error(self.error)))



class PublishBlocked(ThreadkoException, ConnectionError):
    """The broker blocked a publish for longer than
    ``PUBLISH_BLOCKED_TIMEOUT`` because of a resource alarm (memory or
    disk space low on a node): RabbitMQ stops reading from publishing
    connections until the alarm clears.

    ``reason`` is the broker's (``'low on memory'``, ``'low on disk'``),
    ``timeout`` the seconds waited, ``maybe_sent`` whether the message had
    been written to the connection already: then the broker may still
    route it once the alarm clears (treat it like a timeout). A
    ``ConnectionError``. Free memory or disk space on the broker, then try
    again; nothing needs restarting.
    """

    def __init__(self, action, reason, timeout, maybe_sent=True):
        self.action = action
        self.reason = reason
        self.timeout = timeout
        self.maybe_sent = maybe_sent
        super().__init__(action, reason, timeout, maybe_sent)

    def __str__(self):
        return (
            'Could not {}: the broker has blocked publishing for {} because '
            'of a resource alarm ({}). {} Free memory or disk space on the '
            'broker (see its vm_memory_high_watermark and disk_free_limit) '
            'and try again; PUBLISH_BLOCKED_TIMEOUT sets how long a publish '
            'waits for the alarm to clear.'.format(
                self.action,
                'more than {} s'.format(self.timeout)
                if self.timeout is not None else 'too long',
                self.reason,
                'The message may still be delivered once the alarm clears.'
                if self.maybe_sent else 'Nothing was sent.'))


class PublishUnconfirmed(BrokerUnavailable):
    """Like :class:`BrokerUnavailable`, but at least one attempt had been
    written to a connection that was lost before the broker confirmed it
    (a node that died, a dropped connection): the message may or may not
    have been routed, and was not confirmed by any later attempt. A
    ``ConnectionError``."""

    def __str__(self):
        return (
            'Could not {}: the connection to the broker at {} was lost '
            'before the broker confirmed the message, and the retries '
            'failed too ({} attempt{}; last error: {}). The message may or '
            'may not have been delivered; publish it again once the broker '
            'is back if it must arrive (consumers should tolerate a '
            'duplicate), or allow more retries with retry_policy or '
            'TRANSPORT_OPTIONS.'.format(
                self.action, self.safe_uri, self.attempts,
                '' if self.attempts == 1 else 's',
                describe_error(self.error)))

# the classes nameko.exceptions also defines (see _wire_path)
_NAMEKO_NAMES = frozenset([
    'RemoteError', 'BadRequest', 'MalformedRequest', 'MethodNotFound',
    'IncorrectSignature', 'ConnectionNotFound', 'UnknownService',
    'UnserializableValueError', 'RpcTimeout', 'ContainerBeingKilled',
    'ExtensionNotFound', 'ConfigurationError', 'CommandError',
    'ReplyQueueExpiredWithPendingReplies',
])

# Errors that Nameko services send carry Nameko's module path; register the
# same classes under it so they are re-raised as themselves on this side.
for _exc_type in (MalformedRequest, MethodNotFound, IncorrectSignature):
    registry['nameko.exceptions.{}'.format(_exc_type.__name__)] = _exc_type
del _exc_type


class ForkedClientError(ThreadkoException, RuntimeError):
    """A call through an RPC proxy of a service container that was started
    in another process, which this one was forked from.

    The container's reply queue is consumed in that process, so the call
    could never get its reply; it fails at once instead. Start the services
    in the child process (in gunicorn's ``post_fork`` hook, or with
    uWSGI's ``lazy-apps``), or call through a standalone
    :class:`~threadko.standalone.rpc.ClusterRpcProxy`, which reconnects in a
    forked child.
    """

    def __init__(self, pid):
        #: the process the container was started in
        self.pid = pid
        super().__init__(pid)
        self._message = (
            'This RPC proxy belongs to a service container started in '
            'process {} before this process (pid {}) was forked from it; '
            'its replies go to that process. Start services in the child '
            "process (e.g. in gunicorn's post_fork hook, or with uWSGI's "
            'lazy-apps), or call through a standalone ClusterRpcProxy.'
            .format(pid, os.getpid()))

    def __str__(self):
        return self._message
