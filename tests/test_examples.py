"""The README's examples run as documented."""

import os
import signal
import sys

import pytest

from support import ChildProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30


def child_env():
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONIOENCODING='utf-8')
    env.pop('PYTHONWARNINGS', None)
    return env


@pytest.fixture
def run_example():
    processes = []

    def run(*args):
        process = ChildProcess([sys.executable, *args], ROOT, child_env(),
                               stream='stdout', timeout=WAIT)
        processes.append(process)
        return process

    yield run
    for process in processes:
        process.close()


def test_demo_on_the_embedded_broker(run_example):
    """``scripts/run-examples`` = ``python -m examples``: services on
    memory://, called from a standalone client, stopped by Ctrl-C."""
    demo = run_example('-m', 'examples')
    demo.wait_for_line('are running on memory://')
    assert "returned 'hellø-x-y'" in demo.wait_for_line('remote_method')
    assert "['a-y', 'b-y', 'c-y']" in demo.wait_for_line('async results')
    demo.wait_for_line("service_b received: 'hellø event'")
    demo.wait_for_line("service_b received: {'from': 'a script'}")
    demo.wait_for_line('serving until Ctrl-C')
    demo.send_signal(signal.SIGINT)
    assert demo.wait() == 0
    assert 'stopped' in demo.output


def test_rpc_example_on_rabbitmq(run_example, rabbit_config):
    """The README's RabbitMQ variant: ``threadko run examples.rpc`` in one
    process, the standalone client script in another."""
    uri = rabbit_config['AMQP_URI']
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'examples.rpc'], ROOT, child_env(), timeout=WAIT)
    try:
        services.wait_for_line('running services')
        client = run_example('-m', 'examples.standalone_rpc', uri)
        assert "returned 'hellø-x-y'" in client.wait_for_line(
            'remote_method')
        assert client.wait() == 0
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0
    finally:
        services.close()


def test_events_example_on_rabbitmq(run_example, rabbit_config):
    """``threadko run examples.events`` in one process, the standalone
    dispatcher script in another."""
    uri = rabbit_config['AMQP_URI']
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'examples.events'], ROOT, child_env(), stream='both',
        timeout=WAIT)
    try:
        # the dispatcher fails (404) until the services declared the exchange
        services.wait_for_line('running services')
        client = run_example('-m', 'examples.standalone_events', uri)
        assert client.wait() == 0, client.output
        services.wait_for_line("service_b received: {'from': 'a script'}")
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0
    finally:
        services.close()


@pytest.mark.parametrize('heading, example', [
    ('## Services that call each other', 'rpc.py'),
    ('## Events', 'events.py'),
])
def test_readme_shows_the_example_services_as_they_are(heading, example):
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    section = readme.split(heading + '\n', 1)[1]
    shown = section.split('```python\n', 1)[1].split('```', 1)[0]
    source = open(os.path.join(ROOT, 'examples', example),
                  encoding='utf-8').read()
    # the file is the README's snippet plus its module docstring
    assert source.rstrip().endswith(shown.rstrip())
