"""JSON log lines that say which worker logged them.

:class:`JsonFormatter` is an ordinary :class:`logging.Formatter`: put it on
a handler, in code or in the ``LOGGING`` section of the config that
``threadko run --config`` applies with :func:`logging.config.dictConfig`::

    LOGGING:
      version: 1
      formatters:
        json:
          (): threadko.observability.logs.JsonFormatter
          call_args: true
      handlers:
        console:
          class: logging.StreamHandler
          formatter: json
      root:
        level: INFO
        handlers: [console]

Every record becomes one JSON object on one line. A record logged inside a
worker also names the service, the entrypoint, the method and the call,
and, when an OpenTelemetry span is current, the trace and span.

Which records count as "inside a worker": those logged in the worker's
contextvars context (see :func:`threadko.containers.get_worker_context`),
that is

- on the worker's own thread, always: the pool thread of an RPC, event,
  ``@consume`` or timer worker, the request thread of an ``@http`` worker,
  including what the container and the dependency providers log there;
- on a thread the service method starts itself, only when that thread runs
  in a copy of the worker's context::

      ctx = contextvars.copy_context()
      threading.Thread(target=ctx.run, args=(work,)).start()
      executor.submit(contextvars.copy_context().run, work)

  A plain ``threading.Thread(target=work)`` starts with an empty context:
  its records carry no worker fields (and no trace, for the same reason).

The fields are read when the record is formatted, which is on the logging
thread for every handler that formats in ``emit`` (all of the standard
library's but :class:`~logging.handlers.QueueListener`'s): to log through
a queue, put the formatter on the :class:`~logging.handlers.QueueHandler`,
which formats before it enqueues, not on the listener's handler.
"""

import json
import logging
import re
import string
import sys
import threading
import time
import weakref

from threadko.containers import _describe as describe_exception_message
from threadko.containers import get_worker_context
from threadko.observability import entrypoint_kind
from threadko.utils import get_redacted_args

__all__ = ['JsonFormatter', 'FIELDS', 'redacted_call_args']

#: every field the formatter can write besides ``extra=`` values, in the
#: order it writes them (``call_args`` only with ``call_args=True``)
FIELDS = (
    'timestamp', 'level', 'logger', 'message', 'thread',
    'service', 'entrypoint', 'method', 'call_id', 'call_id_stack',
    'trace_id', 'span_id', 'call_args', 'exception', 'stack',
)
_WORKER_FIELDS = frozenset(
    ('service', 'entrypoint', 'method', 'call_id', 'call_id_stack',
     'call_args'))

#: the attributes every LogRecord has: anything else came from ``extra=``
_RECORD_ATTRS = frozenset(
    logging.LogRecord('', 0, '', 0, '', (), None).__dict__) | {
        'message', 'asctime', 'taskName'}

#: the record attributes a ``fmt`` string names, by style
_FMT_NAMES = {
    '%': re.compile(r'%\((\w+)\)').findall,
    '$': re.compile(r'\$\{?(\w+)').findall,
    '{': lambda fmt: [
        re.match(r'\w*', name).group()
        for _, name, _, _ in string.Formatter().parse(fmt) if name],
}

# redacted call arguments, made once per worker (a deep copy each time
# would make every record of a chatty worker pay for it)
_call_args_cache = weakref.WeakKeyDictionary()
_call_args_lock = threading.Lock()


def _safe_repr(value):
    """``repr(value)``, or a placeholder if that raises too."""
    try:
        return repr(value)
    except Exception:
        return '<unrepresentable {}>'.format(type(value).__name__)


def _describe(exc):
    """``"TypeError: what it says"``, even if ``str(exc)`` raises."""
    return '{}: {}'.format(
        type(exc).__name__, describe_exception_message(exc))


def _current_span_ids():
    """``(trace_id, span_id)`` of the current OpenTelemetry span as
    lower-case hex, or None: when there is no valid span, or when
    ``opentelemetry.trace`` was never imported (this does not import it)."""
    trace = sys.modules.get('opentelemetry.trace')
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return (format(context.trace_id, '032x'),
                format(context.span_id, '016x'))
    except Exception:  # a half-imported or unusual API: no trace fields
        return None


#: how deep :func:`_plain` follows containers before giving up
_PLAIN_DEPTH = 32


