"""Every file in examples/ runs, and does what its docs say.

The examples ported from Nameko's documentation (anatomy, helloworld, async
RPC, broadcast, config, auth, expected exceptions, sensitive arguments),
the files docs/*.rst include instead of inline code, and the testing
examples in examples/testing, run by pytest in a child process as a user
would run them. The guards at the end keep it so: every ``literalinclude``
points at a file (and text) that exists, and every example file is named
by some test.
"""

import base64
import configparser
import json
import logging
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import ChildProcess, child_env

from threadko.events import BROADCAST, EventHandler, event_handler
from threadko.exceptions import RemoteError, UndeliverableMessage
from threadko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from threadko.rpc import Rpc, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy, ServiceRpcProxy
from threadko.testing.services import entrypoint_hook, entrypoint_waiter
from threadko.testing.utils import get_extension
from threadko.utils import REDACTED, get_redacted_args

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / 'examples'
DOCS = ROOT / 'docs'
WAIT = 30

# the examples are imported, and `pytest` run as a script does not put the
# repository root on sys.path as `python -m pytest` does
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def example_env(**extra):
    """A child's environment; its output is UTF-8 whatever the locale."""
    return child_env(PYTHONIOENCODING='utf-8', **extra)


def run_python(code, **env):
    """Run ``python -c code`` in the repository root; ``(rc, output)``."""
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=str(ROOT), env=example_env(**env),
        capture_output=True, text=True, timeout=WAIT)
    return result.returncode, result.stdout + result.stderr


class Calls:
    """An ``entrypoint_waiter`` callback that records the arguments and
    context data of every worker, and ends the wait on the ``count``-th."""

    def __init__(self, count=1):
        self.count = count
        self.args = []
        self.data = []
        self._lock = threading.Lock()

    def __call__(self, worker_ctx, result, exc_info):
        with self._lock:
            self.args.append(worker_ctx.args)
            self.data.append(dict(worker_ctx.data))
            return len(self.args) >= self.count


# -- examples ported from Nameko's docs ------------------------------------

def test_anatomy_service_declares_a_proxy_and_an_rpc_entrypoint(
        container_factory, memory_config):
    from examples.anatomy import Service
    from threadko.rpc import RpcProxy

    container = container_factory(Service)
    proxy = get_extension(container, RpcProxy)
    assert proxy.target_service == 'another_service'
    assert get_extension(container, Rpc, method_name='method') is not None

    container.start()
    with ServiceRpcProxy('service', timeout=WAIT) as service:
        assert service.method() is None


def test_helloworld_greets_over_rpc(container_factory, memory_config):
    from examples.helloworld import GreetingService

    container_factory(GreetingService).start()
    with ClusterRpcProxy(memory_config, timeout=WAIT) as cluster_rpc:
        assert cluster_rpc.greeting_service.hello(name='ナメコ') == (
            'Hello, ナメコ!')


@pytest.mark.rabbit
def test_helloworld_with_threadko_run_and_shell(rabbit_config):
    """As its docstring shows: ``threadko run`` in one process, the call
    from ``threadko shell`` (here fed a script) in another."""
    uri = rabbit_config['AMQP_URI']
    services = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--broker', uri,
         'examples.helloworld'], str(ROOT), example_env(), timeout=WAIT)
    try:
        services.wait_for_line('running services')
        shell = subprocess.run(
            [sys.executable, '-m', 'threadko', 'shell', '--broker', uri],
            input='print(n.rpc.greeting_service.hello(name="ナメコ"))\n',
            cwd=str(ROOT), env=example_env(), capture_output=True, text=True,
            timeout=WAIT)
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert shell.stdout.splitlines()[-1] == 'Hello, ナメコ!'
        services.send_signal(signal.SIGTERM)
        assert services.wait() == 0
    finally:
        services.close()


def test_async_rpc_script_has_two_calls_in_flight(
        runner_factory, memory_config, capsys):
    from examples.async_rpc import main
    from examples.rpc import ServiceX, ServiceY

    runner_factory(memory_config, ServiceX, ServiceY).start()
    assert main(memory_config['AMQP_URI']) == ('hello-x-y', 'world-x-y')
    assert capsys.readouterr().out == 'hello-x-y world-x-y\n'


