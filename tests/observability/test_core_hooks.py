"""The core's side of observability, which metrics, tracing and the JSON
logs build on: the worker's context is findable from inside it, every
worker tells the container's instruments how it went, entrypoints hand
over what fired them, routers tell their observers about every request,
and ``container.running`` says when a container serves."""

import threading

import pytest
from werkzeug.wrappers import Request

from threadko.amqp.consumer import Message
from threadko.config_files import build_config
from threadko.cli.run import observability_defines
from threadko.containers import get_worker_context
from threadko.events import event_handler
from threadko.observability import WorkerInstrument, entrypoint_kind
from threadko.rpc import rpc
from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ServiceRpcProxy
from threadko.timer import timer
from threadko.web.handlers import http

from support import WAIT, Journal, http_fetch, poll, web_port


class Failure(Exception):
    pass


class Expected(Exception):
    pass


class RecordingInstrument(WorkerInstrument):
    """Notes each call, with the thread it ran on and what it was given."""

    def __init__(self):
        self.events = Journal()

    def worker_started(self, worker_ctx):
        self.events.add(('started', worker_ctx.entrypoint.method_name,
                         threading.current_thread(), get_worker_context()))
        return worker_ctx.call_id

    def worker_finished(self, worker_ctx, token, error):
        self.events.add(('finished', worker_ctx.entrypoint.method_name,
                         threading.current_thread(), token, error))


class Observed:
    name = 'observed'
    seen = []

    @rpc
    def echo(self, value):
        self.seen.append((get_worker_context(), threading.current_thread()))
        return value

    @rpc(expected_exceptions=Expected)
    def refuse(self):
        raise Expected('no')

    @rpc
    def fail(self):
        raise Failure('broken')

    @http('GET', '/items/<int:item_id>')
    def item(self, request, item_id):
        self.seen.append((get_worker_context(), threading.current_thread()))
        return 'item {}'.format(item_id)

    @http('GET', '/broken')
    def broken(self, request):
        raise Failure('broken')

    @event_handler('observer_source', 'happened')
    def on_event(self, payload):
        self.seen.append((get_worker_context(), threading.current_thread()))


@pytest.fixture
def observed(container_factory, broker, web_config):
    Observed.seen = []
    config = dict(broker.config, **web_config)
    container = container_factory(Observed, config)
    instrument = RecordingInstrument()
    container.instruments = (instrument,)
    container.start()
    return container, instrument, config


def test_outside_a_worker_there_is_no_worker_context():
    assert get_worker_context() is None


def test_a_worker_finds_its_own_context_on_its_own_thread(observed):
    container, _, config = observed
    with ServiceRpcProxy('observed', config) as proxy:
        assert proxy.echo(1) == 1
        assert proxy.echo(2) == 2
    (first, first_thread), (second, _) = Observed.seen
    assert first.call_id != second.call_id
    assert first.entrypoint.method_name == 'echo'
    assert first_thread is not threading.current_thread()
    # the worker's context does not leak into the caller's thread
    assert get_worker_context() is None


def test_every_worker_reports_its_outcome_to_the_instruments(observed):
    container, instrument, config = observed
    with ServiceRpcProxy('observed', config) as proxy:
        proxy.echo('x')
        with pytest.raises(Exception):
            proxy.refuse()
        with pytest.raises(Exception):
            proxy.fail()
    events = instrument.events.wait_for(6)
    finished = {event[1]: event for event in events
                if event[0] == 'finished'}
    started = {event[1]: event for event in events
               if event[0] == 'started'}
    assert set(finished) == {'echo', 'refuse', 'fail'}
    assert finished['echo'][4] is None
    assert isinstance(finished['refuse'][4], Expected)
    assert isinstance(finished['fail'][4], Failure)
    for method in ('echo', 'refuse', 'fail'):
        # both on the worker's thread, the worker's context current, and
        # what worker_started returned given back
        assert started[method][2] is finished[method][2]
        assert started[method][3].entrypoint.method_name == method
        assert finished[method][3] == started[method][3].call_id


