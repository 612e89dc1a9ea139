"""``threadko run``: import services and run them until signalled.

Process lifecycle (threads version of Nameko's ``nameko run``):

- the main thread owns the :class:`~threadko.runners.ServiceRunner`; it
  starts the services on a thread named ``threadko-cli-start`` and waits
  for events (signals, the start ending, the runner ending) with a
  timeout so it stays responsive in every state;
- the first SIGINT or SIGTERM stops the services gracefully (running
  workers finish) on a thread named ``threadko-cli-stop``; the process then
  exits with status 0. A signal that arrives while the services are still
  starting (waiting for the broker, say) interrupts their start; that is
  a graceful stop too;
- services that have not started within the start timeout
  (``START_TIMEOUT`` or ``--start-timeout``, none by default) are killed
  and the exit status is 1;
- a second SIGINT or SIGTERM while stopping kills the services and exits
  with status 130. Running workers cannot be interrupted; when killed they
  are abandoned, and the process exits without waiting for them;
- a graceful stop that takes longer than the grace period
  (``SHUTDOWN_GRACE_PERIOD`` seconds, or ``--grace-period``) kills the
  services the same way and exits with status 1: the messages of the
  abandoned workers were never acked, so the broker redelivers them;
- when a container dies of an error, the runner stops the other services,
  the error is logged with its traceback and the exit status is 1.
"""

import concurrent.futures.thread
import importlib
import inspect
import json
import logging
import os
import queue
import signal
import sys
import threading
import time

import click

from threadko.cli.options import (
    config_options, install_nameko_bridge, load_config_for_services,
    nameko_bridge_option,
)
from threadko.constants import (
    AMQP_URI_CONFIG_KEY, DEFAULT_SHUTDOWN_GRACE_PERIOD,
    SHUTDOWN_GRACE_PERIOD_CONFIG_KEY, START_TIMEOUT_CONFIG_KEY,
)
from threadko.exceptions import CommandError
from threadko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from threadko.observability import (
    METRICS_ADDRESS_CONFIG_KEY, TRACING_CONFIG_KEY,
)
from threadko.runners import ServiceRunner
from threadko.utils import sanitize_url

_log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_KILLED = 130  # like a shell reporting death by SIGINT (128 + 2)

# how often the main thread wakes up when nothing happens
POLL_INTERVAL = 0.5
# after a kill: how long to give the stop thread and the runner's wait to end
KILL_GRACE = 1.0


# -- service discovery -------------------------------------------------

def _has_entrypoints(cls):
    return any(
        hasattr(member, ENTRYPOINT_EXTENSIONS_ATTR)
        for _, member in inspect.getmembers(cls))


def _is_missing_module(exc, module_name):
    """True if ``exc`` says ``module_name`` itself (or one of its parent
    packages) does not exist, rather than something it imports."""
    missing = getattr(exc, 'name', None)
    if not isinstance(exc, ModuleNotFoundError) or not missing:
        return False
    return module_name == missing or module_name.startswith(missing + '.')


