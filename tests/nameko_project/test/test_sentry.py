"""nameko-sentry: errors of the orders service reach Sentry (here, a
stand-in for its HTTP API that keeps what it is sent)."""

import json
import logging
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

import nameko_sentry
import pytest
from nameko.rpc import rpc
from nameko.testing.services import entrypoint_hook

from shop.exceptions import NotFound
from shop.orders import OrdersService


class FakeSentry:
    """Sentry's store endpoint: keeps the events posted to it."""

    def __init__(self):
        self.events = []
        self.received = threading.Condition()
        sentry = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                if self.headers.get('Content-Encoding') == 'deflate':
                    body = zlib.decompress(body)
                with sentry.received:
                    sentry.events.append((self.path, json.loads(body)))
                    sentry.received.notify_all()
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.end_headers()
                self.wfile.write(b'{"id": "1"}')

            def log_message(self, *args):
                pass

        self.server = HTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()
        self.dsn = 'http://public:secret@127.0.0.1:{}/1'.format(
            self.server.server_port)

    def wait_for_event(self, timeout=10):
        with self.received:
            assert self.received.wait_for(lambda: self.events, timeout), (
                'Sentry got nothing')
            return self.events[0]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def sentry():
    fake = FakeSentry()
    yield fake
    fake.close()


def test_errors_are_reported(config, sentry, container_factory):
    config['SENTRY'] = {'DSN': sentry.dsn}
    container = container_factory(OrdersService, config)
    container.start()

    with entrypoint_hook(container, 'get_order',
                         context_data={'user_id': 'u-17'}) as get_order:
        with pytest.raises(NotFound):
            get_order(4242)

    path, event = sentry.wait_for_event()
    assert path == '/api/1/store/'
    assert event['message'].startswith(
        'Unhandled exception in call orders.get_order.')
    assert "NotFound 'order 4242 does not exist'" in event['message']
    assert event['logger'] == 'orders.get_order'
    assert event['level'] == logging.WARNING  # an expected exception
    assert event['tags']['service_name'] == 'orders'
    assert event['tags']['method_name'] == 'get_order'
    assert event['tags']['call_id'].startswith('orders.get_order.')
    assert event['user'] == {'user_id': 'u-17'}
    assert event['exception']['values'][-1]['type'] == 'NotFound'


class Plain:
    name = 'plain'

    sentry = nameko_sentry.SentryReporter()  # as nameko-sentry ships it

    @rpc
    def fail(self):
        raise ValueError('lost')


def test_the_unchanged_reporter_loses_reports_without_eventlet(
        rabbit_config, sentry, container_factory, caplog):
    """Why shop.reporting changes the transport."""
    config = dict(rabbit_config, SENTRY={'DSN': sentry.dsn})
    container = container_factory(Plain, config)
    container.start()

    with caplog.at_level(logging.ERROR, logger='sentry.errors'):
        with entrypoint_hook(container, 'fail') as fail:
            with pytest.raises(ValueError):
                fail()

    assert 'EventletHTTPTransport requires eventlet.' in caplog.text
    assert sentry.events == []