@pytest.mark.rabbit
def test_broadcast_reaches_every_instance(
        container_factory, rabbit_config, rabbit_manager, capsys):
    """Two instances of ``listener``: with BROADCAST, each has a queue of
    its own, and each handles the one ``ping``."""
    from examples.broadcast import ListenerService

    instances = [container_factory(ListenerService, rabbit_config)
                 for _ in range(2)]
    for container in instances:
        container.start()

    queues = [queue for queue in rabbit_manager.get_queues(
        rabbit_config['vhost'])
        if queue['name'].startswith('evt-monitor-ping--listener.ping-')]
    assert len(queues) == 2
    assert all(queue['exclusive'] and queue['auto_delete']
               for queue in queues)

    dispatch = event_dispatcher(rabbit_config)
    try:
        with entrypoint_waiter(instances[0], 'ping'), \
                entrypoint_waiter(instances[1], 'ping'):
            dispatch('monitor', 'ping', None)
    finally:
        dispatch.close()
    assert capsys.readouterr().out == 'pong from listener\n' * 2


@pytest.mark.parametrize('enabled, expected', [
    (None, (403, 'FeatureNotEnabled')),
    (False, (403, 'FeatureNotEnabled')),
    (True, (200, 'foo')),
])
def test_config_dependency_provider_reads_the_containers_config(
        container_factory, web_config, web_session, enabled, expected):
    from examples.config_dependency_provider import Service

    config = {} if enabled is None else {'FOO_FEATURE_ENABLED': enabled}
    container_factory(Service, config).start()
    response = web_session.get('/foo')
    assert (response.status_code, response.text) == expected


def test_global_config_is_read_when_the_class_is_defined():
    """``threadko run`` fills ``threadko.config`` before the import, so
    ``--define HEARTBEAT_INTERVAL`` sets the timer's interval."""
    heartbeat = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run',
         'examples.config_dependency_provider:Heartbeat',
         '--define', 'HEARTBEAT_INTERVAL=0.05'],
        str(ROOT), example_env(), stream='stdout', timeout=WAIT)
    try:
        # at 0.05 s, three beats come long before the default 10 s one
        for _ in range(3):
            heartbeat.wait_for_line('heartbeat')
            heartbeat.lines.remove('heartbeat')
        heartbeat.send_signal(signal.SIGTERM)
        assert heartbeat.wait() == 0
    finally:
        heartbeat.close()


def test_timer_example_pings_every_second():
    """``threadko run examples.timer`` needs no broker."""
    pinging = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', 'examples.timer'],
        str(ROOT), example_env(), stream='stdout', timeout=WAIT)
    try:
        line = pinging.wait_for_line('timer_example: ping at')
        assert re.fullmatch(r'timer_example: ping at \d\d:\d\d:\d\d', line)
        pinging.send_signal(signal.SIGINT)
        assert pinging.wait() == 0
    finally:
        pinging.close()


# -- auth, expected exceptions and sensitive arguments ---------------------

def login(username, password):
    """A token from ``examples.sensitive_arguments``'s ``login``."""
    with ServiceRpcProxy('service', timeout=WAIT) as service:
        return service.login(username, password)


@pytest.fixture
def login_service(container_factory, memory_config):
    from examples.sensitive_arguments import Service

    container = container_factory(Service)
    container.start()
    return container


def test_auth_login_returns_a_token_with_the_users_roles(login_service):
    token = login('susie', 'battery staple')
    payload, _, signature = token.rpartition('.')
    assert json.loads(base64.urlsafe_b64decode(payload)) == {
        'username': 'susie', 'roles': ['developer', 'admin']}
    assert re.fullmatch('[0-9a-f]{64}', signature)


@pytest.mark.parametrize('username, password, message', [
    ('matt', 'wrong', 'Incorrect password'),
    ('nobody', 'correct horse', 'User does not exist'),
])
def test_auth_login_refuses_bad_credentials(
        login_service, username, password, message):
    with pytest.raises(RemoteError) as exc_info:
        login(username, password)
    assert exc_info.value.exc_type == 'Unauthenticated'
    assert exc_info.value.value == message