def test_amqp_entrypoints_hand_over_the_message_and_http_the_request(
        observed):
    container, _, config = observed
    with ServiceRpcProxy('observed', config) as proxy:
        proxy.echo('x')
    dispatch = event_dispatcher(config)
    try:
        dispatch('observer_source', 'happened', {'n': 1})
    finally:
        dispatch.close()
    reply = http_fetch(web_port(container), 'GET', '/items/7')
    assert reply.status == 200
    poll(lambda: len(Observed.seen) >= 3, 'three workers', timeout=WAIT)
    origins = {ctx.entrypoint.method_name: ctx.origin
               for ctx, _ in Observed.seen}
    assert isinstance(origins['echo'], Message)
    assert origins['echo'].routing_key == 'observed.echo'
    assert isinstance(origins['on_event'], Message)
    assert origins['on_event'].routing_key == 'happened'
    assert isinstance(origins['item'], Request)
    assert origins['item'].path == '/items/7'


class RecordingRequestObserver:
    def __init__(self):
        self.finished = Journal()

    def request_started(self, request):
        return request.path

    def request_finished(self, token, request, rule, response, error):
        self.finished.add((token, rule.rule if rule else None,
                           response.status_code, error))


def test_routers_tell_their_observers_about_every_request(observed):
    container, _, _ = observed
    observer = RecordingRequestObserver()
    site = next(ext for ext in container.extensions
                if type(ext).__name__ == 'WebServer').site
    site.router.observe([observer])
    site.router.observe([observer])  # once is enough
    port = web_port(container)
    assert http_fetch(port, 'GET', '/items/1').status == 200
    assert http_fetch(port, 'GET', '/items/2').status == 200
    assert http_fetch(port, 'GET', '/nowhere').status == 404
    assert http_fetch(port, 'POST', '/items/3').status == 405
    assert http_fetch(port, 'GET', '/broken').status == 500
    assert observer.finished.wait_for(5) == [
        ('/items/1', '/items/<int:item_id>', 200, None),
        ('/items/2', '/items/<int:item_id>', 200, None),
        ('/nowhere', None, 404, None),
        ('/items/3', None, 405, None),
        ('/broken', '/broken', 500, None),
    ]


def test_entrypoints_are_named_by_kind(container_factory, memory_config):
    class Kinds:
        name = 'kinds'

        @rpc
        def a(self):
            pass

        @http('GET', '/b')
        def b(self, request):
            pass

        @event_handler('x', 'y')
        def c(self, payload):
            pass

        @timer(interval=60)
        def d(self):
            pass

    container = container_factory(Kinds, memory_config)
    kinds = {ep.method_name: entrypoint_kind(ep)
             for ep in container.entrypoints}
    assert kinds == {'a': 'rpc', 'b': 'http', 'c': 'event_handler',
                     'd': 'timer'}


class Slow:
    name = 'slow_to_stop'
    release = None
    entered = None

    @rpc
    def wait(self):
        Slow.entered.set()
        assert Slow.release.wait(WAIT)


def test_running_is_true_between_a_finished_start_and_the_stop(
        container_factory, memory_config):
    Slow.release, Slow.entered = threading.Event(), threading.Event()
    container = container_factory(Slow, memory_config)
    assert not container.running
    container.start()
    assert container.running

    with ServiceRpcProxy('slow_to_stop', memory_config) as proxy:
        reply = proxy.wait.call_async()
        assert Slow.entered.wait(WAIT)
        stopper = threading.Thread(target=container.stop)
        stopper.start()
        try:
            # stopping, with a worker still busy: no longer running
            poll(lambda: not container.running, 'the stop to begin',
                 timeout=WAIT, interval=0.01)
            assert stopper.is_alive()
        finally:
            Slow.release.set()
            stopper.join(WAIT)
        reply.result()
    assert not container.running


def test_a_failed_start_is_not_running(container_factory, memory_config):
    from threadko.extensions import DependencyProvider

    class Broken(DependencyProvider):
        def start(self):
            raise Failure('cannot start')

    class Service:
        name = 'broken_start'
        broken = Broken()

        @rpc
        def a(self):
            pass

    container = container_factory(Service, memory_config)
    with pytest.raises(Failure):
        container.start()
    assert not container.running


def test_the_run_flags_set_the_observability_keys():
    config = build_config(None, observability_defines('127.0.0.1:0', True))
    assert config['METRICS_ADDRESS'] == '127.0.0.1:0'
    assert config['TRACING'] is True
    # a bare port stays text, as the address parser expects
    config = build_config(None, observability_defines('9464', False))
    assert config['METRICS_ADDRESS'] == '9464'
    assert 'TRACING' not in config
