"""``threadko run``: import services and run them until signalled.

Process lifecycle (threads version of Nameko's ``nameko run``):

- the main thread owns the :class:`~threadko.runners.ServiceRunner`; it
  waits for events (signals, the runner ending) with a timeout so it stays
  responsive;
- the first SIGINT or SIGTERM stops the services gracefully (running
  workers finish) on a thread named ``threadko-cli-stop``; the process then
  exits with status 0;
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
import logging
import os
import queue
import signal
import sys
import threading
import time

import click

from threadko.cli.options import config_options, load_config_for_services
from threadko.constants import (
    AMQP_URI_CONFIG_KEY, DEFAULT_SHUTDOWN_GRACE_PERIOD,
    SHUTDOWN_GRACE_PERIOD_CONFIG_KEY,
)
from threadko.exceptions import CommandError
from threadko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
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

    Signal handlers only post to a :class:`queue.SimpleQueue` (safe to call
    from a signal handler); the main thread does the work.

    :param runner: a runner with its services added, not started
    :param grace_period: seconds a graceful stop may take before the
        services are killed (``None``: wait for as long as it takes)
    """

    def __init__(self, runner, grace_period=DEFAULT_SHUTDOWN_GRACE_PERIOD):
        self.runner = runner
        self.grace_period = grace_period
        self._events = queue.SimpleQueue()
        self._stopper = None
        self._stop_deadline = None
        self._waiter = threading.Thread(
            target=self._wait_for_runner, name='threadko-cli-wait',
            daemon=True)

    def run(self):
        """Start the services and block until they are stopped, killed or
        one of them dies.

        :returns: the exit status: 0 after a graceful stop, 1 if a
            container died or stopping failed, 130 after a kill
        """
        previous_handlers = self._install_signal_handlers()
        try:
            try:
                self.runner.start()
            except BaseException:
                _log.error('failed to start services; killing them')
                self.runner.kill()
                raise
            self._waiter.start()
            _log.info(
                'running services: %s (broker: %s); stop with Ctrl-C or '
                'SIGTERM', ', '.join(self.runner.service_names),
                sanitize_url(str(
                    self.runner.config.get(AMQP_URI_CONFIG_KEY))))
            return self._loop()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals can only be handled on the main thread
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum, frame):
        self._events.put(('signal', signum))

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

    def _loop(self):
        while True:
            try:
                kind, value = self._events.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                if self._grace_period_over():
                    _log.error(
                        'services still stopping after the %ss grace period '
                        '(%s): killing them; the work they were doing goes '
                        'back to the broker', self.grace_period,
                        SHUTDOWN_GRACE_PERIOD_CONFIG_KEY)
                    return self._kill(EXIT_ERROR)
                continue

            if kind == 'signal':
                name = signal.Signals(value).name
                if self._stopper is None:
                    _log.info(
                        '%s received: stopping services gracefully (send '
                        'SIGINT or SIGTERM again to kill them)', name)
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

            elif kind == 'ended':
                self._join_stopper()
                _log.info('services stopped')
                return EXIT_OK

            elif kind == 'died':
                # runner.wait() has already stopped the other services
                _log.error('a service died; exiting', exc_info=value)
                # a stop started by a signal may be stuck on a worker the
                # dying container abandoned
                self._join_stopper(KILL_GRACE)
                return EXIT_ERROR

            elif kind == 'stop failed':
                _log.error('stopping services failed; killing them',
                           exc_info=value)
                return self._kill(EXIT_ERROR)

    def _grace_period_over(self):
        return (self._stop_deadline is not None
                and time.monotonic() >= self._stop_deadline)

    def _join_stopper(self, timeout=None):
        if self._stopper is not None:
            self._stopper.join(timeout)

    def _kill(self, status):
        self.runner.kill()
        # both threads end soon after a kill, unless the stop is stuck
        # waiting for an abandoned worker: they are daemons, so after a
        # bounded wait they may be left behind
        deadline = time.monotonic() + KILL_GRACE
        self._join_stopper(KILL_GRACE)
        self._waiter.join(max(0.0, deadline - time.monotonic()))
        return status


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


def _grace_period(value):
    """The grace period in seconds, or None for no limit (``None`` or a
    value of 0 or less in the config)."""
    try:
        seconds = None if value is None else float(value)
    except (TypeError, ValueError):
        raise CommandError(
            '{} must be a number of seconds, not {!r}'.format(
                SHUTDOWN_GRACE_PERIOD_CONFIG_KEY, value))
    return seconds if seconds is not None and seconds > 0 else None


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
@click.argument('services', nargs=-1, required=True,
                metavar='MODULE[:CLASS]...')
@click.pass_context
def run(ctx, config_path, defines, broker, grace_period, services):
    """Run one or more services until stopped.

    Each argument is a module (every class in it with entrypoints is run)
    or module:Class. Modules are imported from the current directory and
    PYTHONPATH, after the config is loaded, so config values can be used
    in class definitions.

    The first Ctrl-C or SIGTERM stops gracefully (running workers finish;
    exit status 0); a second one kills the services (exit status 130), as
    does a stop that outlasts the grace period (exit status 1).
    """
    config = load_config_for_services(config_path, defines, broker)

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
    status = ServiceProcess(runner, _grace_period(grace_period)).run()
    if status != EXIT_OK:
        exit_abandoning_threads(status)
    ctx.exit(status)
