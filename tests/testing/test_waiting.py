import sys
import threading
from functools import partial

import pytest

from threadko.testing.waiting import WaitResult, WaitTimeout, wait_for_call

WAIT = 5


class Adder:
    def add(self, x, y):
        return x + y

    def fail(self, message):
        raise ValueError(message)


def call_in_thread(fn, *args):
    """Call ``fn(*args)`` on another thread; return its outcome."""
    outcome = {}

    def run():
        try:
            outcome['result'] = fn(*args)
        except Exception as exc:
            outcome['error'] = exc

    thread = threading.Thread(target=run, name='test-caller')
    thread.start()
    thread.join(WAIT)
    return outcome


# -- WaitResult ------------------------------------------------------------

def test_wait_result_not_ready():
    result = WaitResult()
    assert not result.has_result
    with pytest.raises(WaitResult.NotReady):
        result.get()


def test_wait_result_first_send_wins():
    result = WaitResult()
    assert result.send('first', None)
    assert not result.send('second', None)
    assert result.has_result
    assert result.get() == 'first'


def test_wait_result_none_is_a_result():
    result = WaitResult()
    result.send(None, None)
    assert result.has_result
    assert result.get() is None


def test_wait_result_reraises():
    result = WaitResult()
    try:
        raise KeyError('boom')
    except KeyError:
        result.send(None, sys.exc_info())
    with pytest.raises(KeyError, match='boom'):
        result.get()


# -- wait_for_call ---------------------------------------------------------

def test_waits_for_a_call_from_another_thread():
    adder = Adder()
    with wait_for_call(adder, 'add', timeout=WAIT) as result:
        outcome = call_in_thread(adder.add, 1, 2)

    assert outcome == {'result': 3}  # the caller is unaffected
    assert result.get() == 3


def test_patch_is_removed_after_the_block():
    adder = Adder()
    with wait_for_call(adder, 'add', timeout=WAIT):
        assert adder.add(1, 1) == 2
    assert 'add' not in vars(adder)
    assert adder.add(2, 2) == 4


def test_callback_chooses_the_call():
    adder = Adder()
    seen = []

    def callback(args, kwargs, res, exc_info):
        seen.append((args, kwargs, res))
        return res > 10

    with wait_for_call(adder, 'add', callback=callback, timeout=WAIT) as result:
        adder.add(1, 2)
        call_in_thread(partial(adder.add, 5, y=6))

    assert result.get() == 11
    assert seen == [((1, 2), {}, 3), ((5,), {'y': 6}, 11)]


def test_exception_reaches_the_caller_and_the_result():
    adder = Adder()
    with wait_for_call(adder, 'fail', timeout=WAIT) as result:
        outcome = call_in_thread(adder.fail, 'nope')

    assert isinstance(outcome['error'], ValueError)
    with pytest.raises(ValueError, match='nope'):
        result.get()


def test_calls_before_the_block_do_not_count():
    adder = Adder()
    adder.add(1, 2)
    with pytest.raises(WaitTimeout, match=r'add within 0\.05 seconds'):
        with wait_for_call(adder, 'add', timeout=0.05):
            pass


def test_timeout_when_no_call_matches():
    adder = Adder()
    with pytest.raises(WaitTimeout):
        with wait_for_call(adder, 'add', callback=lambda *a: False,
                           timeout=0.05):
            adder.add(1, 2)
    assert 'add' not in vars(adder)


def test_callback_error_is_raised_at_exit_not_in_the_caller():
    adder = Adder()

    def callback(args, kwargs, res, exc_info):
        raise RuntimeError('bad callback')

    with pytest.raises(RuntimeError, match='bad callback'):
        with wait_for_call(adder, 'add', callback=callback, timeout=WAIT):
            assert call_in_thread(adder.add, 1, 2) == {'result': 3}


def test_patching_a_class():
    with wait_for_call(Adder, 'add', timeout=WAIT) as result:
        assert Adder().add(2, 3) == 5
    assert result.get() == 5
    assert Adder().add(1, 1) == 2
