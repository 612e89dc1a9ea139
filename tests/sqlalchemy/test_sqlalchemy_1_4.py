"""threadko.sqlalchemy works with SQLAlchemy 1.4 too: this package's
SQLite tests run again in a child pytest that imports SQLAlchemy 1.4.

The 1.4 release is installed once (``pip install --no-deps --target``,
a wheel from PyPI) into the repository's ``.cache/`` directory, which git
ignores, and reused by later runs. The child gets it first on PYTHONPATH,
skips the server tests (the servers are this session's), and reports the
SQLAlchemy it imported in its header (conftest.py), which this test
checks.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(ROOT, '.cache')
TARGET = os.path.join(CACHE, 'sqlalchemy-1.4')
REQUIREMENT = 'SQLAlchemy>=1.4,<2'
COMPLETE = '.threadko-complete'  # written once the install succeeded
CHILD_TIMEOUT = 50  # seconds; the child takes about 15
INSTALL_TIMEOUT = 120


def sqlalchemy_1_4():
    """The directory SQLAlchemy 1.4 is installed in, installing it first
    if an earlier run has not."""
    if os.path.exists(os.path.join(TARGET, COMPLETE)):
        return TARGET
    os.makedirs(CACHE, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='sqlalchemy-1.4.', dir=CACHE)
    try:
        try:
            result = subprocess.run(
                [sys.executable, '-m', 'pip', 'install', '--quiet',
                 '--disable-pip-version-check', '--no-deps',
                 '--target', staging, REQUIREMENT],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail('`pip install {}` took more than {} s (is PyPI '
                        'reachable?)'.format(REQUIREMENT, INSTALL_TIMEOUT))
        if result.returncode != 0:
            pytest.fail('could not install {} from PyPI (is it reachable?)'
                        ':\n{}'.format(REQUIREMENT, result.stdout),
                        pytrace=False)
        open(os.path.join(staging, COMPLETE), 'w').close()
        shutil.rmtree(TARGET, ignore_errors=True)  # a broken earlier one
        os.replace(staging, TARGET)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TARGET


@pytest.mark.slow
def test_sqlite_tests_pass_on_sqlalchemy_1_4():
    target = sqlalchemy_1_4()
    env = dict(os.environ, PYTHONUNBUFFERED='1',
               THREADKO_TEST_SKIP_MARIADB='1',
               THREADKO_TEST_SKIP_POSTGRESQL='1')
    env.pop('PYTHONWARNINGS', None)
    env['PYTHONPATH'] = os.pathsep.join(
        [target] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    # not -q: the header names the SQLAlchemy imported
    argv = [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
            '-o', 'console_output_style=classic', HERE,
            '--ignore', os.path.abspath(__file__),
            '-k', 'not mariadb and not postgresql']
    try:
        child = subprocess.run(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail('the SQLAlchemy 1.4 run took more than {} s:\n{}'.format(
            CHILD_TIMEOUT, exc.output), pytrace=False)
    output = child.stdout
    header = re.search(r'threadko\.sqlalchemy tests: SQLAlchemy (\S+) '
                       r'\((.*)\)', output)
    assert header, output
    version, location = header.groups()
    assert version.startswith('1.4.'), output
    assert location.startswith(target), output
    assert child.returncode == 0, output
    summary = re.search(r'(\d+) passed', output)
    assert summary and int(summary.group(1)) >= 50, output
    assert 'failed' not in output.splitlines()[-1], output
