"""The answers of the health probes served on ``METRICS_ADDRESS``.

Each container sharing the address is in one of these states:

- ``starting``: its ``start()`` has not returned yet (it may be waiting
  for the broker);
- ``running``: started, and each of its broker consumer connections is
  up;
- ``reconnecting``: started, but a consumer connection is down (a broker
  outage; it reconnects by itself);
- ``stopping``: a graceful stop or a kill is under way (running workers
  finish, nothing new is taken);
- ``died``: it was killed by an error (an exception escaped a managed
  thread or a dependency provider's hook); it serves nothing and will not
  recover by itself.

``/health/ready`` answers 200 only when every container is ``running``;
``/health/live`` answers 200 unless a container ``died``. Both answer with
``{"status": ..., "services": {name: state}}``.
"""

import json

STARTING = 'starting'
RUNNING = 'running'
RECONNECTING = 'reconnecting'
STOPPING = 'stopping'
DIED = 'died'

# for two containers of one service: the worse state is reported
_SEVERITY = {RUNNING: 0, STARTING: 1, RECONNECTING: 2, STOPPING: 3, DIED: 4}


def container_state(container, consumers):
    """The state of a container registered with the site.

    :param consumers: its :class:`~threadko.amqp.consumer.QueueConsumer`
        extensions
    """
    if container.running:
        if all(consumer.connected for consumer in consumers):
            return RUNNING
        return RECONNECTING
    if container.stopping:
        return STOPPING
    return STARTING


def killed_state(outcome):
    """The state of a container that was killed, from its outcome (the
    container's ``_died``): ``died`` once it is known to have died of an
    error, ``stopping`` while the kill is under way, None for a kill
    without an error (the container is gone, as after a stop)."""
    if not outcome.ready():
        return STOPPING
    return DIED if outcome.exc_info is not None else None


def _by_service(states):
    services = {}
    for service, state in states:
        known = services.get(service)
        if known is None or _SEVERITY[state] > _SEVERITY[known]:
            services[service] = state
    return services


def readiness(states):
    """``(ready, body)`` for ``states``, ``(service, state)`` pairs: ready
    when there is at least one and every one is ``running``."""
    services = _by_service(states)
    ready = bool(services) and all(
        state == RUNNING for state in services.values())
    return ready, _body('ready' if ready else 'not ready', services)


def liveness(states):
    """``(live, body)`` for ``states``: live unless one ``died``."""
    services = _by_service(states)
    live = DIED not in services.values()
    return live, _body('live' if live else 'dead', services)


def _body(status, services):
    return json.dumps({'status': status, 'services': services},
                      sort_keys=True).encode('utf-8')