def import_services(path):
    """Import the service classes named by a ``module[:Class]`` argument.

    With ``:Class``, that attribute of the module, which must be a class.
    Without, every class in the module's namespace (imported ones
    included) with at least one entrypoint method, in name order.

    :param path: ``"package.module"`` or ``"package.module:ClassName"``
    :returns: a list of classes
    :raises CommandError: the module does not exist, the class is missing
        or not a class, or the module has no service class. An
        :exc:`ImportError` raised *inside* the module propagates unchanged
        so its traceback is shown.
    """
    module_name, _, class_name = path.partition(':')

    if module_name.endswith('.py') and os.path.exists(module_name):
        dotted = os.path.normpath(module_name[:-3]).replace(os.sep, '.')
        if os.altsep:
            dotted = dotted.replace(os.altsep, '.')
        raise CommandError(
            "Failed to find service, did you mean '{}'?".format(dotted))

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if _is_missing_module(exc, module_name):
            raise CommandError(
                'Failed to import service module {!r}: {} (modules are '
                'looked up from the current directory and PYTHONPATH)'.format(
                    module_name, exc))
        raise
    except (ValueError, TypeError) as exc:  # '', '.relative', ...
        raise CommandError(
            'Invalid service module name {!r}: {}'.format(module_name, exc))

    if class_name:
        try:
            service_cls = getattr(module, class_name)
        except AttributeError:
            raise CommandError(
                'Failed to find service class {!r} in module {!r}'.format(
                    class_name, module_name))
        if not isinstance(service_cls, type):
            raise CommandError(
                'Service must be a class: {!r} in module {!r} is a {}'.format(
                    class_name, module_name, type(service_cls).__name__))
        return [service_cls]

    found = [
        cls for _, cls in inspect.getmembers(module, inspect.isclass)
        if _has_entrypoints(cls)
    ]
    if not found:
        raise CommandError(
            'Failed to find anything that looks like a service in module '
            '{!r} (a class with at least one entrypoint method)'.format(
                module_name))
    return found


# -- running until signalled -------------------------------------------

