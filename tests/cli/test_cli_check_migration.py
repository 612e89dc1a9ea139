"""``threadko check-migration PATH`` as a user runs it: on sample trees
written into the test's directory, with every greenthread pattern and
every way a dependency provider keeps per-worker state on itself, and on
a clean tree."""

import re

DOCS = '(see "Greenthread code" in docs/migrating.rst)'

LINE = re.compile(
    r'^(?P<path>[^:]+):(?P<line>\d+):(?P<column>\d+): (?P<code>TK\d{3}) '
    r'(?P<message>.*)$')

GREENTHREADS = '''\
"""eventlet.sleep(1) and eventlet.spawn(f) in a docstring do not count."""
import eventlet
import eventlet as ev
from eventlet import GreenPile, sleep as nap
from eventlet.event import Event
from eventlet import event, queue, semaphore, tpool
from eventlet.green import urllib
import eventlet.green.subprocess
import time

eventlet.monkey_patch()

# eventlet.sleep(1), eventlet.GreenPool() in a comment do not count
NOTE = "eventlet.spawn(work) and import eventlet in a string do not count"


def work():
    eventlet.sleep(1)
    ev.sleep(0)
    nap(2)
    time.sleep(3)
    eventlet.spawn(work)
    ev.spawn_n(work)
    eventlet.spawn_after(1, work)
    pool = eventlet.GreenPool(10)
    pile = GreenPile(pool)
    with eventlet.Timeout(5, False):
        pass
    done = eventlet.Event()
    done = event.Event()
    done = Event()
    waiting = eventlet.queue.Queue()
    waiting = queue.LightQueue()
    lock = semaphore.Semaphore()
    tpool.execute(work)
    eventlet.green.socket.socket()
    return pile, done, waiting, lock
'''

#: the thread equivalents the messages name
STDLIB_MODULE = 'the standard library module of the same name'
EXECUTOR = 'concurrent.futures.ThreadPoolExecutor'
EVENT = 'threading.Event, or concurrent.futures.Future'
NOT_NEEDED = 'eventlet is not needed (nor installed) under threadko'
SLEEP = "time.sleep() (it blocks only this worker's thread)"
TIMEOUT = 'the timeout argument of the blocking call itself'

#: (line, column, code, the eventlet name, its thread equivalent) of each
#: finding in GREENTHREADS
GREENTHREAD_FINDINGS = [
    (2, 1, 'TK100', 'eventlet', NOT_NEEDED),
    (3, 1, 'TK100', 'eventlet', NOT_NEEDED),
    (4, 1, 'TK104', 'eventlet.GreenPile', EXECUTOR),
    (4, 1, 'TK102', 'eventlet.sleep', SLEEP),
    (5, 1, 'TK106', 'eventlet.event.Event', EVENT),
    (6, 1, 'TK106', 'eventlet.event', EVENT),
    (6, 1, 'TK107', 'eventlet.queue', 'queue (queue.Queue'),
    (6, 1, 'TK108', 'eventlet.semaphore', 'threading.Semaphore'),
    (6, 1, 'TK109', 'eventlet.tpool', 'call the function directly'),
    (7, 1, 'TK110', 'eventlet.green.urllib', STDLIB_MODULE),
    (8, 1, 'TK110', 'eventlet.green.subprocess', STDLIB_MODULE),
    (11, 1, 'TK101', 'eventlet.monkey_patch',
     'remove it: threadko needs no monkey-patching'),
    (18, 5, 'TK102', 'eventlet.sleep', SLEEP),
    (19, 5, 'TK102', 'eventlet.sleep', SLEEP),
    (20, 5, 'TK102', 'eventlet.sleep', SLEEP),
    (22, 5, 'TK103', 'eventlet.spawn',
     'concurrent.futures.ThreadPoolExecutor().submit()'),
    (23, 5, 'TK103', 'eventlet.spawn_n',
     'concurrent.futures.ThreadPoolExecutor().submit()'),
    (24, 5, 'TK103', 'eventlet.spawn_after', 'threading.Timer'),
    (25, 12, 'TK104', 'eventlet.GreenPool', EXECUTOR),
    (26, 12, 'TK104', 'eventlet.GreenPile', EXECUTOR),
    (27, 10, 'TK105', 'eventlet.Timeout', TIMEOUT),
    (29, 12, 'TK106', 'eventlet.Event', 'threading.Event'),
    (30, 12, 'TK106', 'eventlet.event.Event', EVENT),
    (31, 12, 'TK106', 'eventlet.event.Event', EVENT),
    (32, 15, 'TK107', 'eventlet.queue.Queue', 'queue.Queue'),
    (33, 15, 'TK107', 'eventlet.queue.LightQueue', 'queue.Queue'),
    (34, 12, 'TK108', 'eventlet.semaphore.Semaphore',
     'threading.Semaphore'),
    (35, 5, 'TK109', 'eventlet.tpool.execute', 'call the function directly'),
    (36, 5, 'TK110', 'eventlet.green.socket.socket', STDLIB_MODULE),
]

