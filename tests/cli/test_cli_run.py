"""``threadko run`` as a user runs it: a subprocess with a service module in
its working directory."""

import os
import signal
import subprocess
import sys

import pytest


def assert_one_line_error(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- graceful stop and kill -------------------------------------------------

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_after_running_worker_finishes(
        start_threadko, release, journal, signum):
    cli = start_threadko('run', 'svc:BlockingService')
    cli.wait_for_line('worker started')

    cli.send_signal(signum)
    cli.wait_for_line('stopping services gracefully')
    release()

    assert cli.wait() == 0, cli.output
    # dependencies stop only after the running worker finished
    assert journal() == ['worker done', 'dependency stopped']
    assert 'Traceback' not in cli.output


@pytest.mark.parametrize('second', [signal.SIGINT, signal.SIGTERM])
def test_second_signal_while_stopping_kills_and_exits_130(
        start_threadko, journal, second):
    cli = start_threadko('run', 'svc:BlockingService')
    cli.wait_for_line('worker started')
    cli.send_signal(signal.SIGINT)
    cli.wait_for_line('stopping services gracefully')

    cli.send_signal(second)

    # the worker is still blocked: the process exits without it
    assert cli.wait(timeout=5) == 130, cli.output
    cli.wait_for_line('killing services')
    assert 'worker done' not in journal()


def test_service_dying_stops_the_process_with_status_1(start_threadko):
    cli = start_threadko('run', 'svc:DyingService')

    assert cli.wait() == 1, cli.output
    assert 'Traceback' in cli.output
    assert 'RuntimeError: boom in a managed thread' in cli.output
    cli.wait_for_line('a service died')


# -- configuration ----------------------------------------------------------

def test_config_file_define_and_broker(start_threadko, write):
    write('config.yaml', '''
        SERVICE_NAME: from-file
        AMQP_URI: pyamqp://user:${TK_SECRET}@file-host
    ''')
    cli = start_threadko(
        'run', '--config', 'config.yaml', '-d', 'SERVICE_NAME=from-define',
        '--broker', 'pyamqp://guest:guest@ignored', 'svc:ConfiguredService',
        env={'TK_SECRET': 's3cret'})

    # the define overrides the file, and is visible in the class body;
    # --broker is ignored because the file sets AMQP_URI
    line = cli.wait_for_line('running services')
    assert 'running services: from-define ' in line
    assert 'broker: pyamqp://user:********@file-host' in line
    # default log format: time, level and logger name
    assert ' INFO ' in line and 'threadko.cli.run: ' in line

    cli.send_signal(signal.SIGTERM)
    assert cli.wait() == 0, cli.output
    assert 's3cret' not in cli.output


@pytest.mark.parametrize('args, broker', [
    (['--broker', 'pyamqp://guest:pw@option-host'],
     'pyamqp://guest:********@option-host'),
    ([], 'memory://'),
])
def test_broker_option_or_default_when_config_has_no_amqp_uri(
        start_threadko, args, broker):
    cli = start_threadko('run', *args, 'svc:ConfiguredService')

    line = cli.wait_for_line('running services')
    assert 'running services: configured (broker: {})'.format(broker) in line

    cli.send_signal(signal.SIGINT)
    assert cli.wait() == 0, cli.output


def test_logging_section_of_the_config_is_applied(start_threadko, write):
    write('config.yaml', '''
        LOGGING:
          version: 1
          formatters:
            custom: {format: 'CUSTOM %(levelname)s %(message)s'}
          handlers:
            stderr: {class: logging.StreamHandler, formatter: custom}
          root: {level: INFO, handlers: [stderr]}
    ''')
    cli = start_threadko('run', '-c', 'config.yaml', 'svc:ConfiguredService')

    line = cli.wait_for_line('running services')
    assert line.startswith('CUSTOM INFO running services: configured')

    cli.send_signal(signal.SIGTERM)
    assert cli.wait() == 0, cli.output


def test_unset_variable_warning_is_logged(start_threadko, write):
    write('config.yaml', 'UNUSED: ${TK_NOT_SET_ANYWHERE}\n')
    cli = start_threadko('run', '-c', 'config.yaml', 'svc:ConfiguredService')

    line = cli.wait_for_line('TK_NOT_SET_ANYWHERE')
    assert 'WARNING' in line and 'is not set' in line
    cli.wait_for_line('running services')

    cli.send_signal(signal.SIGTERM)
    assert cli.wait() == 0, cli.output


def test_discovery_runs_every_class_with_entrypoints_in_name_order(
        start_threadko, write):
    write('two_services.py', '''
        from svc import ConfiguredService, Idle

        class Zeta:
            name = 'zeta'

            @Idle.decorator
            def method(self):
                pass

        class NotAService:
            name = 'plain'
    ''')
    cli = start_threadko('run', 'two_services')

    # imported classes count too; ServiceRunner keeps the order it got
    line = cli.wait_for_line('running services')
    assert 'running services: configured, zeta (' in line

    cli.send_signal(signal.SIGTERM)
    assert cli.wait() == 0, cli.output


# -- errors -----------------------------------------------------------------

ERROR_CASES = {
    'missing module': (
        {}, ['run', 'no_such_module_here'],
        ["Failed to import service module 'no_such_module_here'",
         "No module named 'no_such_module_here'"]),
    'missing parent package': (
        {}, ['run', 'no_such_package.svc'],
        ["No module named 'no_such_package'"]),
    'file path instead of module': (
        {'pkg/service_file.py': ''}, ['run', 'pkg/service_file.py'],
        ["did you mean 'pkg.service_file'?"]),
    'no service in module': (
        {'plain.py': 'class Plain:\n    name = "plain"\n'},
        ['run', 'plain'],
        ["Failed to find anything that looks like a service in module "
         "'plain'"]),
    'missing class': (
        {}, ['run', 'svc:Missing'],
        ["Failed to find service class 'Missing' in module 'svc'"]),
    'not a class': (
        {}, ['run', 'svc:note'],
        ["Service must be a class", "'note'"]),
    'class without name': (
        {'nameless.py': (
            'from svc import Idle\n\n'
            'class Nameless:\n'
            '    @Idle.decorator\n'
            '    def method(self):\n'
            '        pass\n')},
        ['run', 'nameless'],
        ['must define a `name` attribute', 'nameless.Nameless']),
    'missing config file': (
        {}, ['run', '-c', 'missing.yaml', 'svc'],
        ["Cannot read config file 'missing.yaml'", 'No such file']),
    'invalid yaml': (
        {'bad.yaml': 'A: [1, 2\nB: 3\n'}, ['run', '-c', 'bad.yaml', 'svc'],
        ["Invalid YAML in config file 'bad.yaml'", 'line 2']),
    'define without key': (
        {}, ['run', '-d', '=x', 'svc'],
        ["Invalid --define '=x': expected KEY=VALUE"]),
    'define with invalid value': (
        {}, ['run', '-d', 'X=[1', 'svc'],
        ["Invalid --define 'X=[1'", 'not valid YAML']),
}


@pytest.mark.parametrize(
    'files, args, fragments', ERROR_CASES.values(), ids=list(ERROR_CASES))
def test_user_errors_are_one_line_without_traceback(
        threadko, write, files, args, fragments):
    for name, text in files.items():
        write(name, text)

    result = threadko(*args)

    assert_one_line_error(result, *fragments)


def test_import_error_inside_the_module_keeps_its_traceback(threadko, write):
    write('broken.py', 'import some_missing_dependency_xyz\n')

    result = threadko('run', 'broken')

    assert result.returncode == 1
    assert 'Traceback' in result.stderr
    assert ("ModuleNotFoundError: No module named "
            "'some_missing_dependency_xyz'") in result.stderr
    assert not any(
        line.startswith('Error: ') for line in result.stderr.splitlines())


def test_console_script_imports_services_from_the_current_directory(
        workdir):
    script = os.path.join(os.path.dirname(sys.executable), 'threadko')
    assert os.path.exists(script), 'the threadko console script is missing'

    # unlike `python -m`, a console script does not put the current
    # directory on sys.path: `run` must add it to find `svc`
    result = subprocess.run(
        [script, 'run', 'svc:Missing'], cwd=str(workdir),
        capture_output=True, text=True, timeout=10)

    assert_one_line_error(
        result, "Failed to find service class 'Missing' in module 'svc'")
