"""Broker outages under steady RPC (standalone client to service, and on
from that service to another) and event load: the broker restarts
(``rabbitmqctl stop_app`` / ``start_app``), or drops every connection
(``close_all_connections``).

What must hold: services and standalone clients reconnect on their own
within 10 s of the broker being back; every event whose dispatch returned
(confirmed) is handled at least once; every RPC call returns its result or
raises one of the documented errors, and none outlives its timeout.
"""

import logging
import threading
import time

import pytest

from support import BROKER_WAIT

from threadko.events import event_handler
from threadko.exceptions import BrokerUnavailable, RemoteError, RpcTimeout
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

CALL_TIMEOUT = 10  # the proxy's timeout, in seconds
TIMEOUT_SLACK = 2  # what a call may take beyond it (retries end within)
RECONNECT_WITHIN = 10  # seconds after the broker is back
CALLERS = 4  # threads sharing one proxy
#: what a call may raise during an outage (see docs/reliability.md)
DOCUMENTED_ERRORS = (BrokerUnavailable, RpcTimeout)


def is_documented(outcome):
    """What a call may raise during an outage: the documented errors, or
    one of them raised in the service (its own call onwards failed)."""
    return isinstance(outcome, DOCUMENTED_ERRORS) or (
        isinstance(outcome, RemoteError)
        and outcome.exc_type == 'BrokerUnavailable')


class Handled:
    """Event payloads the service handled, with a wait."""

    def __init__(self):
        self.seen = set()
        self._cond = threading.Condition()

    def add(self, n):
        with self._cond:
            self.seen.add(n)
            self._cond.notify_all()

    def wait_for_all(self, wanted, timeout):
        with self._cond:
            self._cond.wait_for(lambda: wanted <= self.seen, timeout)
            return wanted - self.seen


class Load:
    """Callers and a dispatcher running until :meth:`finish`; every
    attempt is recorded as ``(started, ended, outcome)``, ``outcome`` being
    ``'ok'`` or the exception."""

    def __init__(self, config):
        self.config = config
        self.calls = []
        self.dispatches = []  # (started, ended, n, outcome)
        self._recorded = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._call, args=(proxy_index,),
                             name='test-caller-{}'.format(proxy_index))
            for proxy_index in range(CALLERS)]
        self._threads.append(threading.Thread(
            target=self._dispatch, name='test-dispatcher'))
        self._proxy = ClusterRpcProxy(config, timeout=CALL_TIMEOUT)

    def start(self):
        self._cluster = self._proxy.start()
        for thread in self._threads:
            thread.start()

    def finish(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + TIMEOUT_SLACK + BROKER_WAIT)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        self._proxy.stop()
        assert not alive, 'load threads still running: {}'.format(alive)

    def _call(self, index):
        n = 0
        while not self._stop.is_set():
            n += 1
            value = '{}-{}'.format(index, n)
            started = time.monotonic()
            try:
                # every other call goes on to a second service
                method = 'relay' if n % 2 else 'echo'
                result = self._cluster.outage[method](value)
                outcome = 'ok' if result == value else AssertionError(result)
            except Exception as exc:
                outcome = exc
            with self._recorded:
                self.calls.append((started, time.monotonic(), outcome))
                self._recorded.notify_all()

    def _dispatch(self):
        dispatch = event_dispatcher(self.config)
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                dispatch('outage_source', 'tick', n)
                outcome = 'ok'
            except Exception as exc:
                outcome = exc
                self._stop.wait(0.1)  # do not spin while the broker is away
            with self._recorded:
                self.dispatches.append((started, time.monotonic(), n, outcome))
                self._recorded.notify_all()

    @staticmethod
    def _first_success_after(moment, records):
        return min((ended for started, ended, *rest in records
                    if started >= moment and rest[-1] == 'ok'),
                   default=None)

    def wait_for_successes_after(self, moment, timeout):
        """Wait until a call and a dispatch that started after ``moment``
        succeeded; return how long after ``moment`` the later one ended
        (None if that did not happen within ``timeout``)."""
        def both():
            call = self._first_success_after(moment, self.calls)
            dispatch = self._first_success_after(moment, self.dispatches)
            if call is not None and dispatch is not None:
                return max(call, dispatch) - moment
            return None
        with self._recorded:
            return self._recorded.wait_for(both, timeout)


