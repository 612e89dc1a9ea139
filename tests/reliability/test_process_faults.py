"""A service process that dies (``kill -9``) or is told to stop (SIGTERM)
while it holds work: nothing is lost, in-flight work is finished on a
graceful stop, and work it had not started stays on the broker for another
instance."""

import re
import signal
import time

import pytest

from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

CALL_TIMEOUT = 30  # seconds a call may wait for its reply
STOP_WAIT = 20  # seconds for a process to exit once it should

SERVICE = '''
"""Workers announce "started <kind> <n>" on stderr, then wait until a file
named "release" exists in the current directory, then finish and announce
"finished <kind> <n>"."""

import os
import time

from threadko.events import event_handler
from threadko.rpc import rpc


def announce(text):
    os.write(2, (text + '\\n').encode())  # one write: lines never interleave


def wait_for_release():
    deadline = time.monotonic() + 60
    while not os.path.exists('release'):
        if time.monotonic() > deadline:
            raise RuntimeError('never released')
        time.sleep(0.01)  # polling a file: the test's only way in


class Faulty:
    name = 'faulty'

    @rpc
    def work(self, n):
        announce('started call {}'.format(n))
        wait_for_release()
        announce('finished call {}'.format(n))
        return n * 10

    @event_handler('jobs', 'job')
    def job(self, n):
        announce('started event {}'.format(n))
        wait_for_release()
        announce('finished event {}'.format(n))
'''


# INFO to stderr, plus the container's DEBUG line that says stop() began
LOG_STOPPING = {
    'version': 1,
    'handlers': {'stderr': {'class': 'logging.StreamHandler'}},
    'root': {'level': 'INFO', 'handlers': ['stderr']},
    'loggers': {'threadko.containers': {'level': 'DEBUG'}},
}


@pytest.fixture
def release(tmp_path):
    """``release()``: let every waiting (and later) worker finish."""
    return lambda: (tmp_path / 'release').write_text('')


def lines_with(process, verb):
    """The workers' "<verb> call|event <n>" lines, sorted."""
    pattern = re.compile(r'{} (call|event) \d+$'.format(verb))
    return sorted(line for line in process.output.splitlines()
                  if pattern.match(line))


@pytest.mark.timeout(90)
def test_kill_9_with_unacked_work_a_second_instance_does_all_of_it(
        service_process, rabbit_config, release):
    calls, events = [1, 2, 3], [4, 5, 6]
    first = service_process(SERVICE, 'faulty:Faulty',
                            config={'max_workers': 6})
    dispatch = event_dispatcher(rabbit_config)
    with ClusterRpcProxy(rabbit_config, timeout=CALL_TIMEOUT) as proxy:
        replies = [proxy.faulty.work.call_async(n) for n in calls]
        for n in events:
            dispatch('jobs', 'job', n)
        for n in calls:
            first.wait_for_line('started call {}'.format(n))
        for n in events:
            first.wait_for_line('started event {}'.format(n))

        first.proc.kill()  # SIGKILL: no cleanup of any kind
        assert first.wait(STOP_WAIT) == -signal.SIGKILL
        assert lines_with(first, 'finished') == []

        release()
        second = service_process(SERVICE, 'faulty:Faulty')
        assert [reply.result() for reply in replies] == [10, 20, 30]
        for n in calls:
            second.wait_for_line('finished call {}'.format(n))
        for n in events:
            second.wait_for_line('finished event {}'.format(n))
        assert lines_with(second, 'started') == sorted(
            ['started call {}'.format(n) for n in calls]
            + ['started event {}'.format(n) for n in events])


@pytest.mark.timeout(90)
def test_sigterm_finishes_in_flight_work_and_leaves_the_rest_queued(
        service_process, rabbit_config, release):
    first = service_process(SERVICE, 'faulty:Faulty',
                            config={'max_workers': 2, 'LOGGING': LOG_STOPPING})
    with ClusterRpcProxy(rabbit_config, timeout=CALL_TIMEOUT) as proxy:
        replies = [proxy.faulty.work.call_async(n) for n in range(6)]
        first.wait_for_line('started call 0')
        first.wait_for_line('started call 1')

        first.send_signal(signal.SIGTERM)
        first.wait_for_line('stopping <ServiceContainer')
        release()
        # the two running workers finish and answer; the process exits 0
        assert [replies[0].result(), replies[1].result()] == [0, 10]
        assert first.wait(STOP_WAIT) == 0
        assert lines_with(first, 'started') == [
            'started call 0', 'started call 1']
        assert lines_with(first, 'finished') == [
            'finished call 0', 'finished call 1']

        # the four it never started were left on the broker for others
        second = service_process(SERVICE, 'faulty:Faulty')
        assert [reply.result() for reply in replies[2:]] == [20, 30, 40, 50]
        for n in range(2, 6):
            second.wait_for_line('finished call {}'.format(n))
        assert lines_with(second, 'started') == [
            'started call {}'.format(n) for n in range(2, 6)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize('how', ['config', 'option'])
def test_a_stop_that_outlasts_the_grace_period_is_killed_and_work_requeued(
        service_process, rabbit_config, release, how):
    grace = 1.0
    if how == 'config':
        first = service_process(
            SERVICE, 'faulty:Faulty',
            config={'max_workers': 1, 'SHUTDOWN_GRACE_PERIOD': grace})
    else:
        first = service_process(
            SERVICE, 'faulty:Faulty', config={'max_workers': 1},
            args=['--grace-period', str(grace)])
    with ClusterRpcProxy(rabbit_config, timeout=CALL_TIMEOUT) as proxy:
        reply = proxy.faulty.work.call_async(7)
        first.wait_for_line('started call 7')

        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        status = first.wait(STOP_WAIT)
        took = time.monotonic() - signalled
        assert status == 1
        assert grace <= took < grace + 5, took
        assert 'grace period' in first.wait_for_line('still stopping after')

        # the abandoned call was never acked: another instance answers it
        release()
        second = service_process(SERVICE, 'faulty:Faulty')
        assert reply.result() == 70
        second.wait_for_line('finished call 7')
