"""``threadko shell``: a Python shell connected to a broker, with an ``n``
object for calling services (``n.rpc``) and dispatching events
(``n.dispatch_event``).

Interactive when standard input is a terminal: IPython or bpython if
installed (``--interface`` picks one), else the plain Python console.
Otherwise standard input is read to its end and run as one script, as
``python - < script.py`` would run it: nothing but the script's own output
goes to stdout, a syntax error stops it before anything runs, an uncaught
exception prints its traceback and ends the command with status 1.

The default broker is RabbitMQ on localhost, not ``threadko run``'s
``memory://``: an in-process broker would only reach services running in
the shell's own process.
"""

import linecache
import os
import platform
import select
import sys
import threading
import traceback

import click

import threadko
from threadko.amqp.connection import CONNECTION_ERRORS
from threadko.cli.options import (
    config_options, install_nameko_bridge, load_config_for_services,
    nameko_bridge_option,
)
from threadko.constants import AMQP_URI_CONFIG_KEY
from threadko.exceptions import CommandError, describe_error
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy
from threadko.utils import redact_secrets, sanitize_url

#: the broker of a shell whose config sets no ``AMQP_URI`` (Nameko's too)
DEFAULT_SHELL_BROKER = 'amqp://guest:guest@localhost'

INTERFACES = ('ipython', 'bpython', 'plain')
# tried in this order when --interface is not given
_PREFERRED = ('ipython', 'bpython')
_INTERFACE_NAMES = {'ipython': 'IPython', 'bpython': 'bpython'}

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # as ``threadko run`` after a kill: 128 + SIGINT

SCRIPT_FILENAME = '<stdin>'


class ShellConfig(dict):
    """``n.config``: a plain copy of the configuration, except that it is
    displayed with credentials redacted (as ``threadko show-config`` does),
    so that showing it on screen does not reveal them. The values
    themselves are intact."""

    def __repr__(self):
        return repr(redact_secrets(dict(self)))


class ShellHelper:
    """The ``n`` object of ``threadko shell``.

    - ``n.rpc.<service>.<method>(*args, **kwargs)`` calls a service and
      waits for its reply; ``.call_async(...)`` returns a reply whose
      ``result()`` waits. A :class:`~threadko.standalone.rpc.ClusterRpcProxy`.
    - ``n.dispatch_event(service, event_type, payload)`` dispatches an
      event as if ``service`` had dispatched it (its ``<service>.events``
      exchange must exist: a service dispatching or handling those events
      has run on the broker).
    - ``n.config`` is the configuration the shell loaded (a
      :class:`ShellConfig`: displayed with credentials redacted).
    - ``n.disconnect()`` closes the broker connections; the shell does it
      on exit. ``n.rpc`` cannot be used afterwards.

    :param config: the configuration dict (``AMQP_URI`` and the rest)
    """

    def __init__(self, config):
        self.config = ShellConfig(config)
        self._rpc_proxy = ClusterRpcProxy(config)
        self.rpc = None
        self.dispatch_event = event_dispatcher(config)

    def connect(self):
        """Start the RPC client (connect and declare its reply queue).
        :meth:`disconnect`, from another thread, ends the attempt.

        :raises CommandError: the broker cannot be reached, or refuses the
            connection, once ``TRANSPORT_OPTIONS``' retries are spent
        :raises RpcClientStopped: :meth:`disconnect` ended the attempt
        """
        try:
            self.rpc = self._rpc_proxy.start()
        except CONNECTION_ERRORS as exc:
            error = describe_error(exc)
            raise CommandError(
                'Cannot connect to the broker at {} ({}). Check that it is '
                'running and that the URI (--broker, or AMQP_URI in the '
                'config) has the right host, port, credentials and '
                'vhost.'.format(
                    sanitize_url(str(self.config[AMQP_URI_CONFIG_KEY])),
                    sanitize_url(error))) from exc

    def disconnect(self):
        """Stop the RPC client and close the event dispatcher's
        connections. Safe to call more than once."""
        self._rpc_proxy.stop()
        self.dispatch_event.close()

    def __repr__(self):
        return ('<threadko shell helper: n.rpc, n.dispatch_event, n.config, '
                'n.disconnect(); help(n) for more>')


def _broker_source(uri, broker):
    if broker:
        if uri == broker:
            return '--broker'
        return 'AMQP_URI in the config; --broker ignored'
    if uri == DEFAULT_SHELL_BROKER:
        return 'the default; choose another with --broker'
    return 'AMQP_URI in the config'


def make_banner(config, source):
    """The text shown when an interactive shell starts. The broker URI is
    shown without its password."""
    uri = str(config[AMQP_URI_CONFIG_KEY])
    lines = [
        'threadko {} shell, Python {} on {}'.format(
            threadko.__version__, platform.python_version(), sys.platform),
        'Broker: {} ({})'.format(sanitize_url(uri), source),
        '',
        '  n.rpc.<service>.<method>(...)            call a service over RPC',
        '  n.dispatch_event(service, type, data)    dispatch an event as '
        '<service>',
        '  n.config                                 the configuration',
        '  n.disconnect()                           close the connections '
        '(done on exit)',
    ]
    if uri.startswith('memory:'):
        lines += [
            '',
            'Note: memory:// is a broker inside this process; only services '
            'started in',
            'this shell can be reached. Use --broker amqp://... to reach '
            'other processes.',
        ]
    return '\n'.join(lines) + '\n'


# -- interactive shells ---------------------------------------------------

def _load_ipython():
    from IPython import start_ipython

    def start(namespace, banner):
        click.echo(banner)
        start_ipython(argv=[], user_ns=namespace)
    return start


def _load_bpython():
    import bpython

    def start(namespace, banner):
        bpython.embed(locals_=namespace, banner=banner)
    return start


