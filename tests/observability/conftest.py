"""Fixtures of the observability tests: services serving metrics and health
probes on ``METRICS_ADDRESS`` (a port the system picks), read over real
HTTP and parsed with ``prometheus_client``'s own text parser."""

import json
import uuid

import pytest

from support import http_fetch


class Scrape:
    """One ``GET /metrics``, parsed: :meth:`value` of a sample, the
    :meth:`label_values` a metric has."""

    def __init__(self, text):
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.samples = [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples]

    def matching(self, name, **labels):
        """The samples called ``name`` whose labels include ``labels``."""
        wanted = {key: str(value) for key, value in labels.items()}
        return [sample for sample in self.samples
                if sample.name == name
                and wanted.items() <= sample.labels.items()]

    def value(self, name, **labels):
        """The sum of the :meth:`matching` samples, None if there is
        none."""
        found = self.matching(name, **labels)
        if not found:
            return None
        return sum(sample.value for sample in found)

    def label_values(self, name, label, **labels):
        """The values of ``label`` among the :meth:`matching` samples."""
        return {sample.labels.get(label)
                for sample in self.matching(name, **labels)}


def _port(target):
    if isinstance(target, int):
        return target
    from threadko.observability.server import metrics_port

    port = metrics_port(target)
    assert port is not None, '{} serves no metrics'.format(target)
    return port


@pytest.fixture
def scrape():
    """``scrape(container_or_port)``: the :class:`Scrape` of its
    ``/metrics`` now."""
    def get(target):
        reply = http_fetch(_port(target), 'GET', '/metrics')
        assert reply.status == 200, reply
        assert reply.headers['Content-Type'].startswith('text/plain')
        return Scrape(reply.text)
    return get


@pytest.fixture
def scrape_until(scrape):
    """``scrape_until(container_or_port, what, [(name, labels, value),
    ...])``: scrape until every sample named (``labels`` a dict, as for
    :meth:`Scrape.value`) has its value at once, and return that
    :class:`Scrape`; fail naming ``what`` and the values last seen."""
    from support import BROKER_WAIT, poll

    def until(target, what, expected, timeout=BROKER_WAIT):
        wanted = [value for _, _, value in expected]
        last = []

        def check():
            metrics = scrape(target)
            last[:] = [metrics.value(name, **labels)
                       for name, labels, _ in expected]
            return metrics if last == wanted else None

        try:
            return poll(check, what, timeout)
        except AssertionError:
            raise AssertionError('timed out waiting for {}: {}'.format(
                what, ', '.join(
                    '{}{} is {} (wanted {})'.format(name, labels, seen, value)
                    for (name, labels, value), seen in zip(expected, last))))
    return until


@pytest.fixture
def probe():
    """``probe(container_or_port, 'ready' | 'live')``: ``(status,
    body)`` of that health probe now, the body decoded from JSON."""
    def get(target, which):
        reply = http_fetch(_port(target), 'GET', '/health/' + which)
        assert reply.headers['Content-Type'] == 'application/json'
        return reply.status, json.loads(reply.body)
    return get


@pytest.fixture
def metrics_config(rabbit_config):
    """:func:`rabbit_config` with metrics and health probes served on
    ``127.0.0.1:0`` and the web server on another system-picked port."""
    return dict(rabbit_config, METRICS_ADDRESS='127.0.0.1:0',
                WEB_SERVER_ADDRESS='127.0.0.1:0')


@pytest.fixture
def unique():
    """``unique(service_cls)``: a subclass named ``<name>-<random>``: the
    metrics registry lives as long as the process, so each test counts
    the calls of services of its own."""
    def make(service_cls):
        name = '{}-{}'.format(service_cls.name, uuid.uuid4().hex[:8])
        return type(service_cls.__name__, (service_cls,), {'name': name})
    return make
