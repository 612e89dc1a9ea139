"""OpenTelemetry tracing (config ``TRACING: true``; needs
``threadko[tracing]``, i.e. ``opentelemetry-api``).

Spans go to OpenTelemetry's global tracer provider: the application (or
``opentelemetry-instrument``) sets up an SDK and its exporters; without
one every span is a no-op, and trace context still travels.

What is traced:

- every worker, as a span that is current while the worker runs (so spans
  made by the service's own code and by its outgoing calls are its
  children): ``SERVER`` for ``@rpc`` and ``@http`` (one span per HTTP
  request, opened by the web server before routing), ``CONSUMER`` for
  ``@event_handler`` and ``@consume``, ``INTERNAL`` for ``@timer`` and
  other entrypoints;
- every outgoing RPC call (``RpcProxy``, ``ClusterRpcProxy``, ...), as a
  ``CLIENT`` span that ends when the reply (or the failure) arrives;
- every publish (``EventDispatcher``, ``Publisher``, the standalone
  ``event_dispatcher``), as a ``PRODUCER`` span.

W3C trace context (``traceparent``, ``tracestate``) is injected into the
AMQP headers of requests, events and messages and extracted from them and
from HTTP request headers, through OpenTelemetry's propagation API (the
globally configured propagator). A worker fired by a message without
``traceparent`` starts a new trace, unless the message carries
``nameko.traceparent``: Nameko 2 services copy every header they receive
into their context data and forward it so prefixed, so a trace continues
through a Nameko service into the threadko services it calls.

An exception raised by a service method is recorded on its span (an
``exception`` event, and ``error.type``). The span's status is ``ERROR``
only for an unexpected exception: one listed in the entrypoint's
``expected_exceptions`` is part of the method's contract, as a 4xx is of
an HTTP server's, and leaves the status unset. The caller's ``CLIENT``
span is ``ERROR`` for either. An HTTP span's status follows its response:
``ERROR`` for 5xx only.

Call arguments are recorded (``threadko.call_args``) only when config
``TRACING_CALL_ARGS`` is true, redacted per each entrypoint's
``sensitive_arguments`` (see :func:`threadko.utils.get_redacted_args`).

Tracing never fails the work it traces: should a hook raise (a broken
propagator, say), the error is logged and the work goes on untraced.
"""

import json
import logging
import threading
import weakref

from threadko.amqp.consumer import Message
from threadko.constants import HEADER_PREFIX
from threadko.containers import _describe as describe_exception_message
from threadko.observability import entrypoint_kind, require
from threadko.utils import get_redacted_args

trace = require('opentelemetry.trace', 'tracing', 'TRACING')
propagate = require('opentelemetry.propagate', 'tracing', 'TRACING')
otel_context = require('opentelemetry.context', 'tracing', 'TRACING')
textmap = require('opentelemetry.propagators.textmap', 'tracing', 'TRACING')
SpanKind, Status, StatusCode = trace.SpanKind, trace.Status, trace.StatusCode

__all__ = ['Tracing', 'CALL_ARGS_CONFIG_KEY']

#: config key: true records each worker's call arguments (redacted per
#: ``sensitive_arguments``) as the ``threadko.call_args`` span attribute
CALL_ARGS_CONFIG_KEY = 'TRACING_CALL_ARGS'
#: the longest ``threadko.call_args`` (characters) recorded
MAX_CALL_ARGS_LENGTH = 2048

#: ``messaging.system`` and ``rpc.system`` of the spans
MESSAGING_SYSTEM = 'rabbitmq'
RPC_SYSTEM = 'nameko'
#: the name RabbitMQ gives the default exchange ('' on the wire)
DEFAULT_EXCHANGE = 'amq.default'

#: where the HTTP span of a request (and its context) waits for its worker
_ENVIRON_KEY = 'threadko.tracing.span'

_log = logging.getLogger(__name__)
_failed_hooks = set()

_HTTP_METHODS = frozenset((
    'CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT',
    'TRACE'))
_NAMEKO_PREFIX = HEADER_PREFIX + '.'


