"""JSON logs (:class:`threadko.observability.logs.JsonFormatter`): each
record one JSON line, naming the service, entrypoint, method, call and
trace of the worker it was logged in; call arguments redacted."""

import concurrent.futures
import contextvars
import io
import json
import logging
import logging.config
import logging.handlers
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider

from support import ChildProcess, WAIT, child_env, http_fetch, web_port

from threadko.containers import get_worker_context
from threadko.events import event_handler
from threadko.observability.logs import JsonFormatter
from threadko.rpc import RpcProxy, rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ServiceRpcProxy
from threadko.testing.services import entrypoint_waiter
from threadko.testing.utils import find_free_port
from threadko.web.handlers import http

LOGGER = 'test_logs.service'
log = logging.getLogger(LOGGER)
ISO_UTC_MS = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$')
WORKER_KEYS = {'service', 'entrypoint', 'method', 'call_id',
               'call_id_stack'}

# a tracer of its own, not the global provider other tests may set
tracer = TracerProvider().get_tracer('test_logs')


class JsonLog:
    """A handler with a :class:`JsonFormatter` on some loggers; the lines
    it wrote, parsed."""

    def __init__(self, formatter, loggers):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.loggers = [logging.getLogger(name) for name in loggers]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self.handler)
            logger.setLevel(logging.DEBUG)

    def close(self):
        for logger, level in zip(self.loggers, self.levels):
            logger.removeHandler(self.handler)
            logger.setLevel(level)

    @property
    def text(self):
        return self.stream.getvalue()

    def lines(self):
        """Every line written, each parsed (so each must be JSON)."""
        return [json.loads(line) for line in self.text.splitlines()]

    def line(self, message):
        """The one line whose message is ``message``."""
        found = [line for line in self.lines()
                 if line.get('message') == message]
        assert len(found) == 1, self.text
        return found[0]


@pytest.fixture
def json_log():
    """``json_log(*loggers, **formatter_options)``: a :class:`JsonLog` on
    ``loggers`` (default: the test services' logger)."""
    made = []

    def capture(*loggers, **options):
        made.append(JsonLog(JsonFormatter(**options), loggers or [LOGGER]))
        return made[-1]

    yield capture
    for capture_log in made:
        capture_log.close()


def current_call_id():
    return get_worker_context().call_id


class Greeter:
    name = 'greeter'

    @rpc
    def hello(self, name):
        log.info('hello %s', name)
        return current_call_id()

    @rpc
    def fail(self):
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception('could not divide')
        return current_call_id()

    @rpc(sensitive_arguments=('password', 'profile.pin'))
    def login(self, username, password, profile):
        log.info('login attempt')
        return current_call_id()

    @rpc
    def traced(self):
        log.info('before the span')
        with tracer.start_as_current_span('work') as span:
            log.info('in the span')
            context = span.get_span_context()
        return (format(context.trace_id, '032x'),
                format(context.span_id, '016x'))

    @rpc
    def spread(self):
        """Log from threads of its own: one in a copy of the worker's
        context, one in a pool (likewise), one plain."""
        def work(message):
            log.info(message)
            return threading.current_thread().name

        copied = threading.Thread(
            target=contextvars.copy_context().run,
            args=(work, 'from a copied context'), name='test-copied')
        plain = threading.Thread(
            target=work, args=('from a plain thread',), name='test-plain')
        copied.start()
        plain.start()
        copied.join(WAIT)
        plain.join(WAIT)
        with concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix='test-pool') as executor:
            executor.submit(contextvars.copy_context().run,
                            work, 'from a pool thread').result(WAIT)
        log.info('from the worker')
        return current_call_id()


class Relay:
    name = 'relay'

    greeter = RpcProxy('greeter')

    @rpc
    def relay(self, name):
        log.info('relaying')
        return current_call_id(), self.greeter.hello(name)


class Web:
    name = 'web'

    @http('GET', '/hello/<name>')
    def hello(self, request, name):
        log.info('http hello %s', name)
        return current_call_id()


class Listener:
    name = 'listener'

    @event_handler('source', 'happened')
    def on_happened(self, payload):
        log.info('handled %s', payload)


# -- inside and outside a worker -----------------------------------------