PROVIDERS = '''\
import time

import nameko.extensions
from nameko.extensions import DependencyProvider


class Tracker(DependencyProvider):
    def setup(self):
        self.calls = 0

    def start(self):
        self.started = time.time()

    def get_dependency(self, worker_ctx):
        self.current = worker_ctx.call_id
        return self.current

    def worker_setup(self, worker_ctx):
        self.calls += 1
        began = time.time()
        worker_ctx.data["began"] = began
        worker_ctx.began = began

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        self.result, (self.error, _) = result, (exc_info, None)

    def worker_teardown(self, worker_ctx):
        self.current = None


class Dotted(nameko.extensions.DependencyProvider):
    def worker_setup(self, worker_ctx):
        self.began = time.time()


class Subclass(Tracker):
    def worker_teardown(self, worker_ctx):
        self.last = worker_ctx


class NotAProvider:
    def get_dependency(self, worker_ctx):
        self.worker_ctx = worker_ctx
'''

#: (line, column, attribute, hook) of each finding in PROVIDERS
PROVIDER_FINDINGS = [
    (15, 9, 'current', 'get_dependency'),
    (19, 9, 'calls', 'worker_setup'),
    (25, 9, 'result', 'worker_result'),
    (25, 9, 'error', 'worker_result'),
    (28, 9, 'current', 'worker_teardown'),
    (33, 9, 'began', 'worker_setup'),
    (38, 9, 'last', 'worker_teardown'),
]

CLEAN_SERVICE = '''\
"""A service that mentions eventlet.sleep and GreenPool only in words."""
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nameko.extensions import DependencyProvider
from nameko.rpc import rpc

# eventlet.monkey_patch() is gone: nothing to patch
GONE = "import eventlet; eventlet.spawn(f)"


class Timings(DependencyProvider):
    """Per-worker state in a dict keyed by the worker context."""

    def setup(self):
        self.began = {}
        self.lock = threading.Lock()

    def worker_setup(self, worker_ctx):
        self.began[worker_ctx] = time.monotonic()

    def worker_teardown(self, worker_ctx):
        self.began.pop(worker_ctx, None)

    def get_dependency(self, worker_ctx):
        class Api:
            def __init__(self):
                self.worker_ctx = worker_ctx  # another object's self

        return Api()


class Service:
    name = "service"
    timings = Timings()

    @rpc
    def work(self):
        time.sleep(0.01)
        waiting = queue.Queue()
        with ThreadPoolExecutor(2) as pool:
            return pool.submit(waiting.qsize).result()
'''


def findings(stdout):
    """The parsed lines of the output; fails on any other line."""
    parsed = []
    for line in stdout.splitlines():
        match = LINE.match(line)
        assert match, 'not a finding: {!r}'.format(line)
        parsed.append(match.groupdict())
    return parsed


def test_each_greenthread_pattern_is_listed_with_its_thread_equivalent(
        threadko, write):
    write('sample/greenthreads.py', GREENTHREADS)

    result = threadko('check-migration', 'sample')

    assert result.returncode == 1, result.stderr
    found = findings(result.stdout)
    assert [(f['path'], int(f['line']), int(f['column']), f['code'],
             f['message'].split(':', 1)[0]) for f in found] == [
        ('sample/greenthreads.py',) + finding[:4]
        for finding in GREENTHREAD_FINDINGS]
    for finding, expected in zip(found, GREENTHREAD_FINDINGS):
        name, equivalent = expected[3:]
        assert finding['message'].startswith(name + ': '), finding
        assert equivalent in finding['message'], finding
        assert finding['message'].endswith(DOCS), finding
    assert result.stderr == (
        '{} place(s) to change in 1 file(s)\n'.format(
            len(GREENTHREAD_FINDINGS)))