def _tracing_failed(hook):
    """Log that tracing failed in ``hook`` (a warning the first time, then
    at debug level): tracing never fails the work it traces, which goes on
    untraced."""
    level = logging.DEBUG if hook in _failed_hooks else logging.WARNING
    _failed_hooks.add(hook)
    _log.log(level, 'tracing failed in %s; going on untraced', hook,
             exc_info=True)


def _qualified_name(cls):
    module = cls.__module__
    if module in ('builtins', '__main__'):
        return cls.__qualname__
    return '{}.{}'.format(module, cls.__qualname__)


def _describe(exc):
    return '{}: {}'.format(
        type(exc).__name__, describe_exception_message(exc))[:1024]


def _record_error(span, exc, status=True):
    """Record ``exc`` on ``span`` (event and ``error.type``); with
    ``status``, make the span's status ERROR."""
    span.record_exception(exc)
    span.set_attribute('error.type', _qualified_name(type(exc)))
    if status:
        span.set_status(Status(StatusCode.ERROR, _describe(exc)))


class _HeadersGetter(textmap.Getter):
    """Reads trace context from AMQP headers: ``traceparent``, else the
    ``nameko.traceparent`` a Nameko 2 service forwards as context data."""

    def get(self, carrier, key):
        value = carrier.get(key)
        if value is None:
            value = carrier.get(_NAMEKO_PREFIX + key)
            if value is None:
                return None
        if isinstance(value, bytes):
            value = value.decode('utf-8', 'replace')
        elif not isinstance(value, str):
            return None
        return [value]

    def keys(self, carrier):
        return list(carrier)


class _EnvironGetter(textmap.Getter):
    """Reads trace context from a WSGI environ's HTTP headers."""

    def get(self, carrier, key):
        value = carrier.get('HTTP_' + key.upper().replace('-', '_'))
        return None if value is None else [value]

    def keys(self, carrier):
        return [key[5:].lower().replace('_', '-') for key in carrier
                if key.startswith('HTTP_')]


_headers_getter = _HeadersGetter()
_environ_getter = _EnvironGetter()


class Tracing:
    """The process's tracing (one per process: :meth:`get`), holding the
    ``threadko`` OpenTelemetry tracer. The core calls it where spans begin
    and end: :meth:`worker_instrument` for every worker of a container
    configured with ``TRACING``, :meth:`http_observer` for every HTTP
    request its web server routes, :meth:`rpc_call` for every outgoing RPC
    call, :meth:`publishing` around every publish.
    """

    _instance = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls):
        """The process's :class:`Tracing`, made on first use."""
        instance = cls._instance
        if instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    cls._instance = cls()
                instance = cls._instance
        return instance

    def __init__(self, tracer_provider=None):
        """:param tracer_provider: where spans go (default: the global
            one, also when it is set up later)"""
        from threadko import __version__

        self.tracer = trace.get_tracer(
            'threadko', __version__, tracer_provider)
        self._workers = _WorkerTracing(self.tracer)
        self._http = _HttpTracing(self.tracer)

    def worker_instrument(self):
        """The :class:`~threadko.observability.WorkerInstrument` making a
        span of each worker (the same one for every container)."""
        return self._workers

    def http_observer(self):
        """The request observer of a
        :class:`~threadko.web.server.Router` (see its ``observe``) making
        the ``SERVER`` span of each HTTP request (the same one for every
        router, so a router shared by containers observes once)."""
        return self._http

    def rpc_call(self, outgoing, service_name, method_name):
        """Begin the ``CLIENT`` span of an RPC request about to be sent,
        a child of the current span, and put its context in the request's
        headers. Returns a handle whose ``finish(error)`` ends it.

        :param outgoing: the prepared request
            (:class:`~threadko.amqp.publish.Outgoing`)
        """
        try:
            return self._rpc_call(outgoing, service_name, method_name)
        except Exception:
            _tracing_failed('rpc_call')
            return _UNTRACED_CALL

    def _rpc_call(self, outgoing, service_name, method_name):
        properties = outgoing.properties
        span = self.tracer.start_span(
            '{}/{}'.format(service_name, method_name), kind=SpanKind.CLIENT)
        # attributes only for a span that records them (not for one the
        # sampler dropped, nor without an SDK): building them costs
        if span.is_recording():
            attributes = {
                'rpc.system': RPC_SYSTEM,
                'rpc.service': service_name,
                'rpc.method': method_name,
                'messaging.system': MESSAGING_SYSTEM,
                'messaging.destination.name': outgoing.exchange,
                'messaging.rabbitmq.destination.routing_key':
                    outgoing.routing_key,
            }
            if properties.correlation_id is not None:
                attributes['messaging.message.conversation_id'] = \
                    properties.correlation_id
            span.set_attributes(attributes)
        _inject_or_end(properties, span)
        return RpcCallSpan(span)

    def publishing(self, outgoing):
        """A context manager around the publish of ``outgoing``: a
        ``PRODUCER`` span, a child of the current span, whose context the
        message's headers carry; an exception raised inside is recorded
        on it."""
        return _Publishing(self.tracer, outgoing)


