"""Build (once) a virtualenv holding Nameko 2.14.1 and its eventlet, for
the interoperability tests and the benchmarks.

``ensure_venv(path, pins)`` returns the venv's python, creating the venv if
the stamp file inside it does not record the same pins and Python version.
``ensure_venv(path, pins, editable=[checkout])`` also installs local
projects in development mode (``pip install -e``; tests/test_side_by_side.py
puts threadko beside Nameko so): their code is used as it is, and the stamp
records their packaging files, so a change there (an entry point, say)
builds the venv again. Concurrent callers for one path wait for each other
(a file lock).
"""

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock between concurrent sessions
    fcntl = None

#: Nameko and what it needs to run
NAMEKO_CORE_PINS = ('nameko==2.14.1', 'eventlet==0.41.3', 'werkzeug<3')
#: the interop tests' venv: Nameko, and websocket-client for its websocket
#: test helper (nameko.testing.websocket; 0.48.0 is Nameko's own dev pin)
NAMEKO_PINS = NAMEKO_CORE_PINS + ('websocket-client==0.48.0',)
#: the benchmarks' venv (bench/harness.py, ``.nameko-bench-venv``): Nameko,
#: the database drivers of ``blocking_db`` (and of ``sqlalchemy_db``:
#: MySQLdb), and nameko-sqlalchemy 1.5.0 for ``sqlalchemy_db``. It declares
#: ``sqlalchemy`` without a version; 1.4 is the last series its own pytest
#: fixtures work with (they bind ``MetaData``, gone in 2.0), so the one its
#: users run; 1.4.54 is the last 1.4 release. The websocket scenarios
#: (``ws_rpc``, ``ws_fanout``) need nothing more: ``nameko.web.websocket``
#: runs on eventlet's own ``eventlet.websocket``, and its rules take
#: werkzeug 2.x's ``websocket=True`` (``werkzeug<3`` above).
NAMEKO_BENCH_PINS = NAMEKO_CORE_PINS + (
    'mysqlclient', 'psycopg2-binary', 'nameko-sqlalchemy==1.5.0',
    'SQLAlchemy==1.4.54')
STAMP_NAME = 'threadko-interop-stamp.json'
BUILD_TIMEOUT = 600  # seconds for `venv` + `pip install`


class VenvError(Exception):
    """The virtualenv could not be made."""


def venv_python(path):
    if os.name == 'nt':
        return Path(path) / 'Scripts' / 'python.exe'
    return Path(path) / 'bin' / 'python'


#: the files of a local project that say what installing it installs
PACKAGING_FILES = ('setup.py', 'setup.cfg', 'pyproject.toml')


def _wanted_stamp(pins, editable=()):
    stamp = {'pins': list(pins), 'python': platform.python_version()}
    if editable:
        stamp['editable'] = {
            str(Path(project).absolute()): _packaging_digest(project)
            for project in editable}
    return stamp


def _packaging_digest(project):
    digest = hashlib.sha1()
    for name in PACKAGING_FILES:
        try:
            content = (Path(project) / name).read_bytes()
        except OSError:
            continue
        digest.update(name.encode('utf-8') + b'\0' + content + b'\0')
    return digest.hexdigest()


def venv_ready(path, pins=NAMEKO_PINS, editable=()):
    """Whether ``path`` holds a venv built with ``pins`` (and the local
    projects ``editable``, as they are packaged now)."""
    try:
        stamp = json.loads((Path(path) / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (stamp == _wanted_stamp(pins, editable)
            and venv_python(path).exists())


def clean_env():
    """The environment for processes in the venv: nothing of threadko's
    virtualenv or import path leaks in."""
    env = {key: value for key, value in os.environ.items()
           if key not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV',
                          'PYTHONSTARTUP', 'PYTHONWARNINGS')}
    env.update(PYTHONUNBUFFERED='1', PYTHONDONTWRITEBYTECODE='1')
    return env


@contextlib.contextmanager
def _build_lock(path):
    digest = hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / (
        'threadko-nameko-venv-{}.lock'.format(digest))
    with open(lock_path, 'w') as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _run(argv, what):
    try:
        done = subprocess.run(
            [str(arg) for arg in argv], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=clean_env(),
            timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise VenvError('{} took more than {}s:\n{}'.format(
            what, BUILD_TIMEOUT, exc.output or ''))
    except OSError as exc:
        raise VenvError('{} could not run: {}'.format(what, exc))
    if done.returncode != 0:
        raise VenvError('{} failed (exit status {}):\n{}'.format(
            what, done.returncode, done.stdout))


def ensure_venv(path, pins=NAMEKO_PINS, editable=()):
    """Return the python of a virtualenv at ``path`` with ``pins``
    installed, and the local projects (directories) ``editable`` in
    development mode, creating it if its stamp does not match."""
    path = Path(path).absolute()
    with _build_lock(path):
        if venv_ready(path, pins, editable):
            return venv_python(path)
        if (path.exists() and any(path.iterdir())
                and not (path / 'pyvenv.cfg').exists()):
            raise VenvError(
                '{} exists but is not a virtualenv; remove it or choose '
                'another directory'.format(path))
        base_python = getattr(sys, '_base_executable', None) or sys.executable
        _run([base_python, '-m', 'venv', '--clear', path],
             'Creating the virtualenv at {}'.format(path))
        wanted = list(pins)
        for project in editable:
            wanted += ['-e', Path(project).absolute()]
        _run([venv_python(path), '-m', 'pip', 'install',
              '--disable-pip-version-check', '--no-input', *wanted],
             'Installing {} into {}'.format(
                 ' '.join(map(str, wanted)), path))
        stamp = path / STAMP_NAME
        partial = stamp.with_name(STAMP_NAME + '.tmp')
        partial.write_text(json.dumps(_wanted_stamp(pins, editable)))
        os.replace(partial, stamp)
        return venv_python(path)
