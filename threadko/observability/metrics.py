"""Prometheus metrics of threadko's services (needs ``threadko[metrics]``).

Imported only when ``METRICS_ADDRESS`` is set. Everything goes to
``prometheus_client``'s default registry, so the application's own metrics
are served on the same ``/metrics``. Each metric object is made once per
process (:meth:`Metrics.get`).

What changes with every call (calls, latencies, HTTP requests, confirm
latencies) is counted as it happens, with the labelled children cached.
What is a state (busy workers, open connections) or is counted anyway by
the AMQP objects on their own threads (deliveries, reconnects, returns) is
read when Prometheus scrapes, by a collector that walks the containers
being served: a container that stopped drops out of those series.

See ``docs/observability.rst`` for the list of metrics and their labels.
"""

import threading
import time

from threadko.observability import WorkerInstrument, entrypoint_kind, require

#: the ``route`` label of requests no rule matched (404, 405, and 413
#: refused before routing); their ``service`` label is ``""``
UNMATCHED_ROUTE = '(unmatched)'

#: HTTP methods labelled as they are; any other is labelled ``other``, so
#: that clients cannot make up label values
HTTP_METHODS = frozenset([
    'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE',
    'CONNECT'])

#: histogram buckets (seconds) of worker and HTTP request durations
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: histogram buckets (seconds) of publish confirm latencies
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the ``connection`` label of a container's consumer connection
CONSUMER_CONNECTION = 'consumer'

OUTCOMES = ('success', 'expected_error', 'error')


class Metrics:
    """The process's threadko metrics (one instance: :meth:`get`).

    :raises ConfigurationError: ``prometheus_client`` is not installed
    """

    _instance = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls):
        """The process's instance, made (and registered with
        ``prometheus_client.REGISTRY``) on first use.

        :raises ConfigurationError: ``threadko[metrics]`` is not installed
        """
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        prometheus = require(
            'prometheus_client', 'metrics', 'METRICS_ADDRESS')
        Counter, Histogram = prometheus.Counter, prometheus.Histogram
        self.registry = prometheus.REGISTRY
        entrypoint = ['service', 'entrypoint', 'method']
        self.calls = Counter(
            'threadko_entrypoint_calls',
            'Workers run, by outcome: success, expected_error (an '
            "exception in the entrypoint's expected_exceptions) or error",
            entrypoint + ['outcome'], registry=self.registry)
        self.durations = Histogram(
            'threadko_entrypoint_duration_seconds',
            'How long workers took, dependency hooks and reply included',
            entrypoint, buckets=DURATION_BUCKETS, registry=self.registry)
        self.http_requests = Counter(
            'threadko_http_requests',
            'HTTP requests answered, by route rule and status',
            ['service', 'method', 'route', 'status'],
            registry=self.registry)
        self.http_durations = Histogram(
            'threadko_http_request_duration_seconds',
            'How long HTTP requests took until their response was made',
            ['service', 'method', 'route'], buckets=DURATION_BUCKETS,
            registry=self.registry)
        self.confirm_durations = Histogram(
            'threadko_publish_confirm_duration_seconds',
            'How long the broker took to confirm a published message',
            ['service'], buckets=CONFIRM_BUCKETS, registry=self.registry)
        self._agents = ()  # replaced, never changed: read without the lock
        self._agents_lock = threading.Lock()
        self._http_observer = HttpObserver(self)
        self.registry.register(_ScrapeCollector(self))

    # -- the containers read at scrape time ---------------------------------

    def track(self, source):
        """Read ``source`` at every scrape, until :meth:`untrack`: the
        :class:`~threadko.observability.server.ObservabilityAgent` of a
        container, with its ``container``, its ``consumers``
        (:class:`~threadko.amqp.consumer.QueueConsumer`), ``pools``
        (:class:`~threadko.amqp.publish.ProducerPool`) and
        ``websocket_servers``."""
        with self._agents_lock:
            if source not in self._agents:
                self._agents = self._agents + (source,)

    def untrack(self, source):
        with self._agents_lock:
            self._agents = tuple(a for a in self._agents if a is not source)

    # -- what the core and the amqp objects call ----------------------------

    def worker_instrument(self, service_name):
        """A new :class:`EntrypointInstrument` for a container of
        ``service_name``."""
        return EntrypointInstrument(self, service_name)

    def http_observer(self):
        """The :class:`HttpObserver` (one per process, so that a router
        shared by several containers observes each request once)."""
        return self._http_observer

    def confirm_observer(self, service_name):
        """``fn(seconds)`` recording a confirm latency of a publish of
        ``service_name`` (for ``observe_confirm`` of the AMQP
        publishers)."""
        return self.confirm_durations.labels(service_name).observe


