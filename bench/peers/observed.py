"""Observability switched on in a threadko peer: the ``threadko_observed``
target (``threadko_peer.py ... --observe``).

Tracing goes through the real OpenTelemetry SDK, set up as an application
would: a ``TracerProvider`` (default sampler: every span recorded) as the
global tracer provider, and a ``BatchSpanProcessor`` handing the ended
spans to an exporter. The exporter counts them by kind and drops them, so
what the target measures is threadko's instrumentation and the SDK's own
cost (making, recording and batching every span), not an exporter's
network cost. The counts are the proof that tracing was on.

Imported only by the observed target: the other scenarios and targets
never load OpenTelemetry (footprint's RSS stays threadko's own).
"""

import collections
import threading

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor, SpanExporter, SpanExportResult)


class CountingExporter(SpanExporter):
    """Drops every span it is given, counting them by kind (``SERVER``,
    ``CLIENT``, ``PRODUCER``, ...)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kinds = collections.Counter()

    def export(self, spans):
        kinds = collections.Counter(span.kind.name for span in spans)
        with self._lock:
            self._kinds.update(kinds)
        return SpanExportResult.SUCCESS

    def counts(self):
        with self._lock:
            return dict(self._kinds)

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


class Observed:
    """The SDK set up as this process's global tracer provider; create it
    before threadko makes any tracer."""

    def __init__(self):
        self.exporter = CountingExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        trace.set_tracer_provider(self.provider)

    def spans(self, prefix):
        """Export what the batch processor holds, then the counts so far:
        ``<prefix>_spans`` (all kinds) and ``<prefix>_span_kinds``."""
        self.provider.force_flush()
        kinds = self.exporter.counts()
        return {prefix + '_spans': sum(kinds.values()),
                prefix + '_span_kinds': kinds}

    def shutdown(self):
        self.provider.shutdown()

