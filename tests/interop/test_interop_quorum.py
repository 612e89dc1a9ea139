"""A threadko service on quorum queues (``QUEUE_TYPE: quorum``) next to
real Nameko 2.14.1 processes: Nameko clients and dispatchers reach it as
before, and a Nameko service cannot take over its quorum queue (Nameko 2
declares queues without ``x-queue-type``, which RabbitMQ 3.10 refuses for
an existing quorum queue, and Nameko retries that forever) -- what
docs/deployment.rst says about mixed deployments."""

import subprocess
import time

from threadko.events import event_handler
from threadko.rpc import rpc

from support import BROKER_WAIT, Received

START_TIMEOUT = 30  # seconds for Nameko to show what it does on start

QUORUM = {'QUEUE_TYPE': 'quorum'}


class ThreadkoEchoSvc:
    """Replaces nameko_peer's ``echo_svc``."""

    name = 'echo_svc'

    @rpc
    def echo(self, value):
        return {'impl': 'threadko', 'value': value}


def test_nameko_clients_reach_a_threadko_service_on_quorum_queues(
        container_factory, rabbit_config, rabbit_manager, nameko_driver):
    received = Received()

    class Listener:
        name = 'listener'

        @event_handler('nameko_source', 'ping')
        def on_ping(self, data):
            received.add(data)

    config = dict(rabbit_config, **QUORUM)
    container_factory(ThreadkoEchoSvc, config).start()
    container_factory(Listener, config).start()
    driver = nameko_driver()

    assert driver.call('echo_svc', 'echo', ['hi']) == {
        'impl': 'threadko', 'value': 'hi'}
    driver.dispatch('nameko_source', 'ping', {'n': 1})

    received.wait_for({'n': 1}, timeout=BROKER_WAIT)
    vhost = rabbit_config['vhost']
    assert rabbit_manager.get_queue(vhost, 'rpc-echo_svc')['type'] == 'quorum'
    assert rabbit_manager.get_queue(
        vhost, 'evt-nameko_source-ping--listener.on_ping')['type'] == 'quorum'


def test_a_nameko_service_cannot_consume_a_quorum_queue(
        container_factory, rabbit_config, nameko_services):
    container = container_factory(
        ThreadkoEchoSvc, dict(rabbit_config, **QUORUM))
    container.start()
    container.stop()  # the quorum queue rpc-echo_svc stays

    nameko = nameko_services('echo_svc', wait=False)

    # Nameko 2.14 neither starts nor gives up: its consumer takes the 406
    # for a lost connection and declares again, about once a second
    refusal = "inequivalent arg 'x-queue-type' for queue 'rpc-echo_svc'"
    assert refusals_seen(nameko, refusal, 2) >= 2, nameko.describe()
    assert nameko.proc.poll() is None
    assert 'READY' not in nameko.lines


def refusals_seen(process, text, count, timeout=START_TIMEOUT):
    """How many times ``text`` is in ``process``'s log once it is there
    ``count`` times, it exited, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        seen = process.log_path.read_text(errors='replace').count(text)
        remaining = deadline - time.monotonic()
        if seen >= count or remaining <= 0:
            return seen
        try:
            process.proc.wait(min(remaining, 0.2))  # ends early if it exits
        except subprocess.TimeoutExpired:
            continue
        return process.log_path.read_text(errors='replace').count(text)