def test_auth_token_travels_in_context_data_of_later_calls(
        container_factory, memory_config):
    """The token ``authenticate`` stores goes along with the RPC calls the
    same worker makes afterwards."""
    from examples.auth import Auth
    from threadko.contextdata import AuthToken
    from threadko.rpc import RpcProxy

    class Gateway:
        name = 'gateway'
        auth = Auth()
        whoami_rpc = RpcProxy('whoami')

        @rpc
        def login_and_ask(self, username, password):
            token = self.auth.authenticate(username, password)
            return token, self.whoami_rpc.token()

    class WhoAmI:
        name = 'whoami'
        auth_token = AuthToken()
        auth = Auth()

        @rpc
        def token(self):
            return self.auth_token, self.auth.has_role('admin')

    for service_cls in (Gateway, WhoAmI):
        container_factory(service_cls).start()
    with ServiceRpcProxy('gateway', timeout=WAIT) as gateway:
        token, (seen, is_admin) = gateway.login_and_ask('matt',
                                                       'correct horse')
    assert seen == token
    assert is_admin is False


@pytest.mark.parametrize('context_data, exc_type, level', [
    # not an admin: the caller's fault, so a WARNING
    ('matt', 'Unauthorized', logging.WARNING),
    # an admin: the genuine bug of `update`, an ERROR
    ('susie', 'TypeError', logging.ERROR),
    # no token at all: Unauthenticated is not expected by `update`
    (None, 'Unauthenticated', logging.ERROR),
    # a forged token is no token of ours: no admin role
    ({'auth_token': 'eyJ9.forged'}, 'Unauthorized', logging.WARNING),
], ids=['developer', 'admin', 'anonymous', 'forged'])
def test_expected_exceptions_are_logged_as_warnings(
        container_factory, memory_config, caplog, context_data, exc_type,
        level):
    from examples.expected_exceptions import Service
    from examples.sensitive_arguments import Service as LoginService

    if isinstance(context_data, str):
        passwords = {'matt': 'correct horse', 'susie': 'battery staple'}
        # both services are called "service": log in, then stop that one
        login_container = container_factory(LoginService)
        login_container.start()
        token = login(context_data, passwords[context_data])
        login_container.stop()
        context_data = {'auth_token': token}

    container_factory(Service).start()
    caplog.set_level(logging.WARNING, logger='threadko.containers')
    with ServiceRpcProxy('service', context_data=context_data,
                         timeout=WAIT) as service:
        with pytest.raises(RemoteError) as exc_info:
            service.update({'some': 'data'})
    assert exc_info.value.exc_type == exc_type

    failures = [record for record in caplog.records
                if 'error handling worker' in record.getMessage()]
    assert [record.levelno for record in failures] == [level]
    assert failures[0].exc_info[0].__name__ == exc_type  # with traceback


def test_sensitive_arguments_are_redacted_in_the_call_log(
        login_service, caplog):
    caplog.set_level(logging.DEBUG)  # everything threadko logs, too
    assert login('matt', 'correct horse')

    calls = [record.getMessage() for record in caplog.records
             if record.name == 'examples.sensitive_arguments']
    assert len(calls) == 1
    assert calls[0].endswith(
        "called with {'username': 'matt', 'password': '********'}")
    assert 'correct horse' not in caplog.text


class Redacting:
    name = 'redacting'

    @rpc(sensitive_arguments=('password', 'user.token', 'cards[1]',
                              'users[0].pin', 'not_an_argument',
                              'user.missing_key', 'cards[9]'))
    def method(self, password, user, cards, users=(), other=None):
        pass

    @rpc(sensitive_arguments='secret')
    def single(self, secret, *args, **kwargs):
        pass


def redacted_args(container_factory, method_name, *args, **kwargs):
    container = container_factory(Redacting, {})
    entrypoint = get_extension(container, Rpc, method_name=method_name)
    return get_redacted_args(entrypoint, *args, **kwargs)


def test_get_redacted_args_redacts_argument_paths(container_factory):
    user = {'name': 'ada', 'token': 't0ken'}
    cards = ['1111', '2222', '3333']
    users = [{'pin': 1234, 'name': 'bob'}]

    redacted = redacted_args(container_factory, 'method', 'pa55', user,
                             cards, users=users)

    assert redacted == {
        'password': REDACTED,
        'user': {'name': 'ada', 'token': REDACTED},
        'cards': ['1111', REDACTED, '3333'],
        'users': [{'pin': REDACTED, 'name': 'bob'}],
        'other': None,  # defaults are included; paths that miss are ignored
    }
    # the caller's objects are left alone
    assert user == {'name': 'ada', 'token': 't0ken'}
    assert cards == ['1111', '2222', '3333']
    assert users == [{'pin': 1234, 'name': 'bob'}]


