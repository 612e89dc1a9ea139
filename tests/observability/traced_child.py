"""The services of the two-process tracing test, for ``threadko run
traced_child:Stock traced_child:Emails`` in a child process.

Importing this module sets up OpenTelemetry's SDK as an application
would, with an exporter that prints every ended span as one line on
stdout: ``SPAN <name><TAB><record as JSON>`` (see
:func:`tracing_support.to_record`), under the resource ``service.name``
``threadko-child``.
"""

import json
import sys
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor, SpanExporter, SpanExportResult,
)

from traced_services import Emails, Stock
from tracing_support import to_record

__all__ = ['Emails', 'Stock']


class PrintingExporter(SpanExporter):
    def __init__(self):
        self._lock = threading.Lock()

    def export(self, spans):
        with self._lock:
            for span in spans:
                sys.stdout.write('SPAN {}\t{}\n'.format(
                    span.name, json.dumps(to_record(span))))
            sys.stdout.flush()
        return SpanExportResult.SUCCESS


provider = TracerProvider(
    resource=Resource.create({'service.name': 'threadko-child'}))
provider.add_span_processor(SimpleSpanProcessor(PrintingExporter()))
trace.set_tracer_provider(provider)