class ServiceProcess:
    """Runs a :class:`ServiceRunner` in the foreground of the process until
    it ends, reacting to SIGINT and SIGTERM (see the module docstring).

    The services start on a thread of their own (``threadko-cli-start``),
    so that a signal is answered in every state, starting included: a
    stop that arrives while the services are still starting (waiting for
    the broker, say) interrupts their start and is a graceful stop like
    any other.

    Signal handlers only post to a :class:`queue.SimpleQueue` (safe to call
    from a signal handler); the main thread does the work.

    :param runner: a runner with its services added, not started
    :param grace_period: seconds a graceful stop may take before the
        services are killed (``None``: wait for as long as it takes)
    :param start_timeout: seconds the services may take to start before
        they are killed and the process exits with status 1 (``None``:
        wait for as long as it takes, as Nameko does)
    """

    def __init__(self, runner, grace_period=DEFAULT_SHUTDOWN_GRACE_PERIOD,
                 start_timeout=None):
        self.runner = runner
        self.grace_period = grace_period
        self.start_timeout = start_timeout
        self._events = queue.SimpleQueue()
        self._started = False
        self._start_failure = None
        self._start_deadline = None
        self._stopper = None
        self._stop_deadline = None
        self._starter = threading.Thread(
            target=self._start_runner, name='threadko-cli-start',
            daemon=True)
        self._waiter = threading.Thread(
            target=self._wait_for_runner, name='threadko-cli-wait',
            daemon=True)

    def run(self):
        """Start the services and block until they are stopped, killed or
        one of them dies.

        :returns: the exit status: 0 after a graceful stop (also one that
            came while the services were starting), 1 if a container died,
            stopping failed or took longer than the grace period, or the
            services did not start within ``start_timeout``; 130 after a
            second signal
        :raises: the error that made the services fail to start
        """
        previous_handlers = self._install_signal_handlers()
        try:
            if self.start_timeout is not None:
                self._start_deadline = time.monotonic() + self.start_timeout
            self._starter.start()
            status = self._loop()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if self._start_failure is not None:
            _, exc, traceback = self._start_failure
            raise exc.with_traceback(traceback)
        return status

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals can only be handled on the main thread
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum, frame):
        self._events.put(('signal', signum))

    # -- the helper threads, each posting how it ended ------------------

    def _start_runner(self):
        try:
            self.runner.start()
        except BaseException:
            self._events.put(('start failed', sys.exc_info()))
        else:
            self._events.put(('started', None))

    def _wait_for_runner(self):
        try:
            self.runner.wait()
        except BaseException:
            self._events.put(('died', sys.exc_info()))
        else:
            self._events.put(('ended', None))

    def _stop_runner(self):
        try:
            self.runner.stop()
        except BaseException:
            self._events.put(('stop failed', sys.exc_info()))
        else:
            self._events.put(('stopped', None))

    # -- the main thread ---------------------------------------------------

    def _loop(self):
        while True:
            try:
                kind, value = self._events.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                if _passed(self._stop_deadline):
                    _log.error(
                        'services still stopping after the %ss grace period '
                        '(%s): killing them; the work they were doing goes '
                        'back to the broker', self.grace_period,
                        SHUTDOWN_GRACE_PERIOD_CONFIG_KEY)
                    return self._kill(EXIT_ERROR)
                if _passed(self._start_deadline):
                    _log.error(
                        'services not started after %ss (%s, '
                        '--start-timeout): killing them; the warnings above '
                        'say what they wait for', self.start_timeout,
                        START_TIMEOUT_CONFIG_KEY)
                    return self._kill(EXIT_ERROR)
                continue

            if kind == 'started':
                self._start_deadline = None
                if self._stopper is None:
                    self._started = True
                    self._waiter.start()
                    _log.info(
                        'running services: %s (broker: %s); stop with '
                        'Ctrl-C or SIGTERM',
                        ', '.join(self.runner.service_names),
                        sanitize_url(str(
                            self.runner.config.get(AMQP_URI_CONFIG_KEY))))
                # else: a stop interrupted the start, and ends the process

            elif kind == 'start failed':
                # the runner has killed every container already
                _log.error('failed to start services')
                self._start_failure = value
                return self._kill(EXIT_ERROR)

            elif kind == 'signal':
                name = signal.Signals(value).name
                if self._stopper is None:
                    _log.info(
                        '%s received%s: stopping services gracefully (send '
                        'SIGINT or SIGTERM again to kill them)', name,
                        '' if self._started else ' during start-up')
                    self._start_deadline = None
                    self._stopper = threading.Thread(
                        target=self._stop_runner, name='threadko-cli-stop',
                        daemon=True)
                    self._stopper.start()
                    if self.grace_period is not None:
                        self._stop_deadline = (
                            time.monotonic() + self.grace_period)
                else:
                    _log.warning('%s received again: killing services', name)
                    return self._kill(EXIT_KILLED)

            elif kind in ('stopped', 'ended'):
                # every container has stopped (an interrupted start
                # returns soon after)
                _join(self._stopper)
                _join(self._starter, KILL_GRACE)
                _log.info('services stopped')
                return EXIT_OK

            elif kind == 'died':
                # runner.wait() has already stopped the other services
                _log.error('a service died; exiting', exc_info=value)
                # a stop started by a signal may be stuck on a worker the
                # dying container abandoned
                _join(self._stopper, KILL_GRACE)
                return EXIT_ERROR

            elif kind == 'stop failed':
                _log.error('stopping services failed; killing them',
                           exc_info=value)
                return self._kill(EXIT_ERROR)

    def _kill(self, status):
        self.runner.kill()
        # the threads end soon after a kill, unless a stop is stuck
        # waiting for an abandoned worker: they are daemons, so after a
        # bounded wait they may be left behind
        deadline = time.monotonic() + KILL_GRACE
        for thread in (self._stopper, self._starter, self._waiter):
            _join(thread, max(0.0, deadline - time.monotonic()))
        return status


def _passed(deadline):
    return deadline is not None and time.monotonic() >= deadline


def _join(thread, timeout=None):
    """Join ``thread`` if there is one and it was started."""
    if thread is not None and thread.ident is not None:
        thread.join(timeout)


def _threads_blocking_exit():
    """Names of the threads the interpreter would wait for at exit: every
    non-daemon thread, and every ThreadPoolExecutor thread (the executor's
    exit hook joins those even when they are daemons)."""
    pool_threads = set(getattr(
        concurrent.futures.thread, '_threads_queues', {}).keys())
    main = threading.main_thread()
    return sorted(
        thread.name for thread in threading.enumerate()
        if thread is not main and thread.is_alive()
        and (not thread.daemon or thread in pool_threads))