def test_get_redacted_args_takes_one_path_as_a_string(container_factory):
    redacted = redacted_args(container_factory, 'single', 's', 1, 2, key=3)
    assert redacted == {
        'secret': REDACTED, 'args': (1, 2), 'kwargs': {'key': 3}}


def test_get_redacted_args_leaves_unredactable_values(container_factory):
    # a path into a value that is not a container does not break anything
    redacted = redacted_args(container_factory, 'method', password=None,
                             user='not a dict', cards=None)
    assert redacted['password'] == REDACTED
    assert redacted['user'] == 'not a dict'
    assert redacted['cards'] is None


# -- the files docs/*.rst include ------------------------------------------

# docs/concepts.rst

def test_reporter_counts_rows_with_a_connection_per_worker(
        container_factory, tmp_path, capsys):
    from examples.reporter import Reporter

    path = str(tmp_path / 'app.db')
    with sqlite3.connect(path) as db:
        db.execute('create table events (id integer)')
        db.executemany('insert into events values (?)', [(1,), (2,), (3,)])
    db.close()

    container = container_factory(Reporter, {'DB_PATH': path})
    container.start()
    # a connection used on another thread than its own would raise
    with entrypoint_hook(container, 'report') as report:
        report()
        report()
    assert capsys.readouterr().out == '3 events\n3 events\n'


def test_service_container_example_starts_and_stops(memory_config):
    from examples.service_container import (
        host_services, host_with_fewer_workers,
    )
    from threadko import config

    before = dict(config)
    assert host_services() is None
    assert host_with_fewer_workers() is None
    assert dict(config) == before  # the patch is undone


def test_call_timer_logs_each_worker_from_many_threads(
        container_factory, caplog):
    from examples.call_timer import CallTimer

    class Timed:
        name = 'timed'
        call_timer = CallTimer()

        @rpc
        def work(self, n):
            return n

    container = container_factory(Timed, {'max_workers': 8})
    container.start()
    caplog.set_level(logging.INFO, logger='examples.call_timer')
    with entrypoint_hook(container, 'work') as work, ThreadPoolExecutor(
            8, thread_name_prefix='threadko-test-caller') as pool:
        assert list(pool.map(work, range(40))) == list(range(40))

    lines = [record.getMessage() for record in caplog.records
             if record.name == 'examples.call_timer']
    assert len(lines) == 40
    assert all(re.fullmatch(r'timed\.work\.\S+ took \d+\.\d{3}s', line)
               for line in lines)
    assert get_extension(container, CallTimer)._started == {}


def test_poller_fires_until_stopped(container_factory):
    from examples.poller import poll

    class Polling:
        name = 'polling'

        @poll(interval=0.01)
        def tick(self):
            return 'tick'

    container = container_factory(Polling, {})
    container.start()
    ticks = Calls(count=3)
    with entrypoint_waiter(container, 'tick', callback=ticks):
        pass
    container.stop()  # returns once the loop's thread has ended
    assert not [thread for thread in threading.enumerate()
                if thread.name.startswith('threadko-polling-poller')]


def test_poller_stops_promptly_on_kill(container_factory):
    from examples.poller import poll

    class Polling:
        name = 'polling'

        @poll(interval=0.01)
        def tick(self):
            pass

    container = container_factory(Polling, {})
    container.start()
    with entrypoint_waiter(container, 'tick'):
        pass
    container.kill()
    assert container.wait() is None


def test_poller_example_runs_with_threadko_run():
    inbox = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', 'examples.poller'],
        str(ROOT), example_env(), stream='stdout', timeout=WAIT)
    try:
        inbox.wait_for_line('inbox: checking for new mail')
        inbox.send_signal(signal.SIGTERM)
        assert inbox.wait() == 0
    finally:
        inbox.close()


# docs/rpc.rst

