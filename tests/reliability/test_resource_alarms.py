"""RabbitMQ resource alarms: while a node is low on memory (or disk) it
blocks every connection that publishes. Publishes give up after
``PUBLISH_BLOCKED_TIMEOUT`` with a :class:`PublishBlocked` that names the
alarm, a warning is logged when blocking starts and ends, consumers keep
consuming, replies wait for the alarm to clear, and everything resumes by
itself afterwards.

The alarm is raised for real, with ``rabbitmqctl
set_vm_memory_high_watermark``: it is node-wide, and other tests may be
using the node, so each window is a few seconds, the watermark is always
restored (to exactly what it was) and the fixture waits until the alarm is
gone; a detached watchdog process restores it even if this process dies.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from threadko.amqp.entities import Queue
from threadko.events import event_handler
from threadko.exceptions import PublishBlocked
from threadko.messaging import consume
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

RABBITMQCTL = shutil.which('rabbitmqctl') or shutil.which(
    'rabbitmqctl', path='/usr/sbin:/sbin')
CTL_TIMEOUT = 30
#: the watchdog restores the watermark after this many seconds at most
WATCHDOG = 25
WAIT = 15  # seconds for anything that should happen promptly
BLOCKED_TIMEOUT = 1.5  # PUBLISH_BLOCKED_TIMEOUT of these tests


def _ctl(*args):
    return subprocess.run(
        [RABBITMQCTL, '-q', *args], check=True, capture_output=True,
        text=True, timeout=CTL_TIMEOUT).stdout.strip()


def _memory_alarm_on():
    return 'memory' in _ctl('eval', 'rabbit_alarm:get_alarms().')


def _watermark_args():
    """The arguments of set_vm_memory_high_watermark that restore the
    current watermark exactly."""
    value = _ctl('eval', 'vm_memory_monitor:get_vm_memory_high_watermark().')
    absolute = re.fullmatch(r'\{absolute,\s*(\d+)\}', value)
    if absolute:
        return ['absolute', absolute.group(1)]
    relative = re.fullmatch(r'(?:\{relative,\s*)?([0-9.eE+-]+)\}?', value)
    if not relative:
        pytest.skip('cannot read the memory watermark: {!r}'.format(value))
    return [relative.group(1)]


class MemoryAlarm:
    """Raises and clears a memory alarm on the local node."""

    def __init__(self):
        self.restore_args = None
        self.watchdog = None

    def raise_(self):
        if _memory_alarm_on():
            pytest.skip('a memory alarm is on already (someone else\'s)')
        self.restore_args = _watermark_args()
        restore = ' '.join([RABBITMQCTL, '-q',
                            'set_vm_memory_high_watermark']
                           + self.restore_args)
        # restores the watermark even if this process is killed
        self.watchdog = subprocess.Popen(
            ['sh', '-c', 'sleep {}; exec {}'.format(WATCHDOG, restore)],
            start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        _ctl('set_vm_memory_high_watermark', '0.00001')
        deadline = time.monotonic() + WAIT
        while not _memory_alarm_on():
            assert time.monotonic() < deadline, 'the alarm did not go on'

    def clear(self):
        """Restore the watermark; return once the alarm is gone."""
        if self.restore_args is None:
            return
        try:
            _ctl('set_vm_memory_high_watermark', *self.restore_args)
            deadline = time.monotonic() + CTL_TIMEOUT
            while _memory_alarm_on():
                if time.monotonic() > deadline:
                    raise AssertionError('the memory alarm did not clear')
        finally:
            self.restore_args = None
            watchdog, self.watchdog = self.watchdog, None
            if watchdog is not None:
                try:
                    os.killpg(watchdog.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                watchdog.wait()


@pytest.fixture
def memory_alarm(rabbit_manager):
    if RABBITMQCTL is None:
        pytest.skip('rabbitmqctl is not installed here')
    alarm = MemoryAlarm()
    try:
        yield alarm
    finally:  # KeyboardInterrupt and pytest-timeout's included
        alarm.clear()


def wait_for_log(caplog, text, count=1, timeout=WAIT):
    """Poll the captured records until ``count`` contain ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in caplog.records if text in r.getMessage()]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, 'nothing logged {!r}'.format(text)
        time.sleep(0.05)  # polling the log records of other threads