class EntrypointInstrument(WorkerInstrument):
    """Counts a container's workers by outcome and times them (the
    ``threadko_entrypoint_*`` metrics). Workers in flight are counted at
    scrape time."""

    def __init__(self, metrics, service_name):
        self._metrics = metrics
        self.service_name = service_name
        # entrypoint -> (success, expected_error, error, duration) children
        self._children = {}

    def children(self, entrypoint):
        """The labelled metric children of ``entrypoint`` (made on first
        use; :meth:`prepare` makes them ahead, so that their series exist
        with 0 before the first call)."""
        children = self._children.get(entrypoint)
        if children is None:
            labels = (self.service_name, entrypoint_kind(entrypoint),
                      getattr(entrypoint, 'method_name', ''))
            calls = self._metrics.calls
            children = tuple(
                calls.labels(*labels, outcome) for outcome in OUTCOMES
            ) + (self._metrics.durations.labels(*labels),)
            # several workers may make them at once: the same children
            self._children[entrypoint] = children
        return children

    def prepare(self, entrypoints):
        for entrypoint in entrypoints:
            self.children(entrypoint)

    def worker_started(self, worker_ctx):
        return time.monotonic()

    def worker_finished(self, worker_ctx, token, error):
        elapsed = time.monotonic() - token
        entrypoint = worker_ctx.entrypoint
        children = self._children.get(entrypoint)
        if children is None:
            children = self.children(entrypoint)
        if error is None:
            children[0].inc()
        elif _is_expected(error, entrypoint):
            children[1].inc()
        else:
            children[2].inc()
        children[3].observe(elapsed)


def _is_expected(error, entrypoint):
    try:
        return isinstance(
            error, getattr(entrypoint, 'expected_exceptions', ()))
    except TypeError:  # not a class or tuple of classes: the core logs it
        return False


