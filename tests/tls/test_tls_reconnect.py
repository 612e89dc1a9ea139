"""A running service whose reconnection is refused for a reason retrying
does not fix by itself (here: its user lost access to the vhost) keeps
trying with back-off, logging an error that names the cause, and consumes
again once the broker lets it."""

import logging
import threading
import uuid

import pytest

from threadko.containers import ServiceContainer
from threadko.rpc import rpc
from threadko.standalone.rpc import ClusterRpcProxy

WAIT = 15
QUICK_RETRIES = {'interval_start': 0.2, 'interval_step': 0.2,
                 'interval_max': 0.5}


class LogWatcher(logging.Handler):
    """Collects the records of a logger; :meth:`wait_for` blocks until
    ``count`` of them contain a text."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self._cond = threading.Condition()

    def emit(self, record):
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def matching(self, text, level=logging.DEBUG):
        return [record for record in self.records
                if text in record.getMessage() and record.levelno >= level]

    def wait_for(self, text, count=1, level=logging.DEBUG, timeout=WAIT):
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self.matching(text, level)) >= count, timeout), (
                'no {!r} logged; got {}'.format(
                    text, [record.getMessage() for record in self.records]))
            return self.matching(text, level)


@pytest.fixture
def log_watcher():
    watcher = LogWatcher()
    logger = logging.getLogger('threadko')
    level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(level)


@pytest.fixture
def tls_user(tls_broker):
    """A broker user of its own on the TLS node (PLAIN login), with every
    permission on vhost /; deleted after the test."""
    name = 'tk-reconnect-' + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    tls_broker.ctl('add_user', name, password)
    try:
        tls_broker.ctl('set_permissions', '-p', '/', name, '.*', '.*', '.*')
        yield name, password
    finally:
        tls_broker.ctl('delete_user', name)


@pytest.mark.timeout(90)
def test_refused_reconnection_is_retried_and_logged_until_fixed(
        tls_config, tls_broker, tls_user, log_watcher, unique_name):
    user, password = tls_user
    config = dict(tls_config, TRANSPORT_OPTIONS=QUICK_RETRIES,
                  AMQP_URI=tls_broker.uri(credentials='{}:{}'.format(
                      user, password)))

    class Service:
        name = unique_name

        @rpc
        def double(self, value):
            return value * 2

    container = ServiceContainer(Service, config)
    container.start()
    try:
        tls_broker.ctl('clear_permissions', '-p', '/', user)
        tls_broker.ctl('close_all_connections', '--vhost', '/',
                       'closed by threadko test')

        refused = log_watcher.wait_for(
            "refused user '{}' access to vhost '/'".format(user), count=2,
            level=logging.ERROR)
        assert 'Cannot reconnect service {}'.format(unique_name) in (
            refused[0].getMessage())
        assert 'Retrying in' in refused[0].getMessage()

        tls_broker.ctl('set_permissions', '-p', '/', user, '.*', '.*', '.*')
        # the request waits in the service's queue until it consumes again
        with ClusterRpcProxy(tls_config, timeout=WAIT) as proxy:
            assert getattr(proxy, unique_name).double(5) == 10
    finally:
        container.stop()
    # the retries backed off: a few lines, not a storm
    assert len(log_watcher.matching('Cannot reconnect')) < 40
