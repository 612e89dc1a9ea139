"""RPC clients for code outside a service (scripts, WSGI apps, tests).

Unlike Nameko's, these clients are thread-safe: a started client owns one
background thread that consumes its reply queue, and any number of caller
threads may make calls through it at once; each waits for its own reply,
matched by correlation id. ``timeout`` bounds each call's total wait.

Nameko 2 names take the config first (``ClusterRpcProxy(config)``);
Nameko 3 names (``ClusterRpcClient()``) read the global
:data:`threadko.config`. Both accept ``config=`` as a keyword.
"""

import logging
import threading
import uuid
from collections import deque
from functools import partial

from threadko.amqp.connection import Connector
from threadko.amqp.consumer import ConsumerLoop, basic_consume, decode_body
from threadko.amqp.publish import (
    Publisher, ProducerPool, publish_blocked_timeout,
)
from threadko.constants import (
    CALL_ID_STACK_CONTEXT_KEY, DEFAULT_HEARTBEAT,
    DEFAULT_PARENT_CALLS_TRACKED, HEARTBEAT_CONFIG_KEY,
    PARENT_CALLS_CONFIG_KEY,
)
from threadko.exceptions import RpcClientStopped
from threadko.rpc import (
    RESTRICTED_PUBLISHER_OPTIONS, ClusterProxy, ReplyRegistry, RpcClient,
    ServiceProxy, declare_reply_queue_anew, get_rpc_exchange, reply_queue,
)
from threadko.standalone import client_config
from threadko.observability import tracer_for
from threadko.utils import fork
from threadko import serialization

_log = logging.getLogger(__name__)

STANDALONE_SERVICE_NAME = 'standalone_rpc_proxy'


class _ClientBase:
    """Shared by the cluster and single-service clients.

    In a process forked from the one that started it, a client's consumer
    thread and connections stayed in the parent: the first call there (or
    :meth:`start`) connects again, with a new reply queue, and the proxies
    handed out before the fork keep working.
    """

    def __init__(self, config=None, context_data=None, timeout=None,
                 **options):
        options.pop('reply_listener_cls', None)  # Nameko 2; not needed
        self.config = client_config(config, options)
        self.context_data = dict(context_data or {})
        self.timeout = timeout
        self.publisher_options = {
            key: value for key, value in options.items()
            if key not in RESTRICTED_PUBLISHER_OPTIONS}
        self._lock = threading.Lock()
        self._thread = None
        self._client = None
        # whether the consumer thread was started in this process (not in
        # a parent this one was forked from)
        self._launched_here = False
        fork.register(self)

    def _after_fork_in_child(self):
        self._lock = threading.Lock()
        self._launched_here = False

    def start(self):
        """Connect, declare the reply queue and start its consumer thread;
        return the proxy object once connected.

        :raises: the connection error if the broker cannot be reached
            (after the ``TRANSPORT_OPTIONS`` retries)
        :raises RpcClientStopped: :meth:`stop` was called (from another
            thread) before the client connected
        """
        with self._lock:
            if self._thread is None:
                self._start()
            client = self._client
        self._connect(client, on_failure=self._stop)
        return self._make_proxy()

    def _connect(self, client, on_failure):
        """Return once ``client``'s reply queue is consumed; in a forked
        child, start a consumer thread of this process's own first (once,
        however many threads race to it). If connecting fails,
        ``on_failure()`` (under the lock) and raise."""
        while True:
            with self._lock:
                if client.closed_error is not None:
                    raise client.closed_error  # stopped meanwhile
                if not self._launched_here:
                    self._launch()  # forked: the thread is the parent's
                thread, loop = self._thread, self._loop
            self._wait_connected(thread, loop, on_failure)
            with self._lock:
                if self._loop is loop and self._launched_here:
                    client.forked = False
                    return
            # another caller gave up on that connection: try again

    def _wait_connected(self, thread, loop, on_failure):
        """Wait until ``loop`` consumes the reply queue; if that fails,
        ``on_failure()`` (under the lock) and raise."""
        # not under the lock: stop() may end the wait
        try:
            loop.wait_ready()
        except BaseException:  # KeyboardInterrupt too
            with self._lock:
                if self._thread is thread and self._loop is loop:
                    on_failure()
            raise
        with self._lock:
            if self._thread is not thread:
                raise RpcClientStopped(
                    'This RPC client was stopped while it was connecting')

    def _start(self):
        """A fresh start: a new :class:`RpcClient` (proxies of an earlier
        start stay stopped), connected by :meth:`_launch`."""
        self._client = RpcClient(None, None, None, None, timeout=self.timeout)
        self._client.on_fork = partial(self._restart_after_fork, self._client)
        # one call id per client, as Nameko 2 standalone proxies have
        self._call_id = '{}.call.{}'.format(
            STANDALONE_SERVICE_NAME, uuid.uuid4())
        self._launch()

    def _launch(self):
        """Under the lock: a new reply queue, consumer loop, publisher pool
        and consumer thread, and point the client (which the proxies hold)
        at them. In a forked child, those inherited from the parent are
        dropped without being stopped: they are the parent's."""
        config = self.config
        serializer, accept = serialization.setup(config)
        self._accept = serialization.accepted_content_types(accept)
        self._registry = ReplyRegistry()
        exchange = get_rpc_exchange(config)
        reply_key = str(uuid.uuid4())
        self._queue = reply_queue(
            exchange, STANDALONE_SERVICE_NAME, reply_key)
        self._connected_before = False
        loop = self._loop = ConsumerLoop(
            Connector(config, heartbeat=config.get(
                HEARTBEAT_CONFIG_KEY, DEFAULT_HEARTBEAT)),
            self._on_connect, 'RPC client', give_up_first_connect=True)
        blocked_timeout = publish_blocked_timeout(config)
        self._pool = ProducerPool(
            Connector(config, heartbeat=0, transport_options=False),
            blocked_timeout=blocked_timeout)

        options = dict(self.publisher_options)
        options.setdefault('serializer', serializer)
        client = self._client
        client.publisher = Publisher(self._pool, **options)
        client.exchange_name = exchange.name
        client.registry = self._registry
        client.reply_to = reply_key
        client.blocked_timeout = blocked_timeout
        client.get_loop_publisher = lambda: loop.publisher
        client.tracer = tracer_for(config)

        self._thread = threading.Thread(
            target=loop.run, daemon=True,
            name='threadko-rpc-client-{}'.format(reply_key[:8]))
        self._thread.start()
        self._launched_here = True

    def _restart_after_fork(self, client):
        """``client.on_fork``: the first call in a forked child connects
        again, with a new reply queue."""
        self._connect(client, on_failure=self._abandon_launch)

    def _abandon_launch(self):
        """Under the lock: the first connection after a fork failed. Stop
        that loop (it is this process's own); the next call tries again."""
        if not self._launched_here:
            return  # done by another caller already
        self._launched_here = False
        self._loop.stop()
        self._thread.join()
        self._pool.close()

    def stop(self):
        """Stop the consumer thread and close the connections. Calls still
        waiting raise :class:`~threadko.exceptions.RpcClientStopped`; the
        client can be started again (with a new reply queue)."""
        with self._lock:
            self._stop()

    def _stop(self):
        if self._thread is None:
            return
        self._client.closed_error = RpcClientStopped(
            'This RPC client has been stopped, and can no longer be used; '
            'start it again or make a new one')
        if self._launched_here:
            self._loop.stop()
            self._thread.join()
            self._pool.close()
            self._registry.fail_all(self._client.closed_error)
        # else forked, not reconnected: the loop, its thread and the
        # calls waiting for replies are the parent's; nothing to stop here
        self._thread = None
        self._launched_here = False

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc_value, traceback):
        self.stop()

    def _context_data(self):
        data = dict(self.context_data)
        parents = list(data.pop(CALL_ID_STACK_CONTEXT_KEY, None) or [])
        tracked = self.config.get(
            PARENT_CALLS_CONFIG_KEY, DEFAULT_PARENT_CALLS_TRACKED)
        stack = deque(parents, maxlen=tracked + 1)
        stack.append(self._call_id)
        data[CALL_ID_STACK_CONTEXT_KEY] = list(stack)
        return data

    # -- reply consumer thread --------------------------------------------

    def _on_connect(self, connection, channel):
        if not self._connected_before:
            self._queue.declare(channel)
            self._connected_before = True
        else:
            self._queue = declare_reply_queue_anew(
                channel, self._queue, self._renew_reply_queue,
                self._registry)
        basic_consume(channel, self._queue.name, self._on_reply,
                      auto_ack=True)

    def _renew_reply_queue(self):
        reply_key = str(uuid.uuid4())
        self._client.reply_to = reply_key
        return reply_queue(get_rpc_exchange(self.config),
                           STANDALONE_SERVICE_NAME, reply_key)

    def _on_reply(self, channel, method, properties, body):
        try:
            body = decode_body(body, properties, self._accept)
        except (serialization.ContentDisallowed,
                serialization.DecodeError) as exc:
            _log.error('Discarding undecodable RPC reply: %s', exc)
            return
        if not self._registry.resolve(properties.correlation_id, body):
            _log.debug('Reply for unknown correlation id %s',
                       properties.correlation_id)


