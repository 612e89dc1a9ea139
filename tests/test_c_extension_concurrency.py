"""Workers blocked inside C code (a sqlite3 busy wait, ``select``) do not
block each other: they are real OS threads and the GIL is released there.

Under eventlet without monkey-patching, a worker waiting inside a C library
would freeze the whole process. These tests prove concurrency with
outcomes, not timing: each scenario can only complete if the blocked
workers are truly waiting at the same time.
"""

import select
import socket
import sqlite3
import threading

import pytest

from support import WAIT, entrypoint_for, fire


# sqlite3's busy timeout: how long a blocked statement keeps retrying
# inside the C library before it gives up with "database is locked"
BUSY_TIMEOUT = 20
WORKERS = 8


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / 'shared.sqlite')
    with sqlite3.connect(path) as connection:
        connection.execute(
            'CREATE TABLE notes (author TEXT, native_thread_id INTEGER)')
    connection.close()
    return path


def connect(path):
    """A connection with manual transactions and a long busy timeout."""
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)


def on_begin(callback):
    """A sqlite3 trace callback that calls ``callback`` once, when the
    connection's ``BEGIN IMMEDIATE`` starts running inside sqlite3."""
    called = []

    def trace(sql):
        if sql.startswith('BEGIN IMMEDIATE') and not called:
            called.append(True)
            callback()

    return trace


def test_a_worker_waiting_in_sqlite_lets_another_worker_commit(
        containers, db_path):
    writer_holds_lock = threading.Event()
    waiter_entered = threading.Event()

    class Service:
        name = 'sqlite_pair'

        @fire
        def write(self):
            connection = connect(db_path)
            try:
                connection.execute('BEGIN IMMEDIATE')
                connection.execute(
                    'INSERT INTO notes VALUES (?, ?)',
                    ('writer', threading.get_native_id()))
                writer_holds_lock.set()
                # commit only once the waiter is inside its BEGIN, which it
                # cannot get past while we hold the write lock
                saw_waiter = waiter_entered.wait(WAIT)
                connection.execute('COMMIT')
                return saw_waiter
            finally:
                connection.close()

        @fire
        def wait_then_read(self):
            connection = connect(db_path)
            try:
                connection.set_trace_callback(on_begin(waiter_entered.set))
                connection.execute('BEGIN IMMEDIATE')  # waits inside sqlite3
                rows = connection.execute(
                    'SELECT author, native_thread_id FROM notes').fetchall()
                connection.execute('COMMIT')
                return rows, threading.get_native_id()
            finally:
                connection.close()

    container = containers(Service, {'max_workers': 2})
    container.start()

    writing = entrypoint_for(container, 'write').fire()
    assert writer_holds_lock.wait(WAIT)
    waiting = entrypoint_for(container, 'wait_then_read').fire()

    # if the waiting worker blocked the process, the writer could never
    # commit and the waiter would fail with "database is locked"
    assert writing.result(timeout=BUSY_TIMEOUT + WAIT) is True
    rows, waiter_thread_id = waiting.result(timeout=BUSY_TIMEOUT + WAIT)
    [(author, writer_thread_id)] = rows
    assert author == 'writer'
    assert writer_thread_id != waiter_thread_id
    container.stop()


def test_max_workers_can_all_wait_inside_sqlite_at_once(
        containers, db_path):
    lock = threading.Lock()
    waiting = []
    all_waiting = threading.Event()

    def entered_begin():
        with lock:
            waiting.append(threading.get_native_id())
            if len(waiting) == WORKERS:
                all_waiting.set()

    class Service:
        name = 'sqlite_crowd'

        @fire
        def append(self):
            connection = connect(db_path)
            try:
                connection.set_trace_callback(on_begin(entered_begin))
                connection.execute('BEGIN IMMEDIATE')  # waits inside sqlite3
                connection.execute(
                    'INSERT INTO notes VALUES (?, ?)',
                    ('worker', threading.get_native_id()))
                connection.execute('COMMIT')
            finally:
                connection.close()

    container = containers(Service, {'max_workers': WORKERS})
    container.start()

    holder = connect(db_path)
    try:
        holder.execute('BEGIN IMMEDIATE')  # nobody can write until we say
        entrypoint = entrypoint_for(container, 'append')
        handles = [entrypoint.fire() for _ in range(WORKERS)]
        # every worker is inside its BEGIN, held there by our lock, at once
        assert all_waiting.wait(WAIT), (
            'only {} of {} workers waited at the same time'.format(
                len(waiting), WORKERS))
        holder.execute('COMMIT')
    finally:
        holder.close()

    for handle in handles:
        handle.result(timeout=BUSY_TIMEOUT + WAIT)
    container.stop()

    with sqlite3.connect(db_path) as reader:
        thread_ids = [
            row[0] for row in reader.execute(
                'SELECT native_thread_id FROM notes')]
    reader.close()
    assert len(thread_ids) == WORKERS
    assert len(set(thread_ids)) == WORKERS  # one OS thread each


def test_max_workers_can_all_wait_in_select_at_once(containers):
    lock = threading.Lock()
    entered = []
    all_entered = threading.Event()
    wake_writer, wake_reader = socket.socketpair()

    class Service:
        name = 'select_crowd'

        @fire
        def wait_readable(self):
            with lock:
                entered.append(threading.get_native_id())
                if len(entered) == WORKERS:
                    all_entered.set()
            readable, _, _ = select.select([wake_reader], [], [], WAIT * 4)
            return bool(readable)

    container = containers(Service, {'max_workers': WORKERS})
    container.start()
    try:
        entrypoint = entrypoint_for(container, 'wait_readable')
        handles = [entrypoint.fire() for _ in range(WORKERS)]
        assert all_entered.wait(WAIT), (
            'only {} of {} workers waited at the same time'.format(
                len(entered), WORKERS))
        wake_writer.send(b'x')  # readable for every waiter; nobody reads it
        # each select returned because of the byte, not its timeout
        assert [handle.result(timeout=WAIT * 5) for handle in handles] == (
            [True] * WORKERS)
        assert len(set(entered)) == WORKERS
        container.stop()
    finally:
        wake_writer.close()
        wake_reader.close()