class Recorder:
    def __init__(self):
        self.items = []
        self.changed = threading.Condition()

    def add(self, item):
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, count, timeout=WAIT):
        return self.wait_until(lambda items: len(items) >= count, timeout)

    def wait_until(self, predicate, timeout=WAIT):
        with self.changed:
            return self.changed.wait_for(
                lambda: predicate(self.items), timeout)


def run_in_thread(function):
    """Run ``function()`` on a thread; return ``outcome()`` that joins it
    and returns ``(seconds it took, result or exception)``."""
    result = {}

    def target():
        began = time.monotonic()
        try:
            result['value'] = function()
        except Exception as exc:
            result['value'] = exc
        result['took'] = time.monotonic() - began

    thread = threading.Thread(target=target)
    thread.start()

    def outcome(timeout=WAIT):
        thread.join(timeout)
        assert not thread.is_alive(), 'still waiting after {} s'.format(
            timeout)
        return result['took'], result['value']
    return outcome


def slow_service(started, gate):
    """A service whose ``wait()`` sets ``started``, then answers once
    ``gate`` is set."""
    class Slow:
        name = 'slow'

        @rpc
        def wait(self):
            started.set()
            assert gate.wait(WAIT * 2)
            return 'done'
    return Slow


WORK = Queue('work')


@pytest.mark.timeout(120)
def test_publishes_give_up_during_an_alarm_consumers_go_on_and_all_resumes(
        rabbit_config, rabbit_manager, containers, memory_alarm, caplog):
    config = dict(rabbit_config, PUBLISH_BLOCKED_TIMEOUT=BLOCKED_TIMEOUT)
    events, work = Recorder(), Recorder()
    gate = threading.Event()

    class Sink:
        name = 'sink'

        @event_handler('source', 'ping')
        def on_ping(self, payload):
            events.add(payload)

        @rpc
        def echo(self, value):
            return value

    class Worker:
        """Consumes, one message at a time, and publishes nothing."""
        name = 'worker'

        @consume(WORK)
        def handle(self, payload):
            assert gate.wait(WAIT * 2)
            work.add(payload)

    containers(Sink, config).start()
    containers(Worker, dict(config, max_workers=1)).start()
    dispatch = event_dispatcher(config)
    client = ClusterRpcProxy(config, timeout=WAIT * 2)
    rpc_proxy = client.start()
    try:
        dispatch('source', 'ping', 'before')  # warm connections
        assert rpc_proxy.sink.echo('before') == 'before'
        assert events.wait_for(1)
        for number in range(3):
            rabbit_manager.publish(
                rabbit_config['vhost'], '', 'work', number)

        with caplog.at_level(logging.WARNING):
            memory_alarm.raise_()

            # consumers go on consuming and acking: with prefetch 1 each
            # message is only delivered once the one before was acked
            gate.set()
            assert work.wait_for(3)
            assert sorted(work.items) == [0, 1, 2]

            # publishes give up after the timeout, naming the alarm
            dispatched = run_in_thread(
                lambda: dispatch('source', 'ping', 'during'))
            called = run_in_thread(lambda: rpc_proxy.sink.echo('during'))
            for outcome in (dispatched, called):
                took, error = outcome()
                assert isinstance(error, PublishBlocked), error
                assert BLOCKED_TIMEOUT - 0.5 <= took < BLOCKED_TIMEOUT + 3
                assert 'low on memory' in str(error)
                assert 'PUBLISH_BLOCKED_TIMEOUT' in str(error)
            assert _memory_alarm_on()  # all of it during the alarm

            blocked = wait_for_log(caplog, 'is blocking publishing')
            assert all('low on memory' in r.getMessage() for r in blocked)
            memory_alarm.clear()
            # the RPC client's connection outlived the alarm: it says so
            wait_for_log(caplog, 'unblocked publishing')

        # everything resumes by itself, with the same dispatcher and client
        dispatch('source', 'ping', 'after')
        assert events.wait_until(lambda items: 'after' in items)
        assert rpc_proxy.sink.echo('after') == 'after'
    finally:
        gate.set()
        client.stop()
        dispatch.close()


