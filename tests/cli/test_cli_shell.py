"""``threadko shell`` as a user runs it: a subprocess, with code piped to its
standard input (a script), or at a pseudo-terminal (interactive). The
services it talks to run in the test process."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from support import ChildProcess, Received, child_env, closed_port

from threadko import config as global_config
from threadko.cli.main import main
from threadko.events import event_handler
from threadko.rpc import rpc
from threadko.testing.utils import find_free_port

WAIT = 10  # seconds: the longest a test waits for the shell
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
NO_RETRIES = 'TRANSPORT_OPTIONS={max_retries: 0}'

if ROOT not in sys.path:  # the examples package, under `pytest` as a script
    sys.path.insert(0, ROOT)


@pytest.fixture
def shell(tmp_path):
    """``shell(script, *args, env=None)``: run ``threadko shell <args>``
    with ``script`` piped to its standard input; return the
    :class:`subprocess.CompletedProcess` (text output)."""
    def run_shell(script, *args, env=None):
        return subprocess.run(
            [sys.executable, '-m', 'threadko', 'shell', *args],
            cwd=str(tmp_path), env=child_env(**(env or {})), input=script,
            capture_output=True, text=True, timeout=WAIT)
    return run_shell


@pytest.fixture
def target(rabbit_config, runner_factory):
    """Runs the ``shell_target`` service on :func:`rabbit_config`'s vhost;
    returns the :class:`Received` payloads of its ``shell_source``/``ping``
    event handler."""
    received = Received()

    class ShellTarget:
        name = 'shell_target'

        @rpc
        def greet(self, name):
            return 'hello {}'.format(name)

        @rpc
        def fail(self, message):
            raise ValueError(message)

        @event_handler('shell_source', 'ping')
        def on_ping(self, payload):
            received.add(payload)

    runner_factory(rabbit_config, ShellTarget).start()
    return received


# -- scripts on standard input, against real services ------------------------

@pytest.mark.rabbit
def test_piped_script_calls_a_service_over_rpc(shell, target, amqp_uri):
    result = shell(
        'for name in ["wørld", "you"]:\n'
        '    print(n.rpc.shell_target.greet(name))\n'
        'print("done")\n',
        '--broker', amqp_uri)

    assert result.returncode == 0, result.stderr
    assert result.stdout == 'hello wørld\nhello you\ndone\n'
    assert 'Traceback' not in result.stderr


@pytest.mark.rabbit
def test_piped_script_dispatches_an_event_to_a_handler(
        shell, target, amqp_uri):
    result = shell(
        'n.dispatch_event("shell_source", "ping", {"from": "the shell"})\n',
        '--broker', amqp_uri)

    assert result.returncode == 0, result.stderr
    target.wait_for({'from': 'the shell'})


@pytest.mark.rabbit
def test_piped_script_stops_at_an_uncaught_exception_with_status_1(
        shell, target, amqp_uri):
    result = shell(
        'print("before")\n'
        'n.rpc.shell_target.fail("no such thing")\n'
        'print("after")\n',
        '--broker', amqp_uri)

    assert result.returncode == 1
    assert result.stdout == 'before\n'
    assert 'Traceback' in result.stderr
    # the script's own line, with its source
    assert 'File "<stdin>", line 2, in <module>' in result.stderr
    assert 'n.rpc.shell_target.fail("no such thing")' in result.stderr
    assert result.stderr.rstrip().endswith(
        'RemoteError: ValueError no such thing')


def test_piped_script_with_a_syntax_error_runs_nothing(shell, memory_config):
    result = shell('print("first")\nif True\n    pass\n',
                   '--broker', memory_config['AMQP_URI'])

    assert result.returncode == 1
    assert result.stdout == ''
    assert 'File "<stdin>", line 2' in result.stderr
    assert 'SyntaxError' in result.stderr


def test_piped_script_sets_the_exit_status_with_sys_exit(
        shell, memory_config):
    result = shell('import sys\nprint("bye")\nsys.exit(3)\n',
                   '--broker', memory_config['AMQP_URI'])

    assert result.returncode == 3
    assert result.stdout == 'bye\n'
    assert 'Traceback' not in result.stderr


def test_n_config_reflects_config_file_and_defines(shell, tmp_path):
    (tmp_path / 'config.yaml').write_text(
        'AMQP_URI: memory:///from-file\n'
        'GREETING: from the file\n'
        'max_workers: 2\n')
    result = shell(
        'import json\n'
        'print(json.dumps({key: n.config.get(key) for key in '
        '("AMQP_URI", "GREETING", "max_workers", "FLAG")}))\n',
        '--config', 'config.yaml', '-d', 'max_workers=5', '-d', 'FLAG',
        '--broker', 'amqp://guest:guest@ignored')

    assert result.returncode == 0, result.stderr
    # the file's AMQP_URI wins over --broker, as for `threadko run`
    assert json.loads(result.stdout) == {
        'AMQP_URI': 'memory:///from-file', 'GREETING': 'from the file',
        'max_workers': 5, 'FLAG': True}


def test_n_config_is_displayed_without_credentials(shell, memory_config):
    result = shell(
        'n.config["DB_PASSWORD"] = "hunter2"\n'
        'n.config["OTHER_URI"] = "https://user:s3cret@host/"\n'
        'print(repr(n.config))\n'
        'print(n.config["DB_PASSWORD"], n.config["OTHER_URI"])\n',
        '--broker', memory_config['AMQP_URI'])

    assert result.returncode == 0, result.stderr
    shown, values = result.stdout.splitlines()
    assert "'DB_PASSWORD': '********'" in shown
    assert "'OTHER_URI': 'https://user:********@host/'" in shown
    assert 'hunter2' not in shown and 's3cret' not in shown
    assert values == 'hunter2 https://user:s3cret@host/'


def test_default_broker_is_rabbitmq_on_localhost(shell):
    """Without --broker or AMQP_URI, the shell connects to
    amqp://guest:guest@localhost: whether a RabbitMQ answers there or not,
    that is the URI it used."""
    result = shell('print(n.config["AMQP_URI"])\n', '-d', NO_RETRIES)

    if result.returncode == 0:
        assert result.stdout == 'amqp://guest:guest@localhost\n'
    else:
        assert 'broker at amqp://guest:********@localhost ' in result.stderr


def test_disconnect_stops_the_client_thread(shell, memory_config):
    result = shell(
        'import threading\n'
        'n.disconnect()\n'
        'print([thread.name for thread in threading.enumerate()'
        ' if thread.name.startswith("threadko-")])\n'
        'n.rpc.anything.at_all()\n',
        '--broker', memory_config['AMQP_URI'])

    assert result.returncode == 1
    assert result.stdout == '[]\n'
    assert 'RpcClientStopped' in result.stderr


def test_connections_are_closed_when_the_script_ends(memory_config):
    """In process: once the command returns, the RPC client's thread is
    gone (the suite's fixture also checks that no threadko thread is
    left)."""
    with global_config.patch({}):  # the command sets the global config
        result = CliRunner().invoke(
            main, ['shell', '--broker', memory_config['AMQP_URI']],
            input='print(n.rpc is not None)\n')

    assert result.exit_code == 0, result.output
    assert result.output == 'True\n'
    assert not [thread.name for thread in threading.enumerate()
                if thread.name.startswith('threadko-')]


# -- unreachable brokers ---------------------------------------------------

def _one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    return lines[0]


def test_unreachable_broker_is_a_one_line_error(shell):
    port = find_free_port()
    result = shell('print("never runs")\n',
                   '--broker', 'amqp://guest:s3cret@127.0.0.1:{}'.format(port),
                   '-d', NO_RETRIES)

    error = _one_line_error(result)
    assert result.stdout == ''
    assert 'Cannot connect to the broker at amqp://guest:********@127.0.0.1:{}'.format(
        port) in error
    assert 'ConnectionRefusedError' in error
    assert 's3cret' not in result.stderr


@pytest.mark.rabbit
def test_refused_login_is_a_one_line_error(shell, amqp_uri):
    parts = urlsplit(amqp_uri)
    wrong = parts._replace(netloc='{}:wrong-password@{}:{}'.format(
        parts.username or 'guest', parts.hostname, parts.port or 5672))
    result = shell('print("never runs")\n', '--broker', wrong.geturl(),
                   '-d', NO_RETRIES)

    error = _one_line_error(result)
    assert 'ACCESS_REFUSED' in error
    assert 'wrong-password' not in result.stderr


def test_unsupported_broker_uri_is_a_one_line_error(shell):
    error = _one_line_error(shell('', '--broker', 'redis://localhost'))
    assert "Invalid config value AMQP_URI: 'redis://localhost'" in error


RETRY_FOREVER = 'TRANSPORT_OPTIONS={max_retries: null}'


def test_ctrl_c_while_a_piped_script_waits_for_the_broker(tmp_path):
    with closed_port() as port:
        uri = 'amqp://guest:guest@127.0.0.1:{}'.format(port)
        process = ChildProcess(
            [sys.executable, '-m', 'threadko', 'shell', '--broker', uri,
             '-d', RETRY_FOREVER], str(tmp_path), child_env(), timeout=WAIT)
        try:
            process.wait_for_line('Error connecting to broker')
            process.send_signal(signal.SIGINT)
            assert process.wait() == 130
        finally:
            process.close()
    assert process.output.splitlines()[-1] == (
        'Interrupted while connecting to the broker at '
        'amqp://guest:********@127.0.0.1:{}'.format(port))
    assert 'Traceback' not in process.output


# -- interactive, at a terminal ----------------------------------------------

class Terminal:
    """``threadko shell <args>`` at a pseudo-terminal, as a user at a
    keyboard sees it (the terminal echoes what is typed)."""

    def __init__(self, args, cwd, env):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'threadko', 'shell', *args], cwd=cwd,
            env=env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True)
        os.close(slave)
        self.master = master
        self.output = ''
        self._seen = 0
        self.closed = False

    def _read(self, timeout):
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the shell closed the terminal
            data = b''
        if not data:
            self.closed = True
        self.output += data.decode('utf-8', 'replace').replace('\r\n', '\n')

    def expect(self, text, timeout=WAIT):
        """Wait until the shell prints ``text`` after what the previous
        ``expect`` found."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self._seen:]:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and not self.closed, (
                'the shell never printed {!r}; it printed:\n{}'.format(
                    text, self.output))
            self._read(remaining)
        self._seen = self.output.index(text, self._seen) + len(text)

    def prompt(self):
        """Wait for the plain shell's next prompt: only then is a Ctrl-D
        read as the end of input."""
        self.expect('>>> ')

    def type(self, line):
        os.write(self.master, (line + '\n').encode('utf-8'))

    def end_of_input(self):
        """Ctrl-D at the start of a line."""
        os.write(self.master, b'\x04')

    def wait(self, timeout=WAIT):
        """Read the output to its end; return the exit status."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError("the shell did not exit; it printed:\n" + self.output)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        os.close(self.master)


@pytest.fixture
def fake_shells(tmp_path):
    """``fake_shells(**modules)``: a directory to put first on PYTHONPATH,
    holding a package per keyword (``IPython=source``), so that the test
    decides which shells are "installed"."""
    def make(**modules):
        directory = tmp_path / 'fake_shells'
        for name, source in modules.items():
            package = directory / name
            package.mkdir(parents=True)
            (package / '__init__.py').write_text(source)
        return str(directory)
    return make


NOT_INSTALLED = 'raise ImportError("not installed, for the test")\n'


@pytest.fixture
def terminal(tmp_path):
    """``terminal(*args, pythonpath=None)``: start the shell at a
    pseudo-terminal; it is killed at teardown if still running."""
    terminals = []

    def start(*args, pythonpath=None):
        env = child_env(PYTHONPATH=os.pathsep.join(
            filter(None, [pythonpath, ROOT])))
        term = Terminal(args, str(tmp_path), env)
        terminals.append(term)
        return term

    yield start
    for term in terminals:
        term.close()


@pytest.mark.parametrize('key, status, said', [
    ('Ctrl-C', 130, 'Interrupted'),
    ('Ctrl-D', 0, 'Cancelled'),
])
def test_interactive_shell_leaves_while_it_waits_for_the_broker(
        terminal, key, status, said):
    with closed_port() as port:
        term = terminal('--broker', 'amqp://guest:guest@127.0.0.1:{}'.format(
            port), '-d', RETRY_FOREVER, '--interface', 'plain')
        term.expect('Error connecting to broker')
        if key == 'Ctrl-C':
            term.proc.send_signal(signal.SIGINT)  # what the terminal sends
        else:
            term.type('n.rpc')  # typed ahead: dropped, with a note
            term.expect('(still connecting; ignored: n.rpc)')
            term.end_of_input()
        assert term.wait() == status, term.output
    assert ('{} while connecting to the broker at amqp://guest:********@'
            '127.0.0.1:{}'.format(said, port)) in term.output
    assert 'Traceback' not in term.output
    assert '>>> ' not in term.output


@pytest.mark.rabbit
def test_interactive_plain_shell_calls_a_service(terminal, target, amqp_uri):
    term = terminal('--broker', amqp_uri, '--interface', 'plain')

    term.prompt()
    term.type('n.rpc.shell_target.greet("wørld")')
    term.expect("'hello wørld'")
    term.prompt()
    term.type('n.dispatch_event("shell_source", "ping", "typed")')
    target.wait_for('typed')
    term.prompt()
    term.end_of_input()

    assert term.wait() == 0, term.output
    assert 'Traceback' not in term.output
    # the banner names the broker, without its password
    password = urlsplit(amqp_uri).password
    assert 'Broker: ' in term.output
    if password:
        assert ':{}@'.format(password) not in term.output
        assert ':********@' in term.output


def test_interactive_exit_status_comes_from_exit(terminal, memory_config):
    term = terminal('--broker', memory_config['AMQP_URI'],
                    '--interface', 'plain')
    term.prompt()
    term.type('print(6 * 7)')
    term.expect('42')
    term.prompt()
    term.type('exit(4)')

    assert term.wait() == 4, term.output


@pytest.mark.parametrize('interface, shown_name', [
    ('ipython', 'IPython'),
    ('bpython', 'bpython'),
])
def test_missing_interface_falls_back_to_plain_with_a_message(
        terminal, fake_shells, memory_config, interface, shown_name):
    path = fake_shells(IPython=NOT_INSTALLED, bpython=NOT_INSTALLED)
    term = terminal('--broker', memory_config['AMQP_URI'],
                    '--interface', interface, pythonpath=path)

    term.expect('{} is not installed (pip install {}); starting the plain '
                'Python shell instead.'.format(shown_name, interface))
    term.prompt()
    term.type('print(n.config["AMQP_URI"].upper())')
    term.expect(memory_config['AMQP_URI'].upper())
    term.prompt()
    term.end_of_input()
    assert term.wait() == 0, term.output


def test_plain_shell_without_a_message_when_none_is_installed(
        terminal, fake_shells, memory_config):
    path = fake_shells(IPython=NOT_INSTALLED, bpython=NOT_INSTALLED)
    term = terminal('--broker', memory_config['AMQP_URI'], pythonpath=path)

    term.prompt()
    term.end_of_input()
    assert term.wait() == 0, term.output
    assert 'not installed' not in term.output
    # memory:// cannot reach other processes: the banner says so
    assert 'only services started in' in term.output


FAKE_IPYTHON = '''
def start_ipython(argv, user_ns):
    print("fake IPython:", argv, user_ns["n"].config["AMQP_URI"])
'''

FAKE_BPYTHON = '''
def embed(locals_, banner):
    print("fake bpython:", locals_["n"].config["AMQP_URI"])
    print(banner)
'''


@pytest.mark.parametrize('args, expected', [
    ((), 'fake IPython: [] '),  # IPython first when both are installed
    (('--interface', 'bpython'), 'fake bpython: '),
])
def test_installed_interface_gets_the_namespace(
        terminal, fake_shells, memory_config, args, expected):
    path = fake_shells(IPython=FAKE_IPYTHON, bpython=FAKE_BPYTHON)
    term = terminal('--broker', memory_config['AMQP_URI'], *args,
                    pythonpath=path)

    term.expect(expected + memory_config['AMQP_URI'])
    assert term.wait() == 0, term.output
    assert 'Broker: {}'.format(memory_config['AMQP_URI']) in term.output


def test_banner_says_when_the_config_overrides_broker(
        terminal, tmp_path, memory_config):
    (tmp_path / 'config.yaml').write_text(
        'AMQP_URI: {}\n'.format(memory_config['AMQP_URI']))
    term = terminal('--config', 'config.yaml', '--interface', 'plain',
                    '--broker', 'amqp://guest:guest@elsewhere')

    term.prompt()
    term.end_of_input()
    assert term.wait() == 0, term.output
    assert 'Broker: {} (AMQP_URI in the config; --broker ignored)'.format(
        memory_config['AMQP_URI']) in term.output


# -- the documented example ---------------------------------------------------

@pytest.mark.rabbit
def test_shell_script_example(shell, rabbit_config, runner_factory,
                              amqp_uri):
    """``examples/shell_script.py`` piped into the shell, with the example
    services running (docs/cli.rst)."""
    from examples.events import ServiceA, ServiceB
    from examples.rpc import ServiceX, ServiceY

    received = Received()

    class Listener:
        name = 'listener'

        @event_handler('service_a', 'event_type')
        def handle(self, payload):
            received.add(payload)

    runner_factory(rabbit_config, ServiceX, ServiceY, ServiceA, ServiceB,
                   Listener).start()
    with open(os.path.join(ROOT, 'examples', 'shell_script.py'),
              encoding='utf-8') as script:
        result = shell(script.read(), '--broker', amqp_uri)

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "service_x.remote_method('hellø') returned 'hellø-x-y'\n"
        "async results: ['a-y', 'b-y', 'c-y']\n"
        "dispatched event_type as service_a\n")
    received.wait_for({'from': 'the shell'})
