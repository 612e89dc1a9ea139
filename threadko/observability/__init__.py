"""Observability: Prometheus metrics, OpenTelemetry traces, health probes
for orchestrators and JSON logs (see ``docs/observability.rst``).

Everything is off until the config switches it on, and nothing optional is
imported before that:

- ``METRICS_ADDRESS: "[host:]port"`` serves ``/metrics`` (Prometheus text,
  needs ``threadko[metrics]``), ``/health/live`` and ``/health/ready`` on
  a small server of its own, shared by every container of the process
  configured with that address;
- ``TRACING: true`` makes a span of every worker and every outgoing call
  and carries W3C trace context in AMQP and HTTP headers (needs
  ``threadko[tracing]``; spans go to OpenTelemetry's global tracer
  provider, which the application or ``opentelemetry-instrument`` sets
  up);
- :class:`threadko.observability.logs.JsonFormatter` is a logging
  formatter adding the service, entrypoint, call id and trace id of the
  worker a record was logged in.

The core calls the hooks defined here; the modules behind them
(:mod:`.metrics`, :mod:`.tracing`, :mod:`.server`) are imported only when
their config key is set.
"""

import re

from threadko.exceptions import ConfigurationError

#: ``"[host:]port"``: serve metrics and health probes there
METRICS_ADDRESS_CONFIG_KEY = 'METRICS_ADDRESS'
#: true: trace workers and outgoing calls with OpenTelemetry
TRACING_CONFIG_KEY = 'TRACING'


class WorkerInstrument:
    """Observes every worker of a container, on the worker's own thread.

    :meth:`worker_started` runs before the dependencies are injected,
    :meth:`worker_finished` after ``worker_teardown`` (also when the
    lifecycle failed); whatever the first returns is given to the second.
    """

    def worker_started(self, worker_ctx):
        return None

    def worker_finished(self, worker_ctx, token, error):
        """The worker is done.

        :param token: what :meth:`worker_started` returned
        :param error: the exception the service method raised (or the
            lifecycle, when an extension failed); None on success
        """


#: the entrypoint kinds of threadko's own entrypoints, by class
_KINDS = {
    'threadko.rpc.Rpc': 'rpc',
    'threadko.events.EventHandler': 'event_handler',
    'threadko.messaging.Consumer': 'consume',
    'threadko.web.handlers.HttpRequestHandler': 'http',
    'threadko.web.websocket.WebSocketRpc': 'websocket_rpc',
    'threadko.timer.Timer': 'timer',
}
_kind_of_class = {}


def entrypoint_kind(entrypoint):
    """The kind of ``entrypoint`` as metrics, spans and logs name it:
    ``rpc``, ``event_handler``, ``consume``, ``http``, ``websocket_rpc``
    or ``timer`` for threadko's entrypoints and their subclasses, the
    class name in snake case for any other (``MyEntrypoint`` ->
    ``my_entrypoint``)."""
    cls = type(entrypoint)
    kind = _kind_of_class.get(cls)
    if kind is None:
        for base in cls.__mro__:
            kind = _KINDS.get('{}.{}'.format(base.__module__, base.__name__))
            if kind is not None:
                break
        else:
            kind = re.sub(r'(?<!^)(?=[A-Z])', '_', cls.__name__).lower()
        _kind_of_class[cls] = kind
    return kind


def metrics_address(config):
    """The configured ``METRICS_ADDRESS``, or None when it is unset."""
    # as WEB_SERVER_ADDRESS: null, '' and the number 0 serve nothing
    return config.get(METRICS_ADDRESS_CONFIG_KEY) or None


def tracing_enabled(config):
    return bool(config.get(TRACING_CONFIG_KEY))


def instrument_container(container):
    """The :class:`WorkerInstrument` tuple for ``container`` (empty when
    nothing is switched on), binding the extensions that serve metrics and
    health to it.

    :raises ConfigurationError: a switched-on feature's extra is missing
    """
    config = container.config
    instruments = []
    if metrics_address(config) is not None:
        from threadko.observability.server import ObservabilityAgent

        agent = ObservabilityAgent().bind(container)
        container.subextensions.add(agent)
        instruments.extend(agent.worker_instruments())
    tracer = tracer_for(config)
    if tracer is not None:
        instruments.append(tracer.worker_instrument())
    return tuple(instruments)


def tracer_for(config):
    """The process's :class:`~threadko.observability.tracing.Tracing` when
    ``config`` switches tracing on, else None. The core's outgoing paths
    (RPC clients, publishers) keep it and skip every tracing step when it
    is None.

    :raises ConfigurationError: ``threadko[tracing]`` is not installed
    """
    if not tracing_enabled(config):
        return None
    from threadko.observability.tracing import Tracing

    return Tracing.get()


def http_observers(config):
    """The observers a :class:`~threadko.web.server.Router` serving a
    container with ``config`` should call for every request (see
    :meth:`~threadko.web.server.Router.observe`): the process's metrics
    and tracing, when switched on."""
    observers = []
    if metrics_address(config) is not None:
        from threadko.observability.metrics import Metrics

        observers.append(Metrics.get().http_observer())
    tracer = tracer_for(config)
    if tracer is not None:
        observers.append(tracer.http_observer())
    return tuple(observers)


def require(module_name, extra, feature):
    """Import ``module_name`` for ``feature``, or raise a
    ConfigurationError telling which extra to install."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            '{} needs {} (pip install "threadko[{}]"): {}'.format(
                feature, module_name, extra, exc)) from exc
