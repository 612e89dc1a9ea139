"""``threadko dead-letters`` against a real RabbitMQ: list, show, replay
(the handler then succeeds) and purge the dead letters of a handler with
retries, and clear errors for a missing queue or broker."""

import subprocess
import sys
import threading

import pytest

from support import poll

from threadko.events import event_handler
from threadko.retry import Retry
from threadko.standalone.events import event_dispatcher

pytestmark = pytest.mark.rabbit

QUEUE = 'evt-src-happened--ledger.book'
WAIT = 15


def dead_letters(*args):
    return subprocess.run(
        [sys.executable, '-m', 'threadko', 'dead-letters', *args],
        capture_output=True, text=True, timeout=60)


class Ledger:
    name = 'ledger'

    healthy = threading.Event()
    booked = []
    booked_event = threading.Condition()

    @event_handler('src', 'happened', retry=Retry(attempts=1))
    def book(self, payload):
        if not Ledger.healthy.is_set():
            raise ConnectionError('the ledger database is down')
        with Ledger.booked_event:
            Ledger.booked.append(payload)
            Ledger.booked_event.notify_all()


@pytest.fixture
def two_dead_letters(rabbit_config, rabbit_manager, containers):
    Ledger.healthy.clear()
    del Ledger.booked[:]
    containers(Ledger, rabbit_config).start()
    dispatch = event_dispatcher(rabbit_config)
    dispatch('src', 'happened', {'entry': 1})
    dispatch('src', 'happened', {'entry': 2})
    vhost = rabbit_config['vhost']
    dead_queue = QUEUE + '.dead-letters'

    def counted():
        queues = {q['name']: q for q in rabbit_manager.get_queues(vhost)}
        return queues.get(dead_queue, {}).get('messages') == 2
    poll(counted, 'the management API to count 2 dead letters', WAIT)
    return rabbit_config['AMQP_URI']


def test_list_show_replay_and_purge(two_dead_letters):
    uri = two_dead_letters
    listed = dead_letters('list', '--broker', uri, QUEUE)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == QUEUE + '.dead-letters: 2 dead letter(s)'
    assert all('ConnectionError: the ledger database is down' in line
               for line in lines[1:])
    # two workers dead-lettered them at once: in either order
    first, second = (
        next(line.split()[0] for line in lines[1:] if payload in line)
        for payload in ('{"entry": 1}', '{"entry": 2}'))

    shown = dead_letters('show', '--broker', uri, QUEUE, first)
    assert shown.returncode == 0, shown.stderr
    assert 'header x-threadko-exception: builtins.ConnectionError' in \
        shown.stdout
    assert 'header x-threadko-original-exchange: src.events' in shown.stdout
    assert 'payload: {"entry": 1}' in shown.stdout

    Ledger.healthy.set()  # the database is back: replay the first one
    replayed = dead_letters('replay', '--broker', uri, QUEUE, first)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == 'replayed 1 dead letter(s)'
    with Ledger.booked_event:
        assert Ledger.booked_event.wait_for(lambda: Ledger.booked, WAIT)
    assert Ledger.booked == [{'entry': 1}]

    left = dead_letters('list', '--broker', uri, QUEUE + '.dead-letters')
    assert left.stdout.splitlines()[0].endswith(': 1 dead letter(s)')
    assert left.stdout.splitlines()[1].startswith(second)

    purged = dead_letters('purge', '--broker', uri, QUEUE)
    assert purged.stdout.strip() == (
        'purged 1 dead letter(s) from {}.dead-letters'.format(QUEUE))
    assert dead_letters('list', '--broker', uri, QUEUE).stdout \
        .splitlines() == [QUEUE + '.dead-letters: 0 dead letter(s)']


def test_replay_all(two_dead_letters):
    Ledger.healthy.set()
    replayed = dead_letters('replay', '--all', '--broker', two_dead_letters,
                            QUEUE)
    assert replayed.stdout.strip() == 'replayed 2 dead letter(s)'
    with Ledger.booked_event:
        assert Ledger.booked_event.wait_for(
            lambda: len(Ledger.booked) == 2, WAIT)


def test_a_missing_queue_is_a_clear_error(rabbit_config):
    result = dead_letters('list', '--broker', rabbit_config['AMQP_URI'],
                          'evt-nope--nothing.here')
    assert result.returncode == 1
    assert "Error: There is no queue 'evt-nope--nothing.here.dead-letters'" \
        in result.stderr
    assert 'Traceback' not in result.stderr


def test_an_unreachable_broker_is_a_clear_error():
    from threadko.testing.utils import find_free_port
    result = dead_letters(
        'list', '--broker',
        'amqp://guest:secret@127.0.0.1:{}/'.format(find_free_port()),
        'evt-x--y.z', '-d', 'TRANSPORT_OPTIONS={max_retries: 0}')
    assert result.returncode == 1
    assert 'Error: Cannot connect to the broker at' in result.stderr
    assert 'secret' not in result.stderr
    assert 'Traceback' not in result.stderr
