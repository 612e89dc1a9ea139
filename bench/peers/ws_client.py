"""The websocket load generator of ``ws_rpc`` and ``ws_fanout``, shared by
every target; runs in threadko's virtualenv (it needs wsproto only).

    python ws_client.py ws_rpc --port PORT --server-pid PID [options]
    python ws_client.py ws_fanout --port PORT --server-pid PID [options]

One process, one thread: every client connection is a non-blocking socket
on one ``selectors`` loop, its protocol done by wsproto (sans-IO), so one
process holds thousands of connections. It speaks Nameko's websocket
protocol (see ``threadko/web/websocket.py``): it waits for each socket's
``connected`` event before calling; a call is ``{"method", "data",
"correlation_id"}`` and its answer a ``"result"``.

- ``ws_rpc``: ``--connections`` sockets, each calling ``echo`` call after
  call (one call in flight per socket) for ``--warmup-s`` then
  ``--duration`` seconds: the calls answered in the measured window, and
  the p50 and p99 of their latency.
- ``ws_fanout``: first, :data:`WARM_SOCKETS` sockets calling ``echo``
  all at once for ``--warmup-s``, then closed (the server makes the worker
  threads it makes for calls: threadko's pool grows on demand up to
  ``max_workers`` and keeps them). Then one trigger socket and ``--few``
  sockets that each subscribe (an ``@rpc`` call) to one channel: the
  server's threads and RSS (``/proc/--server-pid``); then more, up to
  ``--subscribers``: threads and RSS again. Then ``--broadcasts`` times,
  one ``broadcast`` call on the trigger socket, timed from sending it
  until the last subscribed socket has read the whole event. While a
  broadcast is timed, the subscribed sockets only read and check that a
  whole text frame is in; wsproto parses it (and the event's ``seq`` is
  checked) once the clock has stopped, so 2,000 parses in this one
  process are not what is timed.

Both print one JSON object on stdout, with this process's CPU seconds and
the server's over the measured part (so a saturated load generator shows:
``client_cpu_share`` near 1).
"""

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import (  # noqa: E402
    AcceptConnection, CloseConnection, Message, Ping, RejectConnection,
    RejectData, Request, TextMessage)

from common import (  # noqa: E402
    PAYLOAD, WS_BROADCAST, WS_CHANNEL, WS_ECHO, WS_EVENT, WS_SUBSCRIBE,
    emit, raise_open_files_limit)

#: handshakes in progress at once while connecting (Nameko's listening
#: socket has eventlet's backlog of 50: more would overflow it, and the
#: kernel would retry the dropped SYNs a second later)
CONNECTING_AT_ONCE = 32
#: ws_fanout: sockets calling at once before the first thread count, so
#: that the server has made the worker threads it makes for calls
WARM_SOCKETS = 32
#: seconds to wait for a phase (connecting, subscribing, a broadcast)
PHASE_TIMEOUT = 120
#: seconds the server is left alone before its threads are counted
SETTLE = 0.5
#: seconds between broadcasts
BROADCAST_PAUSE = 0.2
#: bytes read at once (more than 128 KiB makes every recv() an mmap)
RECV_SIZE = 65536


class Closed(Exception):
    """A socket closed or was refused where the benchmark needs it."""