def test_rpc_worker_lines_name_service_entrypoint_method_and_call(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()
    log.info('outside')

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        call_id = greeter.hello('matt')

    line = out.line('hello matt')
    assert line['service'] == 'greeter'
    assert line['entrypoint'] == 'rpc'
    assert line['method'] == 'hello'
    assert line['call_id'] == call_id
    # the standalone client's call, then this one
    client_id, worker_id = line['call_id_stack']
    assert client_id.startswith('standalone_rpc_proxy.call.')
    assert worker_id == call_id
    assert line['level'] == 'INFO'
    assert line['logger'] == LOGGER
    assert ISO_UTC_MS.match(line['timestamp']), line['timestamp']
    assert line['thread'] != threading.current_thread().name

    outside = out.line('outside')
    assert not WORKER_KEYS & set(outside)
    assert outside['thread'] == threading.current_thread().name


def test_a_call_from_another_service_shows_the_call_stack(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()
    container_factory(Relay).start()

    with ServiceRpcProxy('relay', memory_config, timeout=WAIT) as relay:
        relay_id, greeter_id = relay.relay('ann')

    client_id, relay_stack_id = out.line('relaying')['call_id_stack']
    assert relay_stack_id == relay_id
    line = out.line('hello ann')
    assert line['service'] == 'greeter'
    assert line['call_id_stack'] == [client_id, relay_id, greeter_id]


def test_http_worker_lines_come_from_the_request_thread(
        memory_config, web_config, container_factory, json_log):
    out = json_log()
    container = container_factory(Web)
    container.start()

    reply = http_fetch(web_port(container), 'GET', '/hello/bob')

    assert reply.status == 200, reply
    line = out.line('http hello bob')
    assert (line['service'], line['entrypoint'], line['method']) == (
        'web', 'http', 'hello')
    assert line['call_id'] == reply.text
    assert line['thread'] != threading.current_thread().name


def test_event_handler_lines(memory_config, container_factory, json_log):
    out = json_log()
    container = container_factory(Listener)
    container.start()
    dispatch = event_dispatcher(memory_config)
    try:
        with entrypoint_waiter(container, 'on_happened', timeout=WAIT):
            dispatch('source', 'happened', 'payload-1')
    finally:
        dispatch.close()

    line = out.line('handled payload-1')
    assert (line['service'], line['entrypoint'], line['method']) == (
        'listener', 'event_handler', 'on_happened')
    assert line['call_id'].startswith('listener.on_happened.')


def test_threads_the_method_starts_see_the_worker_in_a_copied_context(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        call_id = greeter.spread()

    worker = out.line('from the worker')
    copied = out.line('from a copied context')
    pooled = out.line('from a pool thread')
    plain = out.line('from a plain thread')
    for line in (worker, copied, pooled):
        assert line['call_id'] == call_id
        assert line['method'] == 'spread'
    assert copied['thread'] == 'test-copied'
    assert pooled['thread'].startswith('test-pool')
    assert plain['thread'] == 'test-plain'
    assert not WORKER_KEYS & set(plain)


def test_threadko_own_records_in_a_worker_carry_its_fields(
        memory_config, container_factory, json_log):
    out = json_log('threadko.containers')

    class Failing:
        name = 'failing'

        @rpc
        def divide(self):
            return 1 / 0

    container_factory(Failing).start()
    with ServiceRpcProxy('failing', memory_config, timeout=WAIT) as failing:
        with pytest.raises(Exception) as raised:
            failing.divide()
    assert 'ZeroDivisionError' in str(raised.value)

    [line] = [line for line in out.lines()
              if line['message'].startswith('error handling worker')]
    assert line['level'] == 'ERROR'
    assert line['method'] == 'divide'
    assert line['call_id'].startswith('failing.divide.')
    assert 'ZeroDivisionError: division by zero' in line['exception']
    assert line['exception'].startswith('Traceback')


def test_exception_logged_by_the_service(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        call_id = greeter.fail()

    line = out.line('could not divide')
    assert line['call_id'] == call_id
    assert line['level'] == 'ERROR'
    assert line['exception'].splitlines()[-1] == (
        'ZeroDivisionError: division by zero')


# -- traces ------------------------------------------------------------------

def test_trace_and_span_ids_of_the_current_span(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        trace_id, span_id = greeter.traced()

    line = out.line('in the span')
    assert (line['trace_id'], line['span_id']) == (trace_id, span_id)
    assert re.match('^[0-9a-f]{32}$', line['trace_id'])
    assert re.match('^[0-9a-f]{16}$', line['span_id'])
    before = out.line('before the span')
    assert 'trace_id' not in before and 'span_id' not in before
    assert before['method'] == 'traced'


def test_the_formatter_does_not_import_opentelemetry():
    script = textwrap.dedent('''
        import logging, sys
        from threadko.observability.logs import JsonFormatter
        record = logging.LogRecord('x', logging.INFO, 'f', 1, 'hi', (), None)
        print(JsonFormatter().format(record))
        print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))
    ''')
    result = subprocess.run(
        [sys.executable, '-c', script], env=child_env(),
        capture_output=True, text=True, timeout=WAIT)

    assert result.returncode == 0, result.stderr
    line, modules = result.stdout.splitlines()
    assert json.loads(line)['message'] == 'hi'
    assert modules == '[]'


# -- call arguments and secrets ------------------------------------------

def test_call_args_are_redacted_and_the_password_is_on_no_line(
        memory_config, container_factory, json_log):
    out = json_log(LOGGER, 'threadko', call_args=True)
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        greeter.login('matt', 'hunter2', profile={'pin': 'pin-4321'})

    line = out.line('login attempt')
    assert line['call_args'] == {
        'username': 'matt', 'password': '********',
        'profile': {'pin': '********'}}
    # threadko's own debug lines of the worker carry the arguments too
    assert len([line for line in out.lines() if 'call_args' in line]) > 1
    assert 'hunter2' not in out.text
    assert 'pin-4321' not in out.text


def test_call_args_of_http_show_the_request_by_type_only(
        memory_config, web_config, container_factory, json_log):
    out = json_log(call_args=True)

    class Secret:
        name = 'secret'

        @http('GET', '/login/<user>/<password>',
              sensitive_arguments=('password',))
        def login(self, request, user, password):
            log.info('http login')
            return 'ok'

    container = container_factory(Secret)
    container.start()

    reply = http_fetch(web_port(container), 'GET', '/login/matt/hunter2')

    assert reply.status == 200, reply
    # the request's repr would show its URL, and so the password
    assert out.line('http login')['call_args'] == {
        'request': '<Request>', 'user': 'matt', 'password': '********'}
    assert 'hunter2' not in out.text


def test_no_call_args_unless_asked(
        memory_config, container_factory, json_log):
    out = json_log()
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        greeter.hello('matt')

    assert 'call_args' not in out.line('hello matt')


# -- odd records, options, configuration ---------------------------------

class Unrepresentable:
    def __repr__(self):
        raise RuntimeError('no repr')


def test_odd_records_still_give_one_json_line():
    # a logger of its own, outside the logging tree: pytest's handlers,
    # which raise on an unformattable message, never see its records
    odd_log = logging.Logger('test_logs.odd')
    out = JsonLog(JsonFormatter(), [])
    odd_log.addHandler(out.handler)
    loop = []
    loop.append(loop)

    odd_log.warning('extras', extra={
        'plain': {'a': [1, 2]}, 'obj': Unrepresentable(), 'loop': loop,
        'nan': float('nan'), 'tuple_key': {(1, 2): 3},
        'method': 'POST', '_private': 1, 'text': 'ナメコ'})
    odd_log.warning('%d apples', 'three')
    odd_log.info('no exception here', exc_info=True, stack_info=True)

    extras = out.line('extras')
    assert extras['plain'] == {'a': [1, 2]}
    assert extras['obj'] == '<unrepresentable Unrepresentable>'
    assert extras['loop'] == '[[...]]'
    assert extras['nan'] == 'nan'
    assert extras['tuple_key'] == '{(1, 2): 3}'
    # an extra never overwrites a field, even one this line lacks
    assert extras['extra_method'] == 'POST' and 'method' not in extras
    assert '_private' not in extras
    assert extras['text'] == 'ナメコ'
    assert 'ナメコ' not in out.text  # escaped: any stream takes it
    [unformattable] = [line for line in out.lines()
                       if line['message'].startswith("'%d apples'")]
    assert 'TypeError' in unformattable['message']
    assert 'three' in unformattable['message']
    bare = out.line('no exception here')
    assert 'exception' not in bare
    assert bare['stack'].startswith('Stack (most recent call last)')


def test_fields_rename_static_fields_and_record_attributes(json_log):
    out = json_log(
        fmt='%(process)d %(funcName)s',
        fields=['timestamp', 'level', 'message', 'call_id'],
        rename={'level': 'severity', 'timestamp': '@timestamp'},
        static_fields={'env': 'test'}, ensure_ascii=False)

    log.info('ナメコ', extra={'user': 'ann'})

    [line] = out.lines()
    assert list(line) == [
        '@timestamp', 'severity', 'message', 'process', 'funcName', 'env',
        'user']
    assert line['severity'] == 'INFO'
    assert line['message'] == 'ナメコ' and 'ナメコ' in out.text
    assert line['funcName'] == (
        'test_fields_rename_static_fields_and_record_attributes')


def test_restricted_fields_apply_inside_workers(
        memory_config, container_factory, json_log):
    out = json_log(fields=['message', 'call_id'])
    container_factory(Greeter).start()

    with ServiceRpcProxy('greeter', memory_config, timeout=WAIT) as greeter:
        call_id = greeter.hello('matt')

    assert out.lines() == [{'message': 'hello matt', 'call_id': call_id}]


@pytest.mark.parametrize('options', [
    {'fields': ['message', 'severity']},
    {'rename': {'lvl': 'severity'}},
    {'static_fields': {'message': 'x'}},
])
def test_unknown_or_clashing_fields_are_rejected(options):
    with pytest.raises(ValueError):
        JsonFormatter(**options)


@pytest.mark.parametrize('entry, expected', [
    ({'()': 'threadko.observability.logs.JsonFormatter',
      'static_fields': {'env': 'test'}, 'rename': {'level': 'severity'}},
     {'env': 'test', 'severity': 'INFO'}),
    ({'class': 'threadko.observability.logs.JsonFormatter',
      'format': '%(levelno)d %(module)s'},
     {'levelno': logging.INFO, 'module': 'test_logs', 'level': 'INFO'}),
], ids=['factory', 'class'])
def test_logging_config_forms(entry, expected):
    # what dictConfig does with a formatter entry, without reconfiguring
    # the logging of the whole test run
    formatter = logging.config.DictConfigurator({}).configure_formatter(
        dict(entry))
    record = log.makeRecord(
        LOGGER, logging.INFO, __file__, 1, 'configured', (), None)

    line = json.loads(formatter.format(record))

    assert line['message'] == 'configured'
    for key, value in expected.items():
        assert line[key] == value


def test_through_a_queue_handler_formatting_before_enqueueing(
        memory_config, container_factory):
    records = queue.Queue()
    queue_handler = logging.handlers.QueueHandler(records)
    queue_handler.setFormatter(JsonFormatter())
    stream = io.StringIO()
    listener = logging.handlers.QueueListener(
        records, logging.StreamHandler(stream))
    log.addHandler(queue_handler)
    log.setLevel(logging.INFO)
    listener.start()
    try:
        container_factory(Greeter).start()
        with ServiceRpcProxy('greeter', memory_config,
                             timeout=WAIT) as greeter:
            call_id = greeter.hello('queued')
    finally:
        log.removeHandler(queue_handler)
        log.setLevel(logging.NOTSET)
        listener.stop()  # writes out what is queued

    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line['message'] == 'hello queued'
    assert line['call_id'] == call_id


# -- threadko run ----------------------------------------------------------

SERVICE = '''
import logging

from threadko.web.handlers import http

log = logging.getLogger('svc')


class Web:
    name = 'web'

    @http('GET', '/login/<user>/<password>',
          sensitive_arguments=('password',))
    def login(self, request, user, password):
        log.info('login by %s', user, extra={'attempt': 1})
        return 'welcome'
'''

CONFIG = '''
AMQP_URI: memory://
WEB_SERVER_ADDRESS: 127.0.0.1:{port}
LOGGING:
  version: 1
  formatters:
    json:
      (): threadko.observability.logs.JsonFormatter
      call_args: true
  handlers:
    console:
      class: logging.StreamHandler
      stream: ext://sys.stderr
      formatter: json
  root:
    level: INFO
    handlers: [console]
'''


def test_threadko_run_with_a_logging_config_writes_json_lines(tmp_path):
    port = find_free_port()
    (tmp_path / 'svc.py').write_text(SERVICE)
    (tmp_path / 'config.yaml').write_text(CONFIG.format(port=port))
    cli = ChildProcess(
        [sys.executable, '-m', 'threadko', 'run', '--config', 'config.yaml',
         'svc:Web'], str(tmp_path), child_env(), timeout=WAIT * 2)
    try:
        cli.wait_for_line('running services')
        reply = http_fetch(port, 'GET', '/login/matt/hunter2')
        assert (reply.status, reply.text) == (200, 'welcome')
        cli.wait_for_line('login by matt')
        cli.send_signal(signal.SIGTERM)
        assert cli.wait() == 0, cli.output
    finally:
        cli.close()

    lines = [json.loads(text) for text in cli.output.splitlines()]
    [login] = [line for line in lines if line['message'] == 'login by matt']
    assert login['service'] == 'web'
    assert login['entrypoint'] == 'http'
    assert login['method'] == 'login'
    assert login['call_id'].startswith('web.login.')
    assert login['call_id_stack'] == [login['call_id']]
    assert login['logger'] == 'svc'
    assert login['attempt'] == 1
    assert login['call_args'] == {
        'request': '<Request>', 'user': 'matt', 'password': '********'}
    [running] = [line for line in lines
                 if line['message'].startswith('running services')]
    assert running['logger'] == 'threadko.cli.run'
    assert not WORKER_KEYS & set(running)
    assert 'hunter2' not in cli.output