def test_registered_exception_is_raised_as_itself(
        container_factory, memory_config):
    from examples.docs_rpc import Bank, InsufficientFunds

    container_factory(Bank).start()
    with ServiceRpcProxy('bank', timeout=WAIT) as bank:
        assert bank.withdraw(20) == 30
        with pytest.raises(InsufficientFunds) as exc_info:
            bank.withdraw(100)
    # arguments arrive made JSON-safe, as strings
    assert exc_info.value.args == ('100',)


def test_worker_makes_several_calls_in_flight(runner_factory, memory_config):
    from examples.docs_rpc import Batch, Other

    runner_factory(Batch, Other).start()
    with ServiceRpcProxy('batch', timeout=WAIT) as batch:
        assert batch.process_all([1, 2, 3, 'a']) == [2, 4, 6, 'aa']


def test_one_client_shared_by_wsgi_request_threads():
    code = '''
from concurrent.futures import ThreadPoolExecutor
from examples.rpc import ServiceX, ServiceY
from threadko.runners import run_services

with run_services({"AMQP_URI": "memory://"}, ServiceX, ServiceY):
    from examples.rpc_wsgi_client import application

    def get(query):
        statuses = []
        body = b"".join(application(
            {"QUERY_STRING": query},
            lambda status, headers: statuses.append(status)))
        return statuses[0], body.decode()

    with ThreadPoolExecutor(8) as pool:
        for status, body in pool.map(get, ["n%d" % i for i in range(20)]):
            print(status, body)
    print(get(""))
'''
    rc, output = run_python(code, AMQP_URI='memory://')
    assert rc == 0, output
    lines = output.splitlines()
    assert lines[:20] == ['200 OK n{}-x-y'.format(i) for i in range(20)]
    assert lines[20] == "('200 OK', 'world-x-y')"


# docs/events.rst

def test_orders_dispatchers_send_mandatory_events_and_headers(
        container_factory, memory_config):
    from examples.docs_events import Emails, Orders

    class PlacingOrders(Orders):
        @rpc
        def place(self, order):
            self.dispatch('order_placed', order)

        @rpc
        def note(self, text):
            self.audit('noted', text)

    class Auditor:
        name = 'auditor'

        @event_handler('orders', 'noted')
        def record(self, text):
            pass

    container_factory(PlacingOrders).start()
    with ServiceRpcProxy('orders', timeout=WAIT) as orders:
        # no handler has bound a queue yet
        with pytest.raises(RemoteError) as exc_info:
            orders.place({'id': 1})
        assert exc_info.value.exc_type == UndeliverableMessage.__name__

        emails = container_factory(Emails)
        emails.start()
        received = Calls()
        with entrypoint_waiter(emails, 'send_confirmation',
                               callback=received):
            orders.place({'id': 2})
        assert received.args == [({'id': 2},)]

        auditor = container_factory(Auditor)
        auditor.start()
        noted = Calls()
        with entrypoint_waiter(auditor, 'record', callback=noted):
            orders.note('hello')
    assert noted.args == [('hello',)]
    assert noted.data[0]['x-origin'] == 'orders'


def test_host_broadcast_handler_names_its_queue_after_the_host(
        container_factory, memory_config):
    from examples.docs_events import Cache, HostBroadcastHandler

    container = container_factory(Cache)
    container.start()  # reliable delivery is allowed: the name is stable
    handler = get_extension(container, HostBroadcastHandler)
    assert handler.queue.name == (
        'evt-catalog-price_changed--cache.invalidate-' + socket.gethostname())

    dispatch = event_dispatcher()
    try:
        received = Calls()
        with entrypoint_waiter(container, 'invalidate', callback=received):
            dispatch('catalog', 'price_changed', 42)
    finally:
        dispatch.close()
    assert received.args == [(42,)]


def test_instance_broadcast_handler_reads_the_containers_config(
        container_factory, memory_config):
    from examples.docs_events import InstanceBroadcastHandler

    class Cache:
        name = 'cache'

        @InstanceBroadcastHandler.decorator(
            'catalog', 'price_changed', handler_type=BROADCAST)
        def invalidate(self, product_id):
            pass

    # containers read the property of the unbound declaration too
    (declaration,) = getattr(Cache.invalidate, ENTRYPOINT_EXTENSIONS_ATTR)
    assert declaration.broadcast_identifier is None

    container = container_factory(Cache, {'INSTANCE_ID': 'web-3'})
    container.start()
    handler = get_extension(container, EventHandler)
    assert handler.queue.name == (
        'evt-catalog-price_changed--cache.invalidate-web-3')