class Client:
    """One websocket connection of the load generator."""

    __slots__ = ('loop', 'sock', 'ws', 'outbuf', 'state', 'socket_id',
                 'parts', 'on_message', 'index', 'sent_at', 'calls',
                 'seen', 'raw', 'arrived')

    def __init__(self, loop, address, index, on_message):
        self.loop = loop
        self.index = index
        self.on_message = on_message  # (client, dict) for every message
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.outbuf = b''
        self.state = 'connecting'
        self.socket_id = None
        self.parts = []
        self.sent_at = 0.0
        self.calls = 0
        self.seen = -1  # the last broadcast this socket received
        #: while not None, bytes received are kept here, unparsed, and
        #: :attr:`arrived` set when they hold a whole text message (see
        #: :meth:`defer`)
        self.raw = None
        self.arrived = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect_ex(address)
        loop.selector.register(self.sock, selectors.EVENT_WRITE, self)

    # the loop's side

    def ready(self, mask):
        if self.state == 'connecting':
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise Closed('connect: {}'.format(os.strerror(error)))
            self.state = 'handshake'
            self.loop.selector.modify(self.sock, selectors.EVENT_READ, self)
            self._send(self.ws.send(Request(
                host='{}:{}'.format(*self.loop.address), target='/ws')))
            return
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise Closed('recv: {}'.format(exc))
            if self.raw is not None and data:
                self.raw += data
                if self.arrived is None and holds_text_message(self.raw):
                    self.arrived = time.perf_counter()
                    self.loop.arrivals += 1
                return
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                self._event(event)
            if not data:
                raise Closed('the server closed the connection')

    def _event(self, event):
        if isinstance(event, TextMessage):
            self.parts.append(event.data)
            if event.message_finished:
                text = ''.join(self.parts)
                self.parts = []
                self.on_message(self, json.loads(text))
        elif isinstance(event, AcceptConnection):
            self.state = 'open'
        elif isinstance(event, Ping):
            self._send(self.ws.send(event.response()))
        elif isinstance(event, (RejectConnection, RejectData)):
            raise Closed('handshake refused: {!r}'.format(event))
        elif isinstance(event, CloseConnection):
            raise Closed('closed by the server: {} {}'.format(
                event.code, event.reason))

    # deferred parsing (ws_fanout)

    def defer(self):
        """From now on, only collect what arrives and note when a whole
        text message is in: the broadcast is timed up to the last socket's
        bytes, not up to this one process having parsed 2,000 messages."""
        self.raw = b''
        self.arrived = None

    def parse_deferred(self):
        """Hand what was collected to wsproto, as if it had just come."""
        raw, self.raw = self.raw, None
        if raw:
            self.ws.receive_data(raw)
            for event in self.ws.events():
                self._event(event)

    # sending

    def call(self, method, data, correlation_id):
        self.sent_at = time.perf_counter()
        self._send(self.ws.send(Message(data=json.dumps({
            'method': method, 'data': data,
            'correlation_id': correlation_id}))))

    def _send(self, data):
        if self.outbuf:
            self.outbuf += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise Closed('send: {}'.format(exc))
        if sent < len(data):
            self.outbuf = data[sent:]
            self.loop.selector.modify(
                self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def _flush(self):
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        self.outbuf = self.outbuf[sent:]
        if not self.outbuf:
            self.loop.selector.modify(self.sock, selectors.EVENT_READ, self)

    def close(self):
        try:
            self.loop.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


class Loop:
    """The one selector loop, and the clients on it."""

    def __init__(self, address):
        self.address = address
        self.selector = selectors.DefaultSelector()  # epoll on Linux
        self.clients = []
        self.arrivals = 0  # deferred clients that have a whole message

    def connect(self, count, on_message):
        """Open ``count`` more clients (at most :data:`CONNECTING_AT_ONCE`
        handshakes at a time); return them once each has its socket id."""
        new = []
        deadline = time.monotonic() + PHASE_TIMEOUT
        while len(new) < count or any(c.socket_id is None for c in new):
            waiting = sum(1 for c in new if c.socket_id is None)
            while len(new) < count and waiting < CONNECTING_AT_ONCE:
                client = Client(self, self.address,
                                len(self.clients), on_message)
                self.clients.append(client)
                new.append(client)
                waiting += 1
            self.run_once(deadline)
        return new

    def run_once(self, deadline, timeout=0.5):
        if time.monotonic() > deadline:
            raise Closed('timed out')
        for key, mask in self.selector.select(timeout):
            key.data.ready(mask)

    def run_until(self, done, timeout=PHASE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not done():
            self.run_once(deadline)

    def disconnect(self, clients):
        for client in clients:
            client.close()
            self.clients.remove(client)

    def close(self):
        for client in self.clients:
            client.close()
        self.selector.close()


def on_connected(client, message):
    """The first message of every socket: Nameko's ``connected`` event."""
    if message.get('type') == 'event' and message.get('event') == 'connected':
        client.socket_id = message['data']['socket_id']
        return True
    return False


def holds_text_message(data):
    """Whether ``data``, bytes from the server (unmasked frames, RFC 6455
    5.2), hold a whole text message: a final text (or continuation)
    frame, all of it. Control frames (a ping) are stepped over."""
    offset, size = 0, len(data)
    while offset + 2 <= size:
        first, second = data[offset], data[offset + 1]
        length = second & 0x7f
        head = {126: 4, 127: 10}.get(length, 2)
        if offset + head > size:
            return False
        if head > 2:
            length = int.from_bytes(data[offset + 2:offset + head], 'big')
        if second & 0x80:  # masked: not from a server, but be exact
            head += 4
        end = offset + head + length
        if end > size:
            return False
        if first & 0x80 and first & 0x0f in (0x0, 0x1):
            return True
        offset = end
    return False


def check_result(message):
    if not message.get('success'):
        raise Closed('the call failed: {}'.format(message.get('error')))


# -- ws_rpc --------------------------------------------------------------------

def ws_rpc(args, loop):
    """``--connections`` sockets, call after call each."""
    state = {'measuring': False, 'sending': True, 'latencies': [],
             'outstanding': 0}

    def on_message(client, message):
        if on_connected(client, message):
            return
        now = time.perf_counter()
        check_result(message)
        state['outstanding'] -= 1
        if state['measuring']:
            state['latencies'].append(now - client.sent_at)
        if state['sending']:
            next_call(client)

    def next_call(client):
        client.calls += 1
        state['outstanding'] += 1
        client.call(WS_ECHO, {'value': PAYLOAD}, client.calls)

    if args.idle:  # sockets that only stay connected
        loop.connect(args.idle, on_connected)
    clients = loop.connect(args.connections, on_message)
    for client in clients:
        next_call(client)
    warm_end = time.perf_counter() + args.warmup_s
    loop.run_until(lambda: time.perf_counter() >= warm_end)
    before = cpu_now(args.server_pid)
    state['measuring'] = True
    start = time.perf_counter()
    end = start + args.duration
    loop.run_until(lambda: time.perf_counter() >= end)
    state['measuring'] = False
    elapsed = time.perf_counter() - start
    after = cpu_now(args.server_pid)
    state['sending'] = False
    loop.run_until(lambda: state['outstanding'] == 0, timeout=30)
    latencies = sorted(state['latencies'])
    if not latencies:
        raise Closed('no call was answered in {:.1f} s'.format(elapsed))
    calls = len(latencies)
    result = {
        'connections': args.connections, 'idle': args.idle, 'calls': calls,
        'calls_per_s': calls / elapsed,
        'p50_ms': statistics.median(latencies) * 1000,
        'p99_ms': latencies[max(0, int(calls * 0.99) - 1)] * 1000,
    }
    result.update(cpu_use(before, after, calls, 'call'))
    return result


# -- ws_fanout -----------------------------------------------------------------

def ws_fanout(args, loop):
    """Subscribed sockets, server threads and RSS, then broadcasts."""
    state = {'round': -1, 'received': 0, 'answered': 0, 'replied': None}
    trigger = None

    def on_message(client, message):
        if on_connected(client, message):
            return
        kind = message.get('type')
        if kind == 'result':
            check_result(message)
            if client is trigger:
                state['replied'] = time.perf_counter()
            else:
                state['answered'] += 1
        elif kind == 'event' and message.get('event') == WS_EVENT:
            seq = message['data']['seq']
            if seq != state['round'] or client.seen == seq:
                raise Closed('socket {} got broadcast {} during {}'.format(
                    client.index, seq, state['round']))
            client.seen = seq
            state['received'] += 1

    def call_each(clients, method, data):
        """One call from each of ``clients`` at once; wait for all."""
        wanted = state['answered'] + len(clients)
        for client in clients:
            client.call(method, data, method)
        loop.run_until(lambda: state['answered'] >= wanted)

    server = args.server_pid
    result = {'subscribers': args.subscribers, 'few': args.few,
              'threads_idle': server_threads(server)}
    # calls from WARM_SOCKETS sockets at once, until the server has the
    # worker threads it makes for calls (threadko: a pool that grows on
    # demand up to max_workers, and keeps them); then those sockets go,
    # and from here on only the number of connections changes
    warm = loop.connect(WARM_SOCKETS, on_message)
    warm_end = time.perf_counter() + args.warmup_s
    while time.perf_counter() < warm_end:
        call_each(warm, WS_ECHO, {'value': PAYLOAD})
    loop.disconnect(warm)
    trigger, = loop.connect(1, on_message)
    started = time.perf_counter()
    few = loop.connect(args.few, on_message)
    call_each(few, WS_SUBSCRIBE, {'channel': WS_CHANNEL})
    settle(loop)
    result.update(threads_few=server_threads(server),
                  rss_few_mib=server_rss_mib(server))
    others = loop.connect(args.subscribers - args.few, on_message)
    call_each(others, WS_SUBSCRIBE, {'channel': WS_CHANNEL})
    result['connect_s'] = time.perf_counter() - started
    settle(loop)
    result.update(threads_many=server_threads(server),
                  rss_many_mib=server_rss_mib(server))

    subscribers = few + others
    runs = []
    for number in range(args.broadcasts):
        for client in subscribers:
            client.defer()
        loop.arrivals = 0
        state.update(round=number, replied=None)
        received = state['received']
        before = cpu_now(server)
        sent = time.perf_counter()
        trigger.call(WS_BROADCAST, {'channel': WS_CHANNEL,
                                    'data': {'seq': number,
                                             'value': PAYLOAD}}, number)
        loop.run_until(lambda: loop.arrivals == len(subscribers)
                       and state['replied'] is not None)
        after = cpu_now(server)
        arrived = [client.arrived for client in subscribers]
        for client in subscribers:  # each got its event, and only once
            client.parse_deferred()
        if state['received'] - received != len(subscribers):
            raise Closed('{} events for {} sockets'.format(
                state['received'] - received, len(subscribers)))
        run = {'fanout_ms': (max(arrived) - sent) * 1000,
               'first_event_ms': (min(arrived) - sent) * 1000,
               'reply_ms': (state['replied'] - sent) * 1000}
        run.update(cpu_use(before, after))
        runs.append(run)
        settle(loop, BROADCAST_PAUSE)

    for key in runs[0]:
        result[key] = statistics.median(run[key] for run in runs)
    result['fanout_first_ms'] = runs[0]['fanout_ms']
    result['broadcasts'] = runs
    result['threads_end'] = server_threads(server)
    return result


def settle(loop, seconds=SETTLE):
    """Let the server finish what it was doing (the loop goes on
    answering it), then measure it."""
    end = time.perf_counter() + seconds
    loop.run_until(lambda: time.perf_counter() >= end)


# -- the server process and this one ----------------------------------------------

def _proc_status(pid, field):
    with open('/proc/{}/status'.format(pid)) as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def server_threads(pid):
    return _proc_status(pid, 'Threads')


def server_rss_mib(pid):
    return _proc_status(pid, 'VmRSS') / 1024


def server_cpu_seconds(pid):
    """The CPU time of the server's threads: the sum of their schedstat
    (nanoseconds; /proc/PID/stat counts 10 ms ticks, too coarse for one
    broadcast), or /proc/PID/stat where the kernel has no schedstat."""
    total = 0
    try:
        for task in os.listdir('/proc/{}/task'.format(pid)):
            try:
                with open('/proc/{}/task/{}/schedstat'.format(
                        pid, task)) as stat:
                    total += int(stat.read().split()[0])
            except FileNotFoundError:
                pass  # a thread that ended meanwhile
        return total / 1e9
    except OSError:
        pass
    with open('/proc/{}/stat'.format(pid)) as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def cpu_now(pid):
    """(this process's CPU seconds, the server's, the wall clock)."""
    return time.process_time(), server_cpu_seconds(pid), time.perf_counter()


def cpu_use(before, after, count=None, per=None):
    """The CPU both processes used between two :func:`cpu_now`; as a
    share of the wall time (1.0: one core all the time), and per ``per``
    when ``count`` is given."""
    client = after[0] - before[0]
    server = after[1] - before[1]
    wall = after[2] - before[2]
    used = {'client_cpu_s': client, 'server_cpu_s': server,
            'client_cpu_share': client / wall if wall else None,
            'server_cpu_share': server / wall if wall else None}
    if count:
        used['client_cpu_ms_per_' + per] = client * 1000 / count
        used['server_cpu_ms_per_' + per] = server * 1000 / count
    return used


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=('ws_rpc', 'ws_fanout'))
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--server-pid', type=int, required=True,
                        help='the server process, for its threads, RSS '
                             'and CPU time (/proc)')
    parser.add_argument('--connections', type=int, default=32)
    parser.add_argument('--idle', type=int, default=0,
                        help='ws_rpc: websockets connected first that '
                             'send nothing (not a harness option: for '
                             'seeing what idle sockets cost a server)')
    parser.add_argument('--warmup-s', type=float, default=1.0)
    parser.add_argument('--duration', type=float, default=10)
    parser.add_argument('--subscribers', type=int, default=2000)
    parser.add_argument('--few', type=int, default=10)
    parser.add_argument('--broadcasts', type=int, default=5)
    args = parser.parse_args(argv)
    if not 0 < args.few <= args.subscribers:
        parser.error('--few must be between 1 and --subscribers')
    return args


def main(argv=None):
    args = parse_arguments(argv)
    raise_open_files_limit()
    loop = Loop((args.host, args.port))
    try:
        result = (ws_rpc if args.scenario == 'ws_rpc' else ws_fanout)(
            args, loop)
    finally:
        loop.close()
    result['client_rusage_cpu_s'] = sum(
        resource.getrusage(resource.RUSAGE_SELF)[:2])
    emit(result)


if __name__ == '__main__':
    main()