@pytest.mark.timeout(120)
def test_a_reply_published_during_an_alarm_arrives_once_it_clears(
        rabbit_config, containers, memory_alarm, caplog):
    config = dict(rabbit_config, PUBLISH_BLOCKED_TIMEOUT=BLOCKED_TIMEOUT)
    started, gate = threading.Event(), threading.Event()
    Slow = slow_service(started, gate)

    containers(Slow, config).start()
    try:
        with ClusterRpcProxy(config, timeout=WAIT * 2) as client:
            reply = client.slow.wait.call_async()  # confirmed before
            assert started.wait(WAIT)
            outcome = run_in_thread(reply.result)
            with caplog.at_level(logging.WARNING):
                memory_alarm.raise_()
                gate.set()
                # the reply blocks the service's connection: it is held,
                # not failed (its request stays unacked meanwhile)
                wait_for_log(
                    caplog, 'blocking publishing on the connection of '
                    'service slow')
                assert _memory_alarm_on()
                memory_alarm.clear()
                took, result = outcome()
            assert result == 'done'
            wait_for_log(caplog, 'unblocked publishing on the connection '
                         'of service slow')
            # and the service serves on
            gate.set()
            assert client.slow.wait() == 'done'
    finally:
        gate.set()


@pytest.mark.timeout(120)
def test_a_publish_whose_connection_dies_before_its_confirm_is_retried(
        rabbit_config, containers, memory_alarm, caplog):
    """At least once: the publish waits for its confirm on a connection
    the broker blocks (the alarm), the connection is closed under it, the
    pool publishes again on a new connection, and dispatch returns once
    that one is confirmed."""
    config = dict(rabbit_config, PUBLISH_BLOCKED_TIMEOUT=WATCHDOG)
    events = Recorder()

    class Sink:
        name = 'sink'

        @event_handler('source', 'ping')
        def on_ping(self, payload):
            events.add(payload)

    containers(Sink, config).start()
    dispatch = event_dispatcher(config)
    try:
        dispatch('source', 'ping', 'warm-up')
        assert events.wait_for(1)
        with caplog.at_level(logging.WARNING):
            memory_alarm.raise_()
            dispatched = run_in_thread(
                lambda: dispatch('source', 'ping', 'precious'))
            wait_for_log(caplog, 'blocking publishing on a publisher '
                         'connection')
            _ctl('close_all_connections', '--vhost', rabbit_config['vhost'],
                 'closed by threadko test')
            # published again, on a new connection (blocked too)
            wait_for_log(caplog, 'blocking publishing on a publisher '
                         'connection', count=2)
            memory_alarm.clear()
            took, error = dispatched()
        assert error is None  # dispatch returned: confirmed
        assert events.wait_until(lambda items: 'precious' in items)
        assert 1 <= events.items.count('precious') <= 2
    finally:
        dispatch.close()


@pytest.mark.timeout(120)
def test_a_container_stops_during_an_alarm_without_waiting_for_it(
        rabbit_config, containers, memory_alarm):
    """A service whose connection the broker blocks (its reply is held)
    stops within its join timeout: the connection is cut, not closed
    gracefully (the broker would not read the Close until the alarm
    clears), and the unacked request goes back to the queue."""
    join_timeout = 2.0
    config = dict(rabbit_config, PUBLISH_BLOCKED_TIMEOUT=BLOCKED_TIMEOUT,
                  THREAD_JOIN_TIMEOUT=join_timeout)
    started, gate = threading.Event(), threading.Event()
    Slow = slow_service(started, gate)

    container = containers(Slow, config)
    container.start()
    try:
        with ClusterRpcProxy(config, timeout=WAIT * 2) as client:
            client.slow.wait.call_async()
            assert started.wait(WAIT)
            memory_alarm.raise_()
            gate.set()  # its reply is held by the blocked connection
            stopped = run_in_thread(container.stop)
            took, error = stopped(WAIT * 2)
            assert error is None
            # the consumer cancel waits 5 s at most for a blocked broker
            assert took < 5 + join_timeout * 2 + 3
            assert _memory_alarm_on()  # it did not wait for the alarm
    finally:
        gate.set()