def test_event_type_patterns(container_factory, memory_config):
    from examples.docs_events import Billing

    container = container_factory(Billing)
    container.start()
    dispatch = event_dispatcher()
    on_order_event, audit = Calls(count=2), Calls(count=3)
    try:
        with entrypoint_waiter(container, 'on_order_event',
                               callback=on_order_event), \
                entrypoint_waiter(container, 'audit', callback=audit):
            for event_type in ('order.placed', 'order.item.added',
                               'order.cancelled'):
                dispatch('orders', event_type, event_type)
    finally:
        dispatch.close()
    assert sorted(on_order_event.args) == [
        ('order.cancelled',), ('order.placed',)]
    assert sorted(audit.args) == [
        ('order.cancelled',), ('order.item.added',), ('order.placed',)]


def test_standalone_dispatch_in_both_config_styles(
        container_factory, memory_config):
    from examples.docs_events import Emails, dispatch_order_placed

    emails = container_factory(Emails)
    emails.start()
    received = Calls(count=2)
    with entrypoint_waiter(emails, 'send_confirmation', callback=received):
        dispatch_order_placed(memory_config)  # Nameko 2
        dispatch_order_placed()  # Nameko 3: the global config
    assert received.args == [({'id': 1},), ({'id': 1},)]


# docs/messaging.rst

def test_work_queue_keeps_jobs_published_before_the_resizer_ran(
        container_factory, memory_config):
    from examples.work_queue import Gallery, Resizer

    gallery = container_factory(Gallery)
    gallery.start()
    with entrypoint_hook(gallery, 'upload') as upload:
        upload(7)

    resizer = container_factory(Resizer)
    jobs = Calls()
    with entrypoint_waiter(resizer, 'resize', callback=jobs):
        resizer.start()
    assert jobs.args == [({'image_id': 7},)]


def test_publish_options_of_a_thumbnail_job(container_factory,
                                            memory_config):
    from examples.work_queue import Resizer, Thumbnails

    resizer = container_factory(Resizer)
    resizer.start()
    thumbnails = container_factory(Thumbnails)
    thumbnails.start()
    jobs = Calls()
    with entrypoint_hook(thumbnails, 'upload_thumbnail') as upload, \
            entrypoint_waiter(resizer, 'resize', callback=jobs):
        upload(8)
    assert jobs.args == [({'image_id': 8, 'size': 'thumb'},)]
    assert jobs.data[0]['x-tenant'] == 'acme'


@pytest.mark.rabbit
def test_undecodable_orders_are_parked(
        container_factory, rabbit_config, rabbit_manager,
        get_message_from_queue):
    from examples.dead_letters import Fulfilment

    container = container_factory(Fulfilment, rabbit_config)
    container.start()
    vhost = rabbit_config['vhost']

    fulfilled = Calls()
    with entrypoint_waiter(container, 'fulfil', callback=fulfilled):
        assert rabbit_manager.publish(vhost, 'orders', 'new', {'id': 1})
    assert fulfilled.args == [({'id': 1},)]

    assert rabbit_manager.publish(
        vhost, 'orders', 'new', 'not for us',
        properties={'content_type': 'application/x-unknown'})
    parked = get_message_from_queue('orders-parked', timeout=WAIT)
    assert parked.body == b'not for us'
    assert parked.properties.content_type == 'application/x-unknown'
    assert parked.headers['x-death'][0]['reason'] == 'rejected'
    assert fulfilled.args == [({'id': 1},)]  # no worker saw it


def test_publishing_from_a_script(container_factory, memory_config):
    from examples.publish_from_script import main
    from examples.work_queue import Resizer

    resizer = container_factory(Resizer)
    resizer.start()
    jobs = Calls()
    with entrypoint_waiter(resizer, 'resize', callback=jobs):
        main(memory_config['AMQP_URI'])
    assert jobs.args == [({'image_id': 7},)]


# docs/web.rst

def test_context_data_from_request_headers(container_factory, web_config,
                                           web_session):
    from examples.http_context_data import Greeter

    container_factory(Greeter).start()
    assert web_session.get(
        '/language', headers={'Accept-Language': 'fr'}).text == 'fr'
    assert web_session.get('/language').text == 'None'