class ClusterRpcProxy(_ClientBase):
    """A client for every service of the cluster.

    ``with ClusterRpcProxy(config) as rpc: rpc.greeter.hello("Matt")``, or
    ``rpc["greeter"].hello.call_async("Matt").result()``. Or
    ``client = ClusterRpcProxy(config); rpc = client.start(); ...;
    client.stop()``.

    :param config: config dict (``AMQP_URI`` etc.); default: the global
        :data:`threadko.config`
    :param context_data: context data sent with every call
    :param timeout: seconds a call may wait for its reply before raising
        :class:`~threadko.exceptions.RpcTimeout`; ``None`` waits forever
    :param options: publish options for the requests (``priority``,
        ``expiration``, ``headers``, ...), and Nameko 3's ``uri``, ``ssl``,
        ``login_method`` to select a broker
    """

    def _make_proxy(self):
        return ClusterProxy(self._client, self._context_data)


class ClusterRpcClient(ClusterRpcProxy):
    """Nameko 3's name and signature: ``ClusterRpcClient(context_data=None,
    timeout=None, **options)``, reading the global config unless
    ``config=`` is given."""

    def __init__(self, context_data=None, timeout=None, config=None,
                 **options):
        super().__init__(config, context_data, timeout, **options)


class ServiceRpcProxy(_ClientBase):
    """A client for one service: ``with ServiceRpcProxy("greeter", config)
    as greeter: greeter.hello("Matt")``. Parameters as
    :class:`ClusterRpcProxy`."""

    def __init__(self, service_name, config=None, context_data=None,
                 timeout=None, **options):
        self.service_name = service_name
        super().__init__(config, context_data, timeout, **options)

    def _make_proxy(self):
        return ServiceProxy(
            self._client, self.service_name, self._context_data)


class ServiceRpcClient(ServiceRpcProxy):
    """Nameko 3's name and signature: ``ServiceRpcClient(service_name,
    context_data=None, timeout=None, **options)``."""

    def __init__(self, service_name, context_data=None, timeout=None,
                 config=None, **options):
        super().__init__(service_name, config, context_data, timeout,
                         **options)
