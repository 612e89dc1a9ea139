"""threadko patches nothing: no eventlet, no gevent, no greenlet, and the
standard library is left exactly as it was.

Each check runs in a fresh interpreter (a clean ``sys.modules``) that
reports what it saw as JSON, so nothing imported by pytest or by other
tests can hide or fake a patch.
"""

import json
import subprocess
import sys
import textwrap

# what a monkey-patching library would replace
STDLIB_SNAPSHOT = textwrap.dedent('''
    import _socket
    import _thread
    import builtins
    import json
    import os
    import queue
    import select
    import selectors
    import socket
    import ssl
    import subprocess
    import sys
    import threading
    import time

    GREEN_LIBRARIES = ('eventlet', 'gevent', 'greenlet')
    PATCHABLE = {
        'socket': ['socket', 'create_connection', 'getaddrinfo',
                   'socketpair', 'fromfd', 'gethostbyname'],
        'select': ['select', 'poll', 'epoll'],
        'selectors': ['DefaultSelector'],
        'time': ['sleep', 'monotonic', 'time'],
        'threading': ['Thread', 'Lock', 'RLock', 'Event', 'Condition',
                      'Semaphore', 'local', 'get_ident', 'current_thread',
                      'Timer'],
        '_thread': ['start_new_thread', 'allocate_lock', 'get_ident'],
        'queue': ['Queue'],
        'ssl': ['SSLContext', 'SSLSocket', 'wrap_socket'],
        'os': ['read', 'write', 'waitpid', 'fork'],
        'subprocess': ['Popen'],
        'builtins': ['open', 'input'],
    }

    def snapshot():
        return {
            (module, attr): getattr(sys.modules[module], attr)
            for module, attrs in PATCHABLE.items() for attr in attrs
            if hasattr(sys.modules[module], attr)
        }

    BEFORE = snapshot()

    def replaced():
        """Every patchable name that is no longer the original object."""
        now = snapshot()
        return sorted(
            '{}.{}'.format(*key) for key in BEFORE
            if now.get(key) is not BEFORE[key])

    def green_modules():
        return sorted(
            name for name in sys.modules
            if name.split('.')[0] in GREEN_LIBRARIES)
''')


WORKER_PROBE = STDLIB_SNAPSHOT + textwrap.dedent('''
    import threadko
    from threadko.containers import ServiceContainer
    from threadko.timer import timer

    seen = {}
    probed = threading.Event()

    class Probe:
        name = 'patch_probe'

        @timer(interval=1000, eager=True)
        def probe(self):
            seen.update(
                replaced=replaced(),
                socket_module=socket.socket.__module__,
                socket_is_c_backed=issubclass(socket.socket, _socket.socket),
                thread_module=threading.Thread.__module__,
                sleep_is_c_builtin=(
                    type(time.sleep).__name__ == 'builtin_function_or_method'
                    and time.sleep.__module__ == 'time'),
                select_is_c_builtin=(
                    type(select.select).__name__ ==
                    'builtin_function_or_method'
                    and select.select.__module__ == 'select'),
                worker_native_id=threading.get_native_id(),
                worker_thread_name=threading.current_thread().name,
                worker_thread_class=(
                    type(threading.current_thread()).__module__),
                worker_is_main=(
                    threading.current_thread() is threading.main_thread()),
                green_modules=green_modules(),
            )
            probed.set()

    container = ServiceContainer(Probe, {})
    container.start()
    try:
        ran = probed.wait(30)
    finally:
        container.stop()

    seen.update(
        ran=ran,
        main_native_id=threading.get_native_id(),
        replaced_at_exit=replaced(),
        green_modules_at_exit=green_modules(),
    )
    print(json.dumps(seen))
''')


IMPORT_EVERYTHING = STDLIB_SNAPSHOT + textwrap.dedent('''
    import importlib
    import pkgutil
    import traceback

    import threadko

    imported, failed = [], {}
    for module in pkgutil.walk_packages(threadko.__path__, 'threadko.'):
        try:
            importlib.import_module(module.name)
        except Exception:
            failed[module.name] = traceback.format_exc()
        else:
            imported.append(module.name)

    print(json.dumps(dict(
        imported=imported, failed=failed, replaced=replaced(),
        green_modules=green_modules())))
''')


def run_fresh_interpreter(script, tmp_path):
    """Run ``script`` in a new Python process and return the JSON it
    printed last."""
    completed = subprocess.run(
        [sys.executable, '-c', script], cwd=str(tmp_path),
        capture_output=True, text=True, timeout=50)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_a_running_service_patches_nothing_and_uses_real_threads(tmp_path):
    seen = run_fresh_interpreter(WORKER_PROBE, tmp_path)

    assert seen['ran'] is True
    # inside a worker, the standard library is the original one
    assert seen['replaced'] == []
    assert seen['socket_module'] == 'socket'
    assert seen['socket_is_c_backed'] is True
    assert seen['thread_module'] == 'threading'
    assert seen['sleep_is_c_builtin'] is True
    assert seen['select_is_c_builtin'] is True
    # the worker is an ordinary OS thread of its own
    assert seen['worker_is_main'] is False
    assert seen['worker_native_id'] != seen['main_native_id']
    assert seen['worker_thread_class'] == 'threading'
    assert seen['worker_thread_name'].startswith(
        'threadko-worker-patch_probe')
    # and after everything ran, no green-thread library was ever loaded
    assert seen['green_modules'] == []
    assert seen['green_modules_at_exit'] == []
    assert seen['replaced_at_exit'] == []


def test_importing_every_threadko_module_loads_no_green_threads(tmp_path):
    seen = run_fresh_interpreter(IMPORT_EVERYTHING, tmp_path)

    assert seen['failed'] == {}, '\n'.join(seen['failed'].values())
    assert 'threadko.timer' in seen['imported']
    assert 'threadko.containers' in seen['imported']
    assert seen['green_modules'] == []
    assert seen['replaced'] == []