def test_wsgi_file_serves_the_embedded_services():
    code = '''
from werkzeug.test import Client
from examples.wsgi import application, rpc_client, services

client = Client(application)
for url in ("/api/greet/Ada", "/hello/Ada"):
    response = client.get(url)
    print(response.status_code, response.get_data(as_text=True).strip())
rpc_client.stop()
services.stop()
'''
    rc, output = run_python(code, AMQP_URI='memory://')
    assert rc == 0, output
    assert output.splitlines() == [
        '200 Hello, Ada!', '200 Hello, Ada! (over RPC)']


# docs/amqp.rst

def test_sqlalchemy_notes_service_keeps_notes_in_a_database(
        container_factory, memory_config, tmp_path):
    from sqlalchemy import create_engine

    from examples.sqlalchemy_notes import NotesBase, NotesService

    uri = 'sqlite:///{}'.format(tmp_path / 'notes.db')
    NotesBase.metadata.create_all(create_engine(uri))
    container = container_factory(NotesService, dict(
        memory_config, DB_URIS={'notes:NotesBase': uri}))
    container.start()
    with entrypoint_hook(container, 'add') as add:
        assert [add('one'), add('two')] == [1, 2]
    with entrypoint_hook(container, 'count') as count:
        assert count() == 2


@pytest.mark.rabbit
@pytest.mark.parametrize('path', ['bridge', 'rewritten imports'])
def test_a_nameko_project_moves_over_both_ways(request, tmp_path, path):
    """The migration guide's two paths, on a project written for Nameko
    (examples/nameko_project/greeter.py and
    examples/nameko_project/test_greeter.py): its tests pass unchanged
    through the bridge (-p threadko.nameko), and after
    examples/rewrite_imports.sh rewrote them (no bridge)."""
    project = EXAMPLES / 'nameko_project'
    options = ['-p', 'no:cacheprovider', '-q',
               '--amqp-uri', request.config.getoption('RABBIT_AMQP_URI'),
               '--rabbit-api-uri', request.config.getoption('RABBIT_API_URI')]
    if path == 'bridge':
        options += ['-p', 'threadko.nameko']
    else:
        project = tmp_path / 'nameko_project'
        shutil.copytree(EXAMPLES / 'nameko_project', project)
        subprocess.run([str(EXAMPLES / 'rewrite_imports.sh')], cwd=project,
                       check=True, timeout=WAIT)
        sources = '\n'.join(
            p.read_text() for p in sorted(project.glob('*.py')))
        assert 'from threadko.rpc import rpc' in sources
        assert not re.search(r'^\s*(from|import) nameko\b', sources,
                             re.MULTILINE)
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', str(project), *options],
        cwd=str(tmp_path), env=example_env(), capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '2 passed' in result.stdout


def test_per_worker_state_stays_with_each_worker(container_factory,
                                                 memory_config):
    from examples.per_worker_state import Reporter, Tagging

    container = container_factory(Reporter, memory_config)
    container.start()
    durations = [0.4, 0.1, 0.3, 0.2]  # overlapping calls
    with ClusterRpcProxy(memory_config, timeout=WAIT) as rpc:
        with ThreadPoolExecutor(len(durations)) as pool:
            results = list(pool.map(rpc.reporter.report, durations))
    tags = [tag for tag, _ in results]
    assert len(set(tags)) == len(durations)
    # each worker timed its own call, though they ran at once (a timer
    # shared by the workers, restarted by the last one to start, would
    # make the longer calls look shorter than they slept)
    for (_, elapsed), slept in zip(results, durations):
        assert elapsed >= slept
    tagging = get_extension(container, Tagging)
    assert sorted(tag for tag, _ in tagging.finished) == sorted(tags)
    assert tagging.tags == {}