def _plain(value, depth=0):
    """``value`` as JSON-ready data: strings, numbers, booleans and None
    as they are, dicts, lists, tuples and sets followed, anything else as
    ``"<TypeName>"``. Never a ``repr``: a werkzeug request's shows its
    URL, which may hold the very value redaction hides."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if depth >= _PLAIN_DEPTH:
        return '<...>'
    if isinstance(value, dict):
        return {
            key if isinstance(key, (str, int, float, bool)) or key is None
            else '<{}>'.format(type(key).__name__):
            _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item, depth + 1) for item in value]
    return '<{}>'.format(type(value).__name__)


def redacted_call_args(worker_ctx):
    """The worker's call arguments by parameter name, with the
    entrypoint's ``sensitive_arguments`` replaced by ``"********"``
    (:func:`threadko.utils.get_redacted_args`), as they were when first
    asked for. Values other than plain data are written as their type
    (``"<Request>"``). A placeholder string naming only the error's type
    when they cannot be read (showing them could leak what redaction
    hides)."""
    with _call_args_lock:
        cached = _call_args_cache.get(worker_ctx)
    if cached is not None:
        return cached
    try:
        args = get_redacted_args(
            worker_ctx.entrypoint,
            *[_plain(arg) for arg in worker_ctx.args],
            **{name: _plain(arg)
               for name, arg in worker_ctx.kwargs.items()})
    except Exception as exc:
        args = '<unavailable: {}>'.format(type(exc).__name__)
    try:
        with _call_args_lock:
            _call_args_cache[worker_ctx] = args
    except TypeError:  # a worker context without weak references
        pass
    return args


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON.

    Fields (see :data:`FIELDS`), each present only when it has a value:

    - ``timestamp``: when the record was made, ISO 8601 in UTC with
      milliseconds (``2026-12-08T10:15:02.123Z``), or as ``datefmt`` says
      (:func:`time.strftime`, in UTC) when given;
    - ``level`` (``INFO``), ``logger`` (its name), ``message`` (the
      message with its arguments), ``thread`` (the thread's name);
    - inside a worker: ``service``, ``entrypoint`` (its kind: ``rpc``,
      ``event_handler``, ``http``, ``timer``, ...), ``method``,
      ``call_id`` and ``call_id_stack`` (a list, the call itself last);
    - ``trace_id`` and ``span_id`` (lower-case hex, as OpenTelemetry
      prints them) when a valid OpenTelemetry span is current; read only
      if the application (or threadko's tracing) imported
      ``opentelemetry.trace``;
    - ``call_args`` (with ``call_args=True``, inside a worker): the call
      arguments by parameter name, redacted by the entrypoint's
      ``sensitive_arguments``, values other than plain data (an HTTP
      request) as their type name (see :func:`redacted_call_args`);
    - ``exception`` and ``stack``: the formatted traceback of
      ``exc_info`` and the ``stack_info``;
    - the record attributes ``fmt`` names, then ``static_fields``, then
      the record's ``extra=`` values (those whose names start with ``_``
      are left out). An extra value named like a field above is written
      as ``extra_<name>``: it never overwrites one.

    Values JSON cannot encode are written as their ``repr``; ``format()``
    does not raise, whatever the record holds.

    All parameters can be given in a ``LOGGING`` formatter entry with
    ``(): threadko.observability.logs.JsonFormatter`` (the ``class:`` form
    passes only ``format``, ``datefmt``, ``style`` and ``validate``).

    :param fmt: optional: a format string whose ``%(name)s`` (or
        ``{name}``/``${name}`` with ``style``) record attributes are added
        under their own names, e.g. ``"%(process)d %(funcName)s"``; as
        python-json-logger reads its format
    :param datefmt: a :func:`time.strftime` format for ``timestamp``
    :param style: ``fmt``'s style, as :class:`logging.Formatter`'s
    :param validate: check ``fmt`` against ``style``
    :param defaults: values for ``fmt``'s attributes a record lacks
    :param call_args: add ``call_args`` inside workers
    :param fields: write only these of :data:`FIELDS` (default: all)
    :param rename: ``{field: name to write it as}``, e.g. ``{"level":
        "severity", "timestamp": "@timestamp"}``
    :param static_fields: ``{name: value}`` added to every line (an
        environment, a version)
    :param extras: write the record's ``extra=`` values (default true)
    :param ensure_ascii: escape non-ASCII characters (default true, so
        that a stream with any encoding can take the line)
    :raises ValueError: an unknown field in ``fields`` or ``rename``, or
        a static field named like a field
    """

    #: timestamps are UTC, also with ``datefmt``
    converter = time.gmtime

    def __init__(self, fmt=None, datefmt=None, style='%', validate=True,
                 *, defaults=None, call_args=False, fields=None,
                 rename=None, static_fields=None, extras=True,
                 ensure_ascii=True):
        # defaults are applied here: Formatter takes them from 3.10 on
        super().__init__(fmt, datefmt, style, validate)
        self._fmt_names = tuple(dict.fromkeys(
            _FMT_NAMES[style](fmt))) if fmt else ()
        self._fmt_set = frozenset(self._fmt_names)
        self._defaults = dict(defaults or {})
        if isinstance(fields, str):
            fields = (fields,)
        selected = FIELDS if fields is None else tuple(fields)
        rename = dict(rename or {})
        for name in list(selected) + list(rename):
            if name not in FIELDS:
                raise ValueError(
                    'unknown JSON log field {!r} (known: {})'.format(
                        name, ', '.join(FIELDS)))
        if not call_args:
            selected = [name for name in selected if name != 'call_args']
        #: field -> the key it is written as, for the selected fields
        self._keys = {name: rename.get(name, name)
                      for name in FIELDS if name in selected}
        self._worker_fields = bool(_WORKER_FIELDS & set(self._keys))
        self._trace_fields = bool({'trace_id', 'span_id'} & set(self._keys))
        self._static = dict(static_fields or {})
        reserved = set(self._keys.values()) | set(self._fmt_names)
        clashes = sorted(set(self._static) & reserved)
        if clashes:
            raise ValueError('static JSON log fields named like fields: '
                             '{}'.format(', '.join(clashes)))
        # an extra= value may not take any field's key, selected or not,
        # so that a key means the same on every line
        self._taken = (reserved | set(self._static) | set(FIELDS)
                       | set(rename.values()))
        self._extras = extras
        self._ensure_ascii = ensure_ascii

    def format(self, record):
        """The record as one line of JSON (never raises)."""
        try:
            return self._encode(self.fields(record))
        except Exception as exc:
            # last resort: a line that still parses and says what failed
            try:
                message = str(record.msg)
            except Exception:
                message = _safe_repr(record.msg)
            return self._encode({
                self._keys.get('level', 'level'): getattr(
                    record, 'levelname', None),
                self._keys.get('message', 'message'): message,
                'format_error': _describe(exc),
            })

    def formatTime(self, record, datefmt=None):
        """ISO 8601 in UTC with milliseconds, or ``datefmt`` in UTC."""
        if datefmt:
            return time.strftime(datefmt, self.converter(record.created))
        return '{}.{:03d}Z'.format(
            time.strftime('%Y-%m-%dT%H:%M:%S',
                          self.converter(record.created)),
            int(record.msecs))

    def fields(self, record):
        """The dict a record is written as (override to add fields)."""
        keys = self._keys
        out = {}

        def put(name, value):
            key = keys.get(name)
            if key is not None and value is not None:
                out[key] = value

        worker_ctx = None
        record.message = self._message(record)
        put('timestamp', self.formatTime(record, self.datefmt))
        put('level', record.levelname)
        put('logger', record.name)
        put('message', record.message)
        put('thread', record.threadName)

        if self._worker_fields:
            worker_ctx = get_worker_context()
            if worker_ctx is not None:
                self._add_worker_fields(worker_ctx, put)
        if self._trace_fields:
            ids = _current_span_ids()
            if ids is not None:
                put('trace_id', ids[0])
                put('span_id', ids[1])
        if worker_ctx is not None and 'call_args' in keys:
            put('call_args', redacted_call_args(worker_ctx))

        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.formatException(exc_info)
        put('exception', record.exc_text or None)
        if record.stack_info:
            put('stack', self.formatStack(record.stack_info))

        for name in self._fmt_names:
            if name == 'asctime':
                value = self.formatTime(record, self.datefmt)
            elif name == 'message':
                value = record.message
            else:
                value = getattr(
                    record, name, self._defaults.get(name))
            out[name] = value
        out.update(self._static)
        if self._extras:
            for name, value in record.__dict__.items():
                if (name in _RECORD_ATTRS or name.startswith('_')
                        or name in self._fmt_set):
                    continue
                if name in self._taken:
                    name = 'extra_' + name
                out[name] = value
        return out

    def _message(self, record):
        try:
            return record.getMessage()
        except Exception as exc:  # arguments that do not fit the message
            return '{} (unformattable: {}; args: {})'.format(
                _safe_repr(record.msg), _describe(exc),
                _safe_repr(record.args))

    def _add_worker_fields(self, worker_ctx, put):
        try:
            entrypoint = worker_ctx.entrypoint
            put('service', worker_ctx.service_name)
            put('entrypoint', entrypoint_kind(entrypoint))
            put('method', entrypoint.method_name)
            put('call_id', worker_ctx.call_id)
            put('call_id_stack', worker_ctx.call_id_stack)
        except Exception:  # an odd WorkerContext: log what there is
            pass

    def _encode(self, fields):
        try:
            return self._dumps(fields)
        except (TypeError, ValueError):
            # a key JSON cannot take, a cycle, NaN: repr what does not go
            safe = {}
            for key, value in fields.items():
                try:
                    self._dumps(value)
                except (TypeError, ValueError):
                    value = _safe_repr(value)
                safe[str(key)] = value
            return self._dumps(safe)

    def _dumps(self, value):
        return json.dumps(value, default=_safe_repr, allow_nan=False,
                          ensure_ascii=self._ensure_ascii)