def exit_abandoning_threads(status):
    """Exit now with ``status`` if threads still running service code
    (workers abandoned by a kill) would otherwise keep the interpreter
    alive; return if there are none.

    :param status: the exit status
    """
    left = _threads_blocking_exit()
    if not left:
        return
    _log.warning(
        'exiting without waiting for %d thread(s) still running service '
        'code: %s', len(left), ', '.join(left))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def observability_defines(metrics_address, tracing):
    """``--define``s for ``--metrics`` and ``--tracing`` (they override
    the file, as defines do)."""
    defines = ()
    if metrics_address is not None:
        # JSON text is YAML: the address stays a string
        defines += ('{}={}'.format(
            METRICS_ADDRESS_CONFIG_KEY, json.dumps(metrics_address)),)
    if tracing:
        defines += ('{}=true'.format(TRACING_CONFIG_KEY),)
    return defines


def _seconds_or_none(value):
    """A time limit in seconds, or None for no limit: ``None``, or a
    number of 0 or less (the config checks have vetted the type)."""
    return float(value) if value is not None and float(value) > 0 else None


@click.command('run')
@config_options
@click.option('--broker', metavar='URI',
              help='AMQP broker URI, used only when the config does not set '
                   'AMQP_URI (default: the in-process broker, memory://).')
@click.option('--grace-period', type=float, metavar='SECONDS',
              help='How long a graceful stop may take before the services '
                   'are killed (exit status 1). Overrides the config\'s '
                   'SHUTDOWN_GRACE_PERIOD; default {}s.'.format(
                       DEFAULT_SHUTDOWN_GRACE_PERIOD))
@click.option('--start-timeout', type=float, metavar='SECONDS',
              help='Exit with status 1 if the services have not started '
                   'within this time (waiting for the broker, say). '
                   'Overrides the config\'s START_TIMEOUT; default: wait '
                   'for as long as it takes.')
@click.option('--metrics', 'metrics_address', metavar='[HOST:]PORT',
              help='Serve Prometheus metrics (/metrics) and health probes '
                   '(/health/live, /health/ready) on this address: sets '
                   'METRICS_ADDRESS. Needs threadko[metrics].')
@click.option('--tracing', is_flag=True,
              help='Trace workers and calls with OpenTelemetry: sets '
                   'TRACING. Needs threadko[tracing] and an SDK set up '
                   '(opentelemetry-instrument, say).')
@nameko_bridge_option
@click.argument('services', nargs=-1, required=True,
                metavar='MODULE[:CLASS]...')
@click.pass_context
def run(ctx, config_path, defines, broker, grace_period, start_timeout,
        metrics_address, tracing, nameko_bridge, services):
    """Run one or more services until stopped.

    Each argument is a module (every class in it with entrypoints is run)
    or module:Class. Modules are imported from the current directory and
    PYTHONPATH, after the config is loaded, so config values can be used
    in class definitions.

    The first Ctrl-C or SIGTERM stops gracefully (running workers finish;
    exit status 0), also while the services are still starting; a second
    one kills the services (exit status 130), as does a stop that outlasts
    the grace period (exit status 1).
    """
    defines = tuple(defines) + observability_defines(metrics_address, tracing)
    config = load_config_for_services(config_path, defines, broker)
    install_nameko_bridge(nameko_bridge)

    service_classes = []
    for path in services:
        for service_cls in import_services(path):
            if service_cls not in service_classes:
                service_classes.append(service_cls)

    runner = ServiceRunner()
    for service_cls in service_classes:
        runner.add_service(service_cls)

    if grace_period is None:
        grace_period = config.get(
            SHUTDOWN_GRACE_PERIOD_CONFIG_KEY, DEFAULT_SHUTDOWN_GRACE_PERIOD)
    if start_timeout is None:
        start_timeout = config.get(START_TIMEOUT_CONFIG_KEY)
    status = ServiceProcess(
        runner, _seconds_or_none(grace_period),
        _seconds_or_none(start_timeout)).run()
    if status != EXIT_OK:
        exit_abandoning_threads(status)
    ctx.exit(status)