def test_the_nameko_project_example_needs_no_greenthread_changes():
    result = subprocess.run(
        [sys.executable, '-m', 'threadko', 'check-migration',
         str(EXAMPLES / 'nameko_project')], env=example_env(),
        capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'nothing to change' in result.stderr


def test_documented_transport_options_are_the_defaults():
    from examples.transport_options import DEFAULT_TRANSPORT_OPTIONS
    from threadko import constants

    assert DEFAULT_TRANSPORT_OPTIONS == constants.DEFAULT_TRANSPORT_OPTIONS


# -- examples/testing, run by pytest as a user would -------------------------

TESTING_EXAMPLES = {
    # junit classname: the tests it must pass
    'examples.testing.unit_test': ['test_conversion_service'],
    'examples.testing.alternative_dependency_unit_test': ['test_service'],
    'examples.testing.integration_test': ['test_service_x_y_integration'],
    'examples.testing.large_integration_test': [
        'test_shop_checkout_integration'],
    'examples.testing.entrypoint_hook_test': [
        'test_hello_languages[en-Hello]',
        'test_hello_languages[fr-Bonjour]',
        'test_hello_languages[de-Guten Tag]'],
    'examples.testing.entrypoint_waiter_test': ['test_event_interface'],
    'examples.testing.http_test': ['test_get'],
    'examples.testing.sqlalchemy_test': [
        'test_add_and_count_with_a_database_stand_in',
        'test_tables_start_empty',
        'test_a_running_service_sees_what_the_test_committed'],
}


@pytest.mark.rabbit
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_testing_examples_pass_under_pytest(request, tmp_path):
    report = tmp_path / 'report.xml'
    command = [
        sys.executable, '-m', 'pytest', 'examples/testing',
        '-p', 'no:cacheprovider', '-q', '--junitxml', str(report),
        '--amqp-uri', request.config.getoption('RABBIT_AMQP_URI'),
        '--rabbit-api-uri', request.config.getoption('RABBIT_API_URI'),
    ]
    result = subprocess.run(command, cwd=str(ROOT), env=example_env(),
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr

    passed = {}
    for case in ElementTree.parse(report).iter('testcase'):
        outcomes = [child.tag for child in case]
        assert not outcomes, (case.get('name'), outcomes)
        passed.setdefault(case.get('classname'), []).append(case.get('name'))
    assert {name: sorted(tests) for name, tests in passed.items()} == {
        name: sorted(tests) for name, tests in TESTING_EXAMPLES.items()}


def test_main_suite_does_not_collect_the_testing_examples():
    ini = configparser.ConfigParser()
    ini.read(ROOT / 'pytest.ini')
    assert ini['pytest']['testpaths'].split() == ['tests']


# -- guards -------------------------------------------------------------------

LITERALINCLUDE = re.compile(
    r'^(?P<indent>[ \t]*)\.\. literalinclude:: (?P<path>\S+)[ \t]*\n'
    r'(?P<options>(?:(?P=indent)[ \t]+:[\w-]+:.*\n)*)', re.MULTILINE)


def literalincludes():
    """``(rst file, included path, {option: value})`` for every
    ``literalinclude`` in docs/."""
    for rst in sorted(DOCS.rglob('*.rst')):
        text = rst.read_text(encoding='utf-8')
        for match in LITERALINCLUDE.finditer(text):
            options = dict(re.findall(r':([\w-]+):[ \t]*(.*)',
                                      match.group('options')))
            yield rst, (rst.parent / match.group('path')).resolve(), options


def test_literalincludes_point_at_existing_files_and_text():
    includes = list(literalincludes())
    assert len(includes) >= 30
    for rst, path, options in includes:
        where = '{} includes {}'.format(rst.name, path)
        assert path.is_file(), where
        source = path.read_text(encoding='utf-8')
        for option in ('start-after', 'start-at', 'end-before', 'end-at'):
            if option in options:
                assert options[option] in source, (where, option)
        if 'pyobject' in options:
            name = options['pyobject'].split('.')[-1]
            assert re.search(r'^\s*(class|def) {}\b'.format(name), source,
                             re.MULTILINE), (where, 'pyobject')


def test_every_example_file_is_run_by_some_test():
    tests_text = '\n'.join(
        path.read_text(encoding='utf-8')
        for path in (ROOT / 'tests').rglob('*.py'))
    unreferenced = []
    for path in sorted(EXAMPLES.rglob('*.py')):
        relative = path.relative_to(ROOT)
        if path.name == '__init__.py':
            continue
        module = '.'.join(relative.with_suffix('').parts)
        named = (re.search(r'\b{}\b'.format(re.escape(module)), tests_text)
                 or relative.as_posix() in tests_text)
        if not named:
            unreferenced.append(relative.as_posix())
    assert unreferenced == []
