"""Losing broker nodes under load: two ``threadko run`` processes of one
service, standalone clients calling it (one caller's calls are relayed by
the service to itself through an ``RpcProxy``) and dispatching events to
it, all on a failover list that starts with node 2; then node 2 is killed
(``kill -9``), brought back, and node 3 (where everyone went) is stopped
gracefully.

Counted for each queue type: events whose dispatch returned but that were
never handled (lost), calls that neither returned nor raised within their
timeout (hung), and after each node loss the longest time in which no call
succeeded (outage). Quorum queues must lose nothing and be back within
:data:`RECOVERY_GOAL`; classic queues
live on the node that declared them, so while it is down their service is
unavailable and events routed to them are dropped: the classic run shows
that, and only requires that nothing hangs.

Each run writes its figures to ``$TMPDIR/threadko-failover-<type>.json``.
"""

import json
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from support import ChildProcess, child_env, poll
from traffic import Traffic

SERVICE = '''
import time

from threadko.dependency_providers import Config
from threadko.events import event_handler
from threadko.rpc import RpcProxy, rpc


class Failover:
    name = 'failover'

    config = Config()
    itself = RpcProxy('failover', timeout=3)

    @rpc
    def echo(self, value):
        return value

    @rpc
    def relay(self, value):
        # through a proxy inside the service: its reply queue moves too
        return self.itself.echo(value)

    @event_handler('traffic', 'tick')
    def on_tick(self, payload):
        # one write per line: the two processes append to the same file
        with open(self.config['HANDLED_LOG'], 'a') as log:
            log.write('{} {}\\n'.format(payload['id'], time.time()))
'''

INSTANCES = 2
CALL_TIMEOUT = 5.0
START_WAIT = 60  # seconds for a service process to start consuming
RECOVERY_GOAL = 10.0  # seconds, for quorum queues (typically ~1 s and ~0.2 s)
OUTAGE_WAIT = 60  # seconds to wait for traffic to flow again at all
DRAIN_WAIT = 30  # seconds for the last confirmed events to be handled
STEADY_CALLS = 20  # successful calls that show traffic flows


def _handled(log_path):
    """Ids of the events the services handled, with when."""
    handled = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            event_id, at = line.split()
            handled.setdefault(int(event_id), float(at))
    return handled


class Services:
    """``INSTANCES`` ``threadko run`` processes of the service."""

    def __init__(self, tmp_path, config):
        (tmp_path / 'failover_service.py').write_text(
            textwrap.dedent(SERVICE))
        config_path = tmp_path / 'config.yaml'
        config_path.write_text(yaml.safe_dump(config))
        self.processes = [
            ChildProcess(
                [sys.executable, '-m', 'threadko', 'run', '--config',
                 str(config_path), 'failover_service:Failover'],
                str(tmp_path), child_env(), timeout=START_WAIT)
            for _ in range(INSTANCES)]

    def wait_running(self):
        for process in self.processes:
            process.wait_for_line('running services')

    def stop(self):
        """Stop gracefully; return the exit statuses."""
        for process in self.processes:
            if process.proc.poll() is None:
                process.send_signal(signal.SIGTERM)
        return [process.wait() for process in self.processes]

    def close(self):
        for process in self.processes:
            process.close()

    @property
    def output(self):
        return '\n'.join(process.output for process in self.processes)