_LOADERS = {'ipython': _load_ipython, 'bpython': _load_bpython}


def start_plain(namespace, banner):
    """The standard library's interactive console, with line editing and
    tab completion of names in ``namespace`` when readline is available."""
    import code

    try:
        import readline
        import rlcompleter
    except ImportError:
        pass
    else:
        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind('tab: complete')
    code.InteractiveConsole(namespace).interact(banner=banner, exitmsg='')


def start_interactive(interface, namespace, banner):
    """Run an interactive shell until the user leaves it.

    :param interface: ``'ipython'``, ``'bpython'``, ``'plain'`` or ``None``
        (IPython, else bpython, else plain). A named shell that is not
        installed falls back to plain, saying so on stderr.
    """
    candidates = _PREFERRED if interface is None else (interface,)
    for name in candidates:
        load = _LOADERS.get(name)
        if load is None:  # 'plain'
            break
        try:
            start = load()
        except ImportError:
            if interface is not None:
                click.echo(
                    '{0} is not installed (pip install {1}); starting the '
                    'plain Python shell instead.'.format(
                        _INTERFACE_NAMES[name], name), err=True)
            continue
        return start(namespace, banner)
    return start_plain(namespace, banner)


# -- scripts on standard input --------------------------------------------

def run_script(source, namespace, filename=SCRIPT_FILENAME):
    """Run ``source`` as one script in ``namespace``.

    A traceback (without this function's frame) goes to stderr when the
    script raises; :exc:`SystemExit` propagates.

    :returns: 0 when it ran to its end, 1 after a syntax error or an
        uncaught exception, 130 after :exc:`KeyboardInterrupt`
    """
    # so that tracebacks can show the script's lines
    linecache.cache[filename] = (
        len(source), None, source.splitlines(True), filename)
    try:
        code = compile(source, filename, 'exec')
    except (SyntaxError, ValueError) as exc:  # ValueError: a null byte
        traceback.print_exception(type(exc), exc, None)
        return EXIT_ERROR
    try:
        exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        return EXIT_ERROR
    return EXIT_OK


def _stdin_is_terminal():
    return sys.stdin is not None and sys.stdin.isatty()


class ConnectCancelled(Exception):
    """End of input (Ctrl-D) on the terminal while the shell connects."""


def connect_watching_terminal(helper):
    """``helper.connect()`` on a thread of its own while this one watches
    the terminal: end of input (Ctrl-D) cancels the attempt with
    :exc:`ConnectCancelled`, as Ctrl-C does with :exc:`KeyboardInterrupt`.
    Lines typed meanwhile are dropped, with a note."""
    outcome = []
    done_read, done_write = os.pipe()

    def connect():
        try:
            helper.connect()
        except BaseException as exc:
            outcome.append(exc)
        finally:
            os.write(done_write, b'x')

    thread = threading.Thread(
        target=connect, name='threadko-shell-connect', daemon=True)
    thread.start()
    try:
        while True:
            readable, _, _ = select.select([done_read, sys.stdin], [], [])
            if done_read in readable:
                break
            line = sys.stdin.readline()
            if not line:
                raise ConnectCancelled()
            click.echo('(still connecting; ignored: {})'.format(
                line.rstrip('\n')), err=True)
    except BaseException:
        helper.disconnect()  # ends the attempt
        raise
    finally:
        thread.join()
        os.close(done_read)
        os.close(done_write)
    if outcome:
        raise outcome[0]


@click.command('shell')
@config_options
@click.option('--broker', metavar='URI',
              help='AMQP broker URI, used only when the config does not set '
                   'AMQP_URI (default: {}).'.format(
                       sanitize_url(DEFAULT_SHELL_BROKER)))
@click.option('--interface', type=click.Choice(INTERFACES),
              help='The interactive shell (default: IPython if installed, '
                   'else bpython, else plain). Not used when standard input '
                   'is not a terminal.')
@nameko_bridge_option
@click.pass_context
def shell(ctx, config_path, defines, broker, interface, nameko_bridge):
    """Start a Python shell for calling services.

    The shell defines n: n.rpc.<service>.<method>(...) calls a service,
    n.dispatch_event(service, event_type, payload) dispatches an event as
    that service, n.config is the configuration.

    When standard input is not a terminal, it is run as a script (for
    example: echo 'print(n.rpc.greeter.hello("x"))' | threadko shell). The
    exit status is 0 when the script ran to its end, 1 after an uncaught
    exception (its traceback is printed), or the status the script passed
    to sys.exit().
    """
    config = load_config_for_services(
        config_path, defines, broker or DEFAULT_SHELL_BROKER)
    install_nameko_bridge(nameko_bridge)
    source = _broker_source(config[AMQP_URI_CONFIG_KEY], broker)

    helper = ShellHelper(config)
    interactive = _stdin_is_terminal()
    try:
        if interactive:
            connect_watching_terminal(helper)
        else:
            helper.connect()
    except (KeyboardInterrupt, ConnectCancelled) as exc:
        helper.disconnect()
        interrupted = isinstance(exc, KeyboardInterrupt)
        click.echo('{} while connecting to the broker at {}'.format(
            'Interrupted' if interrupted else 'Cancelled',
            sanitize_url(str(config[AMQP_URI_CONFIG_KEY]))), err=True)
        ctx.exit(EXIT_INTERRUPTED if interrupted else EXIT_OK)
    namespace = {'__name__': '__main__', '__doc__': None, 'n': helper}
    try:
        if interactive:
            start_interactive(
                interface, namespace, make_banner(config, source))
            status = EXIT_OK
        else:
            script = sys.stdin.read() if sys.stdin is not None else ''
            status = run_script(script, namespace)
    finally:
        helper.disconnect()
    ctx.exit(status)