def _inject(properties, span):
    """Put ``span``'s context in the message's headers."""
    headers = properties.headers
    if headers is None:
        headers = properties.headers = {}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    if _NAMEKO_PREFIX + 'traceparent' in headers:
        # the worker's context data holds the trace headers it received
        # (as Nameko's does): what it forwards, a Nameko peer will too,
        # so make that this span's context as well
        for field in propagate.get_global_textmap().fields:
            prefixed = _NAMEKO_PREFIX + field
            if field in headers:
                headers[prefixed] = headers[field]
            else:
                headers.pop(prefixed, None)


def _inject_or_end(properties, span):
    try:
        _inject(properties, span)
    except BaseException:
        span.end()
        raise


class _UntracedCall:
    def finish(self, error=None):
        pass


_UNTRACED_CALL = _UntracedCall()


class RpcCallSpan:
    """The ``CLIENT`` span of one outgoing RPC call (see
    :meth:`Tracing.rpc_call`)."""

    __slots__ = ('span', '_open')

    def __init__(self, span):
        self.span = span
        self._open = [span]

    def finish(self, error=None):
        """End the span: the call returned (``error`` None), the remote
        method raised (``error`` is the serialized error dict of the
        reply) or the call failed (``error`` is the exception: a timeout,
        an unknown service, a lost connection). Only the first call counts;
        any thread may make it."""
        try:
            span = self._open.pop()  # atomic: one caller wins
        except IndexError:
            return
        try:
            if error is not None:
                if isinstance(error, BaseException):
                    _record_error(span, error)
                else:
                    _record_remote_error(span, error)
            span.end()
        except Exception:
            _tracing_failed('rpc_call')


def _record_remote_error(span, error):
    """Record the serialized exception of an RPC reply on ``span``."""
    exc_type = str(error.get('exc_type') or 'RemoteError')
    value = str(error.get('value') or '')
    path = str(error.get('exc_path') or exc_type)
    if path.startswith('builtins.'):  # as _qualified_name names them
        path = path[len('builtins.'):]
    span.add_event('exception', {
        'exception.type': path,
        'exception.message': value,
    })
    span.set_attribute('error.type', path)
    span.set_status(Status(
        StatusCode.ERROR, '{}: {}'.format(exc_type, value)[:1024]))