class HttpObserver:
    """Counts and times the HTTP requests of a
    :class:`~threadko.web.server.Router` (see its ``observe``): one
    ``route`` label value per url rule (``/items/<int:id>``), never per
    url; :data:`UNMATCHED_ROUTE` for requests no rule matched."""

    def __init__(self, metrics):
        self._requests = metrics.http_requests
        self._durations = metrics.http_durations
        self._counters = {}  # (service, method, route, status) -> child
        self._timers = {}  # (service, method, route) -> child

    def request_started(self, request):
        return time.monotonic()

    def request_finished(self, token, request, rule, response, error):
        elapsed = time.monotonic() - token
        method = request.method
        if method not in HTTP_METHODS:
            method = 'other'
        if rule is None:
            service, route = '', UNMATCHED_ROUTE
        else:
            service, route = _service_of(rule.endpoint), rule.rule
        status = 500 if response is None else response.status_code
        key = (service, method, route, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._requests.labels(
                service, method, route, str(status))
        counter.inc()
        key = key[:3]
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = self._durations.labels(*key)
        timer.observe(elapsed)


def _service_of(extension):
    try:
        return extension.container.service_name
    except (AttributeError, ReferenceError):  # unbound, or its container
        return ''                               # is gone


class _ScrapeCollector:
    """Reads the tracked containers when Prometheus scrapes (see the
    module docstring)."""

    def __init__(self, metrics):
        self._metrics = metrics
        from prometheus_client.core import (
            CounterMetricFamily, GaugeMetricFamily,
        )

        self._gauge = GaugeMetricFamily
        self._counter = CounterMetricFamily

    def _families(self):
        gauge, counter = self._gauge, self._counter
        service = ['service']
        return {
            'workers_max': gauge(
                'threadko_workers_max',
                'Workers a container runs at once (max_workers)',
                labels=service),
            'workers_busy': gauge(
                'threadko_workers_busy', 'Workers running now',
                labels=service),
            'workers_waiting': gauge(
                'threadko_workers_waiting',
                'Calls waiting for a free worker: deliveries held by the '
                'consumer and threads blocked on a worker slot',
                labels=service),
            'in_flight': gauge(
                'threadko_entrypoint_in_flight',
                'Workers of the entrypoint running now',
                labels=['service', 'entrypoint', 'method']),
            'deliveries': counter(
                'threadko_consumer_deliveries',
                'Messages the broker delivered from the queue',
                labels=['service', 'queue']),
            'redeliveries': counter(
                'threadko_consumer_redeliveries',
                'Deliveries the broker flagged as redelivered',
                labels=['service', 'queue']),
            'unacked': gauge(
                'threadko_consumer_unacked',
                'Deliveries on the current connection not yet acked or '
                'rejected', labels=['service', 'queue']),
            'connection_up': gauge(
                'threadko_broker_connection_up',
                '1 while the broker connection is up, else 0',
                labels=['service', 'connection']),
            'reconnects': counter(
                'threadko_broker_reconnects',
                'Times a lost broker connection was replaced',
                labels=['service', 'connection']),
            'returns': counter(
                'threadko_publish_returns',
                'Published messages the broker returned as unroutable',
                labels=service),
            'nacks': counter(
                'threadko_publish_nacks',
                'Published messages the broker refused (nacked)',
                labels=service),
            'websockets': gauge(
                'threadko_websocket_connections', 'Open websockets',
                labels=service),
        }

    def describe(self):
        return list(self._families().values())

    def collect(self):
        values = {name: {} for name in self._families()}
        for source in self._metrics._agents:
            try:
                _read_container(source, values)
            except ReferenceError:
                continue  # its container was garbage collected meanwhile
        families = self._families()
        for name, family in families.items():
            for labels, value in values[name].items():
                family.add_metric(labels, value)
        return list(families.values())


def _add(values, name, labels, value, combine=sum):
    """Add a sample; a label set seen twice (two containers of one
    service in the process, two consumers of one queue) is combined."""
    series = values[name]
    if labels in series:
        value = combine((series[labels], value))
    series[labels] = value


def _read_container(source, values):
    container = source.container
    service = container.service_name
    labels = (service,)
    waiting = container.workers_waiting
    _add(values, 'workers_max', labels, container.max_workers)
    _add(values, 'workers_busy', labels, container.busy_workers)

    in_flight = {entrypoint: 0 for entrypoint in container.entrypoints}
    for worker_ctx in container.running_workers():
        entrypoint = worker_ctx.entrypoint
        in_flight[entrypoint] = in_flight.get(entrypoint, 0) + 1
    for entrypoint, count in in_flight.items():
        _add(values, 'in_flight',
             (service, entrypoint_kind(entrypoint),
              getattr(entrypoint, 'method_name', '')), count)

    returns = nacks = 0
    for consumer in source.consumers:
        waiting += consumer.waiting
        connection = (service, CONSUMER_CONNECTION)
        _add(values, 'connection_up', connection, int(consumer.connected),
             combine=min)
        _add(values, 'reconnects', connection, consumer.reconnects)
        for stats in consumer.queue_stats():
            queue = (service, stats.queue)
            _add(values, 'deliveries', queue, stats.deliveries)
            _add(values, 'redeliveries', queue, stats.redeliveries)
            _add(values, 'unacked', queue, max(0, stats.unacked))
        publisher = consumer.publisher
        if publisher is not None:
            returns += publisher.returns
            nacks += publisher.nacks
    for pool in source.pools:
        returns += pool.returns
        nacks += pool.nacks
    if source.consumers or source.pools:
        _add(values, 'returns', labels, returns)
        _add(values, 'nacks', labels, nacks)
    _add(values, 'workers_waiting', labels, waiting)

    if source.websocket_servers:
        _add(values, 'websockets', labels,
             sum(len(server.sockets) for server in source.websocket_servers))
