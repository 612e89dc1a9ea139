"""Steady RPC and event traffic from standalone clients, recording what
happened to every call and every dispatch, so a test can count what was
lost, what hung and how long an outage lasted.

Each RPC caller thread has a client of its own and calls one method in a
loop; the event thread dispatches numbered events. Nothing here decides
whether an outcome is good: :class:`Outcome` just counts.
"""

import threading
import time
from collections import namedtuple

from threadko.standalone.events import event_dispatcher
from threadko.standalone.rpc import ClusterRpcProxy

#: a call that takes this much longer than its timeout counts as hung
HANG_MARGIN = 10.0

Call = namedtuple('Call', 'started ended error')
Dispatch = namedtuple('Dispatch', 'at id error')


class Traffic:
    """RPC calls to ``service.method(n)`` and events ``(source,
    event_type)`` with payload ``{'id': n}``, until :meth:`stop`.
    ``method`` may be a tuple: caller ``i`` calls ``method[i % len]``.

    :param config: the standalone clients' config (``AMQP_URI`` may be a
        failover list)
    :param pace: seconds between two calls of one caller, and between two
        dispatches (load, not synchronisation)
    """

    def __init__(self, config, service, method, source, event_type,
                 callers=2, timeout=5.0, pace=0.02):
        self.config = config
        self.service, self.method = service, method
        self.source, self.event_type = source, event_type
        self.timeout = timeout
        self.pace = pace
        self.calls = []
        self.dispatches = []
        self._in_flight = {}  # caller -> start of its current call
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._call_loop, args=(index,),
                             name='test-traffic-caller-{}'.format(index),
                             daemon=True)
            for index in range(callers)]
        self._threads.append(threading.Thread(
            target=self._dispatch_loop, name='test-traffic-events',
            daemon=True))

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        """Stop the traffic; return how many calls were still waiting
        beyond their timeout (plus :data:`HANG_MARGIN`): hung."""
        self._stopping.set()
        deadline = time.monotonic() + self.timeout + HANG_MARGIN
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        now = time.time()
        with self._lock:
            return sum(1 for started in self._in_flight.values()
                       if now - started > self.timeout + HANG_MARGIN)

    def _call_loop(self, index):
        with ClusterRpcProxy(self.config, timeout=self.timeout) as proxy:
            names = ((self.method,) if isinstance(self.method, str)
                     else self.method)
            method = getattr(getattr(proxy, self.service),
                             names[index % len(names)])
            count = 0
            while not self._stopping.is_set():
                count += 1
                started = time.time()
                with self._lock:
                    self._in_flight[index] = started
                error = None
                try:
                    method(count)
                except Exception as exc:  # counted, whatever it is
                    error = type(exc).__name__
                with self._lock:
                    del self._in_flight[index]
                    self.calls.append(Call(started, time.time(), error))
                self._stopping.wait(self.pace)

    def _dispatch_loop(self):
        dispatch = event_dispatcher(self.config)
        number = 0
        while not self._stopping.is_set():
            number += 1
            error = None
            try:
                dispatch(self.source, self.event_type, {'id': number})
            except Exception as exc:
                error = type(exc).__name__
            with self._lock:
                self.dispatches.append(Dispatch(time.time(), number, error))
            self._stopping.wait(self.pace)

    # -- counting ----------------------------------------------------------

    def confirmed_ids(self):
        """Ids of the events whose dispatch returned (the broker took
        them)."""
        return {d.id for d in self.dispatches if d.error is None}

    def late_calls(self):
        """Calls that returned or raised, but later than their timeout
        allows."""
        return [c for c in self.calls
                if c.ended - c.started > self.timeout + HANG_MARGIN]

    def first_success_after(self, moment):
        """When the first call started after ``moment`` succeeded (None if
        none did)."""
        ends = [c.ended for c in self.calls
                if c.started >= moment and c.error is None]
        return min(ends) if ends else None

    def errors_between(self, start, end):
        """Error names of calls started between ``start`` and ``end``,
        with counts."""
        counts = {}
        for call in self.calls:
            if start <= call.started < end and call.error:
                counts[call.error] = counts.get(call.error, 0) + 1
        return counts

    def longest_gap(self, start, end):
        """The longest time between two successful calls' ends (or the
        window's edges) in ``start``..``end``: how long nothing got
        through."""
        ends = sorted(c.ended for c in self.calls
                      if c.error is None and start <= c.ended <= end)
        edges = [start] + ends + [end]
        return max(b - a for a, b in zip(edges, edges[1:]))