class _Publishing:
    """The ``PRODUCER`` span of one publish (see
    :meth:`Tracing.publishing`)."""

    __slots__ = ('_tracer', '_outgoing', '_span')

    def __init__(self, tracer, outgoing):
        self._tracer = tracer
        self._outgoing = outgoing
        self._span = None

    def __enter__(self):
        try:
            return self._start()
        except Exception:
            _tracing_failed('publishing')
            return None

    def _start(self):
        outgoing = self._outgoing
        properties = outgoing.properties
        exchange = outgoing.exchange or ''
        span = self._tracer.start_span(
            'publish ' + (exchange or DEFAULT_EXCHANGE),
            kind=SpanKind.PRODUCER)
        if span.is_recording():
            attributes = {
                'messaging.system': MESSAGING_SYSTEM,
                'messaging.operation.type': 'send',
                'messaging.operation.name': 'publish',
                'messaging.destination.name': exchange,
            }
            if outgoing.routing_key:
                attributes['messaging.rabbitmq.destination.routing_key'] = \
                    outgoing.routing_key
            if properties.message_id is not None:
                attributes['messaging.message.id'] = properties.message_id
            if properties.correlation_id is not None:
                attributes['messaging.message.conversation_id'] = \
                    properties.correlation_id
            span.set_attributes(attributes)
        _inject_or_end(properties, span)
        self._span = span
        return span

    def __exit__(self, exc_type, exc, tb):
        span = self._span
        if span is not None:
            try:
                if exc is not None:
                    _record_error(span, exc)
                span.end()
            except Exception:
                _tracing_failed('publishing')
        return False


# -- workers ------------------------------------------------------------------

class _Spec:
    """How the workers of one entrypoint are traced (made on its first
    worker, then reused)."""

    #: origin: what fires the workers: 'message', 'http' or None
    __slots__ = ('name', 'span_kind', 'attributes', 'origin', 'call_args')


def _make_spec(entrypoint, origin):
    spec = _Spec()
    spec.origin = None
    service = entrypoint.container.service_name
    method = entrypoint.method_name
    kind = entrypoint_kind(entrypoint)
    attributes = {
        'threadko.service': service,
        'threadko.entrypoint.method': method,
        'threadko.entrypoint.kind': kind,
    }
    if isinstance(origin, Message):
        spec.origin = 'message'
    elif hasattr(origin, 'environ'):
        spec.origin = 'http'
    if kind in ('rpc', 'websocket_rpc'):
        spec.name = '{}/{}'.format(service, method)
        spec.span_kind = SpanKind.SERVER
        attributes.update({
            'rpc.system': RPC_SYSTEM,
            'rpc.service': service,
            'rpc.method': method,
        })
        if kind == 'websocket_rpc':
            attributes['network.protocol.name'] = 'websocket'
        else:
            attributes['messaging.system'] = MESSAGING_SYSTEM
    elif spec.origin == 'message':
        spec.name = None  # 'process <exchange>', per message
        spec.span_kind = SpanKind.CONSUMER
        attributes.update({
            'messaging.system': MESSAGING_SYSTEM,
            'messaging.operation.type': 'process',
            'messaging.operation.name': 'process',
        })
        queue = getattr(entrypoint, 'queue', None)
        queue_name = getattr(queue, 'name', None)
        if queue_name:
            attributes['messaging.destination.subscription.name'] = \
                queue_name
    elif spec.origin == 'http':
        spec.name = None  # the HTTP span's
        spec.span_kind = SpanKind.SERVER
    else:
        spec.name = '{}.{}'.format(service, method)
        spec.span_kind = SpanKind.INTERNAL
    spec.attributes = attributes
    try:
        config = entrypoint.container.config
        spec.call_args = bool(config.get(CALL_ARGS_CONFIG_KEY))
    except Exception:  # a container without a config (a test double)
        spec.call_args = False
    return spec


def _message_attributes(attributes, message):
    """Add what ``message`` tells about itself to ``attributes``."""
    method = message.method
    properties = message.properties
    attributes['messaging.destination.name'] = method.exchange or ''
    if method.routing_key:
        attributes['messaging.rabbitmq.destination.routing_key'] = \
            method.routing_key
    if properties.correlation_id is not None:
        attributes['messaging.message.conversation_id'] = \
            properties.correlation_id
    if properties.message_id is not None:
        attributes['messaging.message.id'] = properties.message_id


def _call_args(worker_ctx, kind):
    """The worker's call arguments, redacted, as JSON text (None if they
    cannot be had)."""
    args = worker_ctx.args
    if kind == 'http' and args:
        args = (None,) + tuple(args[1:])  # not the werkzeug Request
    try:
        redacted = get_redacted_args(
            worker_ctx.entrypoint, *args, **worker_ctx.kwargs)
        text = json.dumps(redacted, default=repr, ensure_ascii=False)
    except Exception:
        return None
    if len(text) > MAX_CALL_ARGS_LENGTH:
        text = text[:MAX_CALL_ARGS_LENGTH - 3] + '...'
    return text