def test_the_exact_lines_printed(threadko, write):
    write('sample/sleeps.py', '''\
        import eventlet
        from eventlet import GreenPool


        def wait():
            eventlet.sleep(0.5)
            return GreenPool(4)
    ''')

    result = threadko('check-migration', 'sample/sleeps.py')

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        'sample/sleeps.py:1:1: TK100 eventlet: eventlet is not needed (nor '
        'installed) under threadko; each use is listed on its own ' + DOCS,
        'sample/sleeps.py:2:1: TK104 eventlet.GreenPool: '
        'concurrent.futures.ThreadPoolExecutor(max_workers=...) ' + DOCS,
        "sample/sleeps.py:6:5: TK102 eventlet.sleep: time.sleep() (it "
        "blocks only this worker's thread); to wait for something, "
        'threading.Event().wait(timeout) ' + DOCS,
        'sample/sleeps.py:7:12: TK104 eventlet.GreenPool: '
        'concurrent.futures.ThreadPoolExecutor(max_workers=...) ' + DOCS,
    ]


def test_providers_keeping_per_worker_state_on_themselves(threadko, write):
    write('sample/providers.py', PROVIDERS)

    result = threadko('check-migration', 'sample')

    assert result.returncode == 1, result.stderr
    found = findings(result.stdout)
    assert [(f['path'], int(f['line']), int(f['column']), f['code'])
            for f in found] == [
        ('sample/providers.py', line, column, 'TK201')
        for line, column, _, _ in PROVIDER_FINDINGS]
    for finding, (_, _, attr, hook) in zip(found, PROVIDER_FINDINGS):
        assert finding['message'] == (
            'self.{attr} is set in {hook}(): one provider serves every '
            'worker, and under threadko they run at once, so workers '
            "overwrite each other's {attr}. Keep per-worker state in the "
            'object get_dependency returns, or in a dict keyed by '
            'worker_ctx {docs}'.format(attr=attr, hook=hook, docs=DOCS))


def test_a_file_that_does_not_parse_is_reported_not_a_crash(
        threadko, write):
    write('sample/a_broken.py', '''\
        import eventlet

        def broken(:
            pass
    ''')
    write('sample/b_fine.py', 'import eventlet\n')

    result = threadko('check-migration', 'sample')

    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    found = findings(result.stdout)
    assert [(f['path'], f['line'], f['code']) for f in found] == [
        ('sample/a_broken.py', '3', 'TK000'),
        ('sample/b_fine.py', '1', 'TK100'),
    ]
    assert found[0]['message'].startswith('cannot parse it: ')
    # the message does not repeat the path, absolute or not
    assert 'a_broken.py' not in found[0]['message']
    assert result.stderr == '2 place(s) to change in 2 file(s)\n'


def test_a_clean_tree_exits_0(threadko, write):
    write('clean/service.py', CLEAN_SERVICE)
    write('clean/pkg/__init__.py', '')
    write('clean/pkg/notes.txt', 'import eventlet\n')  # not Python
    # not the project's code: hidden directories and virtualenvs
    write('clean/.tox/py311/lib/site.py', 'import eventlet\n')
    write('clean/venv/pyvenv.cfg', 'home = /usr/bin\n')
    write('clean/venv/lib/python3.11/site-packages/eventlet/__init__.py',
          'import eventlet.hubs\n')

    result = threadko('check-migration', 'clean')

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ''
    assert result.stderr == 'nothing to change\n'


def test_paths_are_printed_relative_to_the_current_directory(
        threadko, write, workdir):
    write('sample/deep/er/module.py', 'from eventlet import spawn\n')
    write('other/clean.py', 'import time\n')

    result = threadko('check-migration', str(workdir / 'sample'),
                      str(workdir / 'other' / 'clean.py'))

    assert result.returncode == 1, result.stderr
    assert [line.split(': ', 1)[0] for line in result.stdout.splitlines()] == [
        'sample/deep/er/module.py:1:1']
    assert str(workdir) not in result.stdout + result.stderr


def test_a_path_that_does_not_exist_is_a_usage_error(threadko):
    result = threadko('check-migration', 'nowhere')

    assert result.returncode == 2
    assert "'nowhere' does not exist" in result.stderr


def test_the_command_is_listed_in_the_help(threadko):
    result = threadko('--help')

    assert result.returncode == 0
    assert 'check-migration' in result.stdout
