"""Spans for the tracing tests, as plain records anyone can compare.

OpenTelemetry lets a process set its global tracer provider once, so
:func:`collector` installs the SDK (a ``TracerProvider`` with a
``SimpleSpanProcessor``) once per process and hands every test the same
:class:`SpanCollector`, cleared. If some other code set an SDK provider
first, the collector is added to that one as another processor.

A span becomes a record (:func:`to_record`): a dict of ``name``, ``kind``
(``"SERVER"``...), ``trace_id`` and ``span_id`` (hex), ``parent_id`` (hex
or None), ``remote_parent``, ``attributes`` (sequences as lists),
``status`` (``"UNSET"``, ``"OK"``, ``"ERROR"``), ``description``,
``events`` (``[{"name", "attributes"}]``), ``resource`` and ``start``
(nanoseconds). The child
process of the two-process test (``traced_child``) prints the same
records, so one set of helpers reads both.

This module must not import the tests' ``support`` module: the child
process imports it from ``tests/observability`` alone.
"""

import json
import threading
import time

WAIT = 10  # seconds: the longest a test waits for spans to be exported

_install_lock = threading.Lock()
_collector = None


def to_record(span):
    """The record of an SDK ``ReadableSpan`` (see the module docstring)."""
    context = span.get_span_context()
    parent = span.parent
    return {
        'name': span.name,
        'kind': span.kind.name,
        'trace_id': '{:032x}'.format(context.trace_id),
        'span_id': '{:016x}'.format(context.span_id),
        'parent_id': (None if parent is None
                      else '{:016x}'.format(parent.span_id)),
        'remote_parent': bool(parent is not None and parent.is_remote),
        'attributes': _plain(span.attributes),
        'status': span.status.status_code.name,
        'description': span.status.description,
        'events': [{'name': event.name,
                    'attributes': _plain(event.attributes)}
                   for event in span.events],
        'resource': _plain(span.resource.attributes),
        'start': span.start_time,
    }


def _plain(attributes):
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in (attributes or {}).items()}


class SpanCollector:
    """The records of the spans ended in this process since :meth:`clear`,
    with a wait for the ones a test expects."""

    def __init__(self):
        self._records = []
        self._changed = threading.Condition()

    def add(self, records):
        with self._changed:
            self._records.extend(records)
            self._changed.notify_all()

    def clear(self):
        with self._changed:
            self._records = []

    @property
    def records(self):
        with self._changed:
            return list(self._records)

    def wait_for(self, check, what, timeout=WAIT):
        """Wait until ``check(records)`` is true (called again on every
        new span) and return its value; fail naming ``what`` and showing
        the spans so far after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = check(list(self._records))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            records = list(self._records)
        raise AssertionError('never got {}; spans so far:\n{}'.format(
            what, render(records)))

    def wait_for_trace(self, count, where, what=None, timeout=WAIT):
        """Wait for ``count`` spans in the trace of the first span for
        which ``where(record)`` is true; return them, oldest first."""
        def check(records):
            first = next((r for r in records if where(r)), None)
            if first is None:
                return None
            spans = in_trace(records, first['trace_id'])
            return spans if len(spans) >= count else None

        return self.wait_for(
            check, what or '{} spans in one trace'.format(count), timeout)


def collector():
    """The process's :class:`SpanCollector` (the SDK installed on first
    use), cleared."""
    global _collector
    with _install_lock:
        if _collector is None:
            _collector = _install()
    _collector.clear()
    return _collector


def _install():
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor, SpanExporter, SpanExportResult,
    )

    spans = SpanCollector()

    class Exporter(SpanExporter):
        def export(self, batch):
            spans.add([to_record(span) for span in batch])
            return SpanExportResult.SUCCESS

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider(
            resource=Resource.create({'service.name': 'threadko-tests'})))
        provider = trace.get_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(Exporter()))
    return spans


# -- reading records ----------------------------------------------------------

def in_trace(records, trace_id):
    return [r for r in records if r['trace_id'] == trace_id]


def one(records, name, kind=None):
    """The only record called ``name`` (of ``kind``, if given)."""
    found = [r for r in records if r['name'] == name
             and (kind is None or r['kind'] == kind)]
    assert len(found) == 1, 'expected one {} span {!r}, got:\n{}'.format(
        kind or 'any', name, render(records))
    return found[0]


def children(records, parent):
    return [r for r in records if r['parent_id'] == parent['span_id']]


def exception_events(record):
    return [event['attributes'] for event in record['events']
            if event['name'] == 'exception']


def everything_exported(records):
    """All the text of ``records``, for searching (names, attributes,
    events, statuses, resources)."""
    return json.dumps(records, default=repr, ensure_ascii=False)


#: the attributes :func:`render` shows
SHOWN = (
    'threadko.call_id', 'http.request.method', 'http.route',
    'http.response.status_code', 'rpc.service', 'rpc.method',
    'messaging.destination.name',
    'messaging.rabbitmq.destination.routing_key',
    'messaging.destination.subscription.name',
)


def render(records, shown=SHOWN):
    """The spans as trees, one line each: name, kind, status and a few
    attributes, children indented under their parents (those whose parent
    is missing at the top)."""
    ids = {r['span_id'] for r in records}
    roots = sorted((r for r in records if r['parent_id'] not in ids),
                   key=lambda r: r['start'])
    lines = []

    def show(record, depth):
        attributes = ' '.join(
            '{}={}'.format(key, record['attributes'][key])
            for key in shown if key in record['attributes'])
        status = '' if record['status'] == 'UNSET' else ' ' + \
            record['status']
        lines.append('{}{} [{}{}] {}'.format(
            '    ' * depth, record['name'], record['kind'], status,
            attributes).rstrip())
        for child in sorted(children(records, record),
                            key=lambda r: r['start']):
            show(child, depth + 1)

    for root in roots:
        show(root, 0)
    return '\n'.join(lines)