class _WorkerTracing:
    """The worker instrument of :class:`Tracing`: a span per worker, current
    on the worker's thread from before the dependencies are injected until
    after ``worker_teardown``."""

    def __init__(self, tracer):
        self._tracer = tracer
        self._specs = weakref.WeakKeyDictionary()

    def worker_started(self, worker_ctx):
        try:
            return self._start(worker_ctx)
        except Exception:
            _tracing_failed('worker_started')
            return None

    def worker_finished(self, worker_ctx, token, error):
        if token is not None:
            try:
                self._finish(worker_ctx, token, error)
            except Exception:
                _tracing_failed('worker_finished')

    def _start(self, worker_ctx):
        entrypoint = worker_ctx.entrypoint
        origin = worker_ctx.origin
        spec = self._specs.get(entrypoint)
        if spec is None:
            spec = self._specs[entrypoint] = _make_spec(entrypoint, origin)
        message = origin if spec.origin == 'message' else None

        if spec.origin == 'http' and origin is not None:
            started = origin.environ.get(_ENVIRON_KEY)
            if started is not None:
                # the request's span, opened by the web server: the worker
                # adds to it, and the server ends it with the response
                span, context = started
                owned = False
            else:  # a router that does not observe: a span of our own
                parent = _http_parent(origin.environ)
                span = self._tracer.start_span(
                    _http_span_name(origin.environ.get('REQUEST_METHOD')),
                    context=parent, kind=SpanKind.SERVER)
                if span.is_recording():
                    span.set_attributes(_http_attributes(origin.environ))
                context = trace.set_span_in_context(span, parent)
                owned = True
        else:
            name = spec.name
            parent = None  # the current context: a new trace
            if message is not None:
                # the sender's span (and baggage), if the headers carry it
                headers = message.headers
                if _carries_context(headers, _header_fields):
                    parent = propagate.extract(
                        headers, getter=_headers_getter)
                if name is None:
                    name = 'process ' + (
                        message.method.exchange or DEFAULT_EXCHANGE)
            span = self._tracer.start_span(
                name or '{}.{}'.format(worker_ctx.service_name,
                                       entrypoint.method_name),
                context=parent, kind=spec.span_kind)
            context = trace.set_span_in_context(span, parent)
            owned = True

        # attributes only for a span that records them (not for one the
        # sampler dropped, nor without an SDK): the call id alone would
        # otherwise be made for every worker
        if span.is_recording():
            attributes = dict(spec.attributes)
            attributes['threadko.call_id'] = worker_ctx.call_id
            attributes['threadko.call_id_stack'] = worker_ctx.call_id_stack
            if worker_ctx.attempt != 1:
                attributes['threadko.attempt'] = worker_ctx.attempt
            if message is not None:
                _message_attributes(attributes, message)
            if spec.call_args:
                call_args = _call_args(
                    worker_ctx, 'http' if spec.origin == 'http' else None)
                if call_args is not None:
                    attributes['threadko.call_args'] = call_args
            span.set_attributes(attributes)
        return span, otel_context.attach(context), owned

    def _finish(self, worker_ctx, token, error):
        span, context_token, owned = token
        otel_context.detach(context_token)
        if error is not None:
            if owned:
                _record_error(span, error, status=not isinstance(
                    error, worker_ctx.entrypoint.expected_exceptions))
            else:
                # the HTTP span: its status follows the response
                span.record_exception(error)
        if owned:
            span.end()


# -- HTTP ---------------------------------------------------------------------

def _http_span_name(method):
    return method if method in _HTTP_METHODS else 'HTTP'