def _wait_recovered(traffic, since, timeout):
    """Wait until a call started after ``since`` succeeded (at most
    ``timeout`` seconds); whether one did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if traffic.first_success_after(since) is not None:
            return True
        time.sleep(0.1)
    return False


def _wait_steady(traffic):
    now = time.time()
    poll(lambda: sum(1 for call in traffic.calls
                     if call.started >= now and call.error is None)
         >= STEADY_CALLS, 'calls to succeed again', OUTAGE_WAIT)


class Run:
    """The services and the traffic of one test, and the figures."""

    def __init__(self, rabbit_cluster, vhost, tmp_path, queue_type, order):
        self.handled_log = tmp_path / 'handled.log'
        self.uri = rabbit_cluster.failover_uri(vhost, order=order)
        self.services = Services(tmp_path, {
            'AMQP_URI': self.uri, 'QUEUE_TYPE': queue_type,
            'HANDLED_LOG': str(self.handled_log),
            'SHUTDOWN_GRACE_PERIOD': 20})
        self.traffic = None
        self.report = {'queue_type': queue_type}

    def __enter__(self):
        try:
            self.services.wait_running()
            self.traffic = Traffic(
                {'AMQP_URI': self.uri}, 'failover', ('echo', 'relay'),
                'traffic', 'tick', timeout=CALL_TIMEOUT).start()
            _wait_steady(self.traffic)
        except BaseException:
            self.services.close()
            raise
        return self

    def finish(self, name):
        """Stop the traffic, count, stop the services gracefully, and write
        the figures to ``$TMPDIR/threadko-failover-<name>.json``."""
        traffic = self.traffic
        hung = traffic.stop()
        confirmed = traffic.confirmed_ids()
        try:
            poll(lambda: confirmed <= set(_handled(self.handled_log)),
                 'every confirmed event to be handled', DRAIN_WAIT)
        except AssertionError:
            pass  # counted below
        handled = _handled(self.handled_log)
        self.report.update(
            calls=len(traffic.calls),
            failed_calls=sum(1 for c in traffic.calls if c.error),
            hung_calls=hung + len(traffic.late_calls()),
            events_confirmed=len(confirmed),
            events_not_confirmed=sum(
                1 for d in traffic.dispatches if d.error),
            events_lost=len(confirmed - set(handled)),
        )
        assert self.services.stop() == [0] * INSTANCES, self.services.output
        path = Path(tempfile.gettempdir()) / 'threadko-failover-{}.json'.format(
            name)
        path.write_text(json.dumps(self.report, indent=2))
        return self.report

    def __exit__(self, *exc_info):
        if self.traffic is not None:
            self.traffic.stop()
        self.services.close()


def _node_loss_run(rabbit_cluster, vhost, tmp_path, queue_type):
    with Run(rabbit_cluster, vhost, tmp_path, queue_type,
             order=(2, 3, 1)) as run:
        traffic, report = run.traffic, run.report

        # the node everyone is connected to dies, and comes back later
        killed_at = time.time()
        rabbit_cluster.kill(2)
        # with quorum queues traffic flows again long before node 2 is back
        _wait_recovered(traffic, time.time(), RECOVERY_GOAL)
        rabbit_cluster.start_node(2)
        _wait_steady(traffic)
        report['kill_outage_s'] = traffic.longest_gap(killed_at, time.time())
        report['kill_errors'] = traffic.errors_between(killed_at, time.time())

        # the node everyone moved to is stopped gracefully
        stopped_at = time.time()
        rabbit_cluster.stop_node(3)
        _wait_steady(traffic)
        report['stop_outage_s'] = traffic.longest_gap(
            stopped_at, time.time())
        report['stop_errors'] = traffic.errors_between(
            stopped_at, time.time())
        return run.finish(queue_type)


@pytest.mark.timeout(420)
def test_quorum_queues_lose_nothing_when_nodes_go(
        rabbit_cluster, cluster_config, tmp_path):
    report = _node_loss_run(
        rabbit_cluster, cluster_config['vhost'], tmp_path, 'quorum')
    assert report['hung_calls'] == 0, report
    assert report['events_lost'] == 0, report
    assert report['kill_outage_s'] <= RECOVERY_GOAL, report
    assert report['stop_outage_s'] <= RECOVERY_GOAL, report


@pytest.mark.timeout(420)
def test_classic_queues_are_unavailable_while_their_node_is_down(
        rabbit_cluster, cluster_config, tmp_path):
    report = _node_loss_run(
        rabbit_cluster, cluster_config['vhost'], tmp_path, 'classic')
    assert report['hung_calls'] == 0, report
    # the service queue lived on the killed node: calls failed until it
    # was back (the outage lasts as long as the node is down), and then
    # the service recovered by itself
    assert report['kill_errors'], report
    assert report['kill_outage_s'] > RECOVERY_GOAL, report


def _leader(rabbit_cluster, vhost, queue):
    return rabbit_cluster.api_get('queues', vhost, queue).get('leader')


def _transfer_leadership(rabbit_cluster, vhost, queue, node):
    """Move a quorum queue's leader to ``node`` (what ``rabbitmq-upgrade
    drain`` does for every queue of a node)."""
    rabbit_cluster.ctl(1, 'eval', (
        '{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{}">>, queue, '
        '<<"{}">>)), rabbit_quorum_queue:transfer_leadership(Q, \'{}\').'
    ).format(vhost, queue, node))


@pytest.mark.timeout(300)
def test_quorum_queue_leaders_move_under_running_consumers(
        rabbit_cluster, cluster_config, tmp_path):
    vhost = cluster_config['vhost']
    queues = ('rpc-failover', 'evt-traffic-tick--failover.on_tick')
    target = rabbit_cluster.node_names[2]  # tk3: no client is connected
    with Run(rabbit_cluster, vhost, tmp_path, 'quorum',
             order=(1, 2, 3)) as run:
        for queue in queues:
            assert _leader(rabbit_cluster, vhost, queue) != target
        moved_at = time.time()
        for queue in queues:
            _transfer_leadership(rabbit_cluster, vhost, queue, target)
        poll(lambda: all(_leader(rabbit_cluster, vhost, queue) == target
                         for queue in queues),
             'the leaders to move', OUTAGE_WAIT)
        _wait_steady(run.traffic)
        run.report['move_errors'] = run.traffic.errors_between(
            moved_at, time.time())
        report = run.finish('leader-move')
    assert report['hung_calls'] == 0, report
    assert report['events_lost'] == 0, report
    assert report['failed_calls'] == 0, report