@pytest.fixture
def handled():
    return Handled()


@pytest.fixture
def service(runner_factory, rabbit_config, handled):
    class Backend:
        name = 'outage_backend'

        @rpc
        def echo(self, value):
            return value

    class Outage:
        name = 'outage'
        backend = RpcProxy('outage_backend')

        @rpc
        def echo(self, value):
            return value

        @rpc
        def relay(self, value):
            # a call from inside a worker, through the container's own
            # reply queue and connection
            return self.backend.echo(value)

        @event_handler('outage_source', 'tick')
        def on_tick(self, n):
            handled.add(n)

    runner = runner_factory(rabbit_config, Outage, Backend)
    runner.start()
    return runner


@pytest.fixture
def restart_broker(rabbitmqctl):
    def restart():
        rabbitmqctl.stop_app()
        rabbitmqctl.start_app()
    return restart


@pytest.fixture
def drop_connections(rabbitmqctl, rabbit_config):
    def drop():
        rabbitmqctl('close_all_connections', '-p', rabbit_config['vhost'],
                    'the reliability suite drops every connection')
    return drop


class LostConnections(logging.Handler):
    """Counts threadko's "Lost connection" warnings, with a wait."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        self._changed = threading.Condition()

    def emit(self, record):
        if record.getMessage().startswith('Lost connection'):
            with self._changed:
                self.count += 1
                self._changed.notify_all()

    def wait_for(self, count, timeout=BROKER_WAIT):
        with self._changed:
            assert self._changed.wait_for(
                lambda: self.count >= count, timeout), (
                'expected {} lost connections, saw {}'.format(
                    count, self.count))


@pytest.fixture
def lost_connections():
    handler = LostConnections()
    logger = logging.getLogger('threadko')
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('outage', ['restart_broker', 'drop_connections'])
def test_outage_under_load(request, service, rabbit_config, handled, outage,
                           lost_connections):
    cause_outage = request.getfixturevalue(outage)
    load = Load(rabbit_config)
    load.start()
    try:
        assert load.wait_for_successes_after(time.monotonic(), BROKER_WAIT)
        cause_outage()
        back = time.monotonic()
        # the consumers of the service and of the client both noticed
        lost_connections.wait_for(2)
        recovered_in = load.wait_for_successes_after(back, RECONNECT_WITHIN)
        assert recovered_in is not None, (
            'no call and dispatch succeeded within {}s of the broker being '
            'back'.format(RECONNECT_WITHIN))
        # and the load keeps being served for a while after
        assert load.wait_for_successes_after(time.monotonic(), BROKER_WAIT)
    finally:
        load.finish()

    # every call returned its result or raised a documented error, in time
    outcomes = [outcome for _, _, outcome in load.calls]
    undocumented = [repr(outcome) for outcome in outcomes
                    if outcome != 'ok'
                    and not is_documented(outcome)]
    assert undocumented == []
    slowest = max(ended - started for started, ended, _ in load.calls)
    assert slowest <= CALL_TIMEOUT + TIMEOUT_SLACK
    assert outcomes.count('ok') > CALLERS

    # every confirmed event was handled at least once
    confirmed = {n for _, _, n, outcome in load.dispatches if outcome == 'ok'}
    assert len(confirmed) > 1
    assert handled.wait_for_all(confirmed, BROKER_WAIT) == set()
    undocumented = [repr(outcome) for _, _, _, outcome in load.dispatches
                    if outcome != 'ok'
                    and not isinstance(outcome, BrokerUnavailable)]
    assert undocumented == []