def _http_parent(environ):
    """The context an HTTP request's span is a child of: the current span
    when there is one (the app is served inside instrumented WSGI
    middleware), else the trace context of the request's headers."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    if not _carries_context(environ, _environ_fields):
        return None  # most requests: nothing to extract
    return propagate.extract(environ, getter=_environ_getter)


class _PropagatorFields:
    """The carrier keys of the global propagator's fields (``traceparent``,
    ``tracestate``, ``baggage`` by default), as one kind of carrier spells
    them; worked out again when the global propagator changes."""

    def __init__(self, spell):
        self._spell = spell
        self._propagator = None
        self._keys = ()

    def keys(self):
        propagator = propagate.get_global_textmap()
        if propagator is not self._propagator:
            self._keys = tuple(
                key for field in propagator.fields
                for key in self._spell(field))
            self._propagator = propagator
        return self._keys


_environ_fields = _PropagatorFields(
    lambda field: ('HTTP_' + field.upper().replace('-', '_'),))
_header_fields = _PropagatorFields(
    lambda field: (field, _NAMEKO_PREFIX + field))


def _carries_context(carrier, fields):
    """Whether ``carrier`` has any header the propagator reads: extracting
    from one without costs far more than this check."""
    for key in fields.keys():
        if key in carrier:
            return True
    return False


def _split_host(host):
    """``(name, port)`` of a Host header (``port`` may be '')."""
    if host.startswith('['):  # an IPv6 literal
        name, _, rest = host[1:].partition(']')
        return name, rest[1:] if rest.startswith(':') else ''
    name, _, port = host.partition(':')
    return name, port


def _http_attributes(environ):
    method = environ.get('REQUEST_METHOD', '')
    attributes = {
        'http.request.method':
            method if method in _HTTP_METHODS else '_OTHER',
        'url.path': environ.get('PATH_INFO') or '/',
        'url.scheme': environ.get('wsgi.url_scheme', 'http'),
    }
    if method not in _HTTP_METHODS:
        attributes['http.request.method_original'] = method
    host = environ.get('HTTP_HOST')
    if host:
        name, port = _split_host(host)
    else:
        name, port = environ.get('SERVER_NAME', ''), ''
    if name:
        attributes['server.address'] = name
    if not port.isdigit():
        port = environ.get('SERVER_PORT') or ''
    if port.isdigit():
        attributes['server.port'] = int(port)
    remote = environ.get('REMOTE_ADDR')
    if remote:
        attributes['client.address'] = remote
    # (each attribute costs the SDK a validation per span: the protocol
    # version and user agent, recommended only, are left out)
    return attributes


class _HttpTracing:
    """The request observer of :class:`Tracing`: one ``SERVER`` span per
    HTTP request, named ``"{method} {route}"`` once routed, with the
    response's status code (5xx: ERROR)."""

    def __init__(self, tracer):
        self._tracer = tracer

    def request_started(self, request):
        try:
            return self._start(request)
        except Exception:
            _tracing_failed('request_started')
            return None

    def request_finished(self, token, request, rule, response, error):
        if token is not None:
            try:
                self._finish(token, request, rule, response, error)
            except Exception:
                _tracing_failed('request_finished')

    def _start(self, request):
        environ = request.environ
        parent = _http_parent(environ)
        span = self._tracer.start_span(
            _http_span_name(environ.get('REQUEST_METHOD')),
            context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(_http_attributes(environ))
        # for the worker to make current: the span, with the baggage the
        # request brought
        environ[_ENVIRON_KEY] = (span, trace.set_span_in_context(span, parent))
        return span

    def _finish(self, span, request, rule, response, error):
        if not span.is_recording():
            span.end()
            return
        attributes = {}
        if rule is not None:
            span.update_name('{} {}'.format(
                _http_span_name(request.environ.get('REQUEST_METHOD')),
                rule.rule))
            attributes['http.route'] = rule.rule
        if response is not None:
            status = response.status_code
            attributes['http.response.status_code'] = status
            if status >= 500:
                attributes['error.type'] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            error_id = getattr(response, 'error_id', None)
            if error_id is not None:
                attributes['threadko.error_id'] = str(error_id)
        span.set_attributes(attributes)
        if error is not None:
            _record_error(span, error)
        span.end()
