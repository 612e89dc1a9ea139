"""examples/websocket_live.py in a real browser: headless Chromium opens
the ticker's page, which subscribes over the websocket; prices dispatched
as events here appear on it.

Chromium (Debian's ``chromium``, which ``scripts/bootstrap test`` installs)
is driven through its DevTools protocol: a websocket, spoken here with
wsproto, so the test needs no driver and downloads nothing. The page is
read by evaluating JavaScript in it, polled until what is expected shows
or a deadline passes. ``THREADKO_TEST_SKIP_BROWSER=1`` skips the test.
"""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path

import pytest

from threadko.standalone.events import event_dispatcher
from threadko.testing.services import entrypoint_waiter
from threadko.testing.utils import get_extension
from threadko.web.server import WebServer
from threadko.web.websocket import WebSocketHubProvider

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30  # seconds: a cold Chromium start is the slowest step
POLL = 0.05  # seconds between looks at the page
SKIP_VARIABLE = 'THREADKO_TEST_SKIP_BROWSER'

# the example is imported, and `pytest` run as a script (tox) does not put
# the repository root on sys.path as `python -m pytest` does
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# headless, and nothing that reaches for the network (there is none)
CHROMIUM_FLAGS = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
    '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage', '--no-default-browser-check',
    '--remote-debugging-port=0',
]

# what the test reads of the page: its status line, a price per row, and
# the log's texts without their times, oldest first
PAGE_STATE = """(() => ({
  status: document.getElementById("status")?.textContent,
  prices: Object.fromEntries(
    [...document.querySelectorAll("#prices tr")].map((tr) => [
      tr.querySelector(".symbol").textContent,
      tr.querySelector(".price").textContent,
    ])),
  log: [...document.querySelectorAll("#log li")].reverse().map(
    (li) => li.textContent.split("  ").slice(1).join("  ")),
}))()"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get(SKIP_VARIABLE)),
                       reason='{} is set'.format(SKIP_VARIABLE)),
]

# never through an http_proxy from the environment
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DevTools:
    """A client of one DevTools websocket (a page's): ``call`` sends a
    command and returns its result; the events that arrive meanwhile are
    kept in :attr:`events`."""

    def __init__(self, url, timeout=WAIT):
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        parts = urllib.parse.urlsplit(url)
        self._timeout = timeout
        self._socket = socket.create_connection(
            (parts.hostname, parts.port), timeout=timeout)
        self._protocol = WSConnection(ConnectionType.CLIENT)
        self._ids = itertools.count(1)
        self._received = deque()
        self._parts = []
        self._accepted = False
        self.events = []
        self._send(Request(host=parts.netloc, target=parts.path))
        deadline = time.monotonic() + timeout
        while not self._accepted:
            self._receive(deadline)

    def _send(self, event):
        self._socket.sendall(self._protocol.send(event))

    def _receive(self, deadline):
        from wsproto.events import (
            AcceptConnection, CloseConnection, Ping, RejectConnection,
            TextMessage,
        )

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError('Chromium did not answer in time')
        self._socket.settimeout(remaining)
        data = self._socket.recv(65536)
        if not data:
            raise AssertionError('Chromium closed the DevTools connection')
        self._protocol.receive_data(data)
        for event in self._protocol.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, RejectConnection):
                raise AssertionError('Chromium refused the DevTools '
                                     'connection: {}'.format(event))
            elif isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self._received.append(json.loads(''.join(self._parts)))
                    self._parts = []
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, CloseConnection):
                raise AssertionError('Chromium closed the DevTools '
                                     'connection: {}'.format(event))

    def call(self, method, **params):
        from wsproto.events import Message

        call_id = next(self._ids)
        self._send(Message(data=json.dumps(
            {'id': call_id, 'method': method, 'params': params})))
        deadline = time.monotonic() + self._timeout
        while True:
            while self._received:
                message = self._received.popleft()
                if message.get('id') == call_id:
                    if 'error' in message:
                        raise AssertionError('{} failed: {}'.format(
                            method, message['error']))
                    return message['result']
                if 'method' in message:
                    self.events.append(message)
            self._receive(deadline)

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page."""
        result = self.call('Runtime.evaluate', expression=expression,
                           returnByValue=True)
        if 'exceptionDetails' in result:
            raise AssertionError('{!r} raised in the page: {}'.format(
                expression, result['exceptionDetails']))
        return result['result'].get('value')

    def errors(self):
        """What went wrong in the page: uncaught exceptions and
        ``console.error`` calls."""
        found = []
        for message in self.events:
            params = message['params']
            if message['method'] == 'Runtime.exceptionThrown':
                details = params['exceptionDetails']
                found.append(details.get('exception', {}).get(
                    'description', details.get('text')))
            elif (message['method'] == 'Runtime.consoleAPICalled'
                    and params['type'] == 'error'):
                found.append(' '.join(str(arg.get('value', arg))
                                      for arg in params['args']))
        return found

    def wait_for(self, condition, what, timeout=WAIT):
        """Poll the page's state until ``condition(state)`` holds; return
        that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.evaluate(PAGE_STATE)
            if condition(state):
                return state
            if time.monotonic() >= deadline:
                raise AssertionError(
                    'the page never showed {}; it shows {}; errors in the '
                    'page: {}'.format(what, state, self.errors()))
            time.sleep(POLL)

    def close(self):
        self._socket.close()


class Chromium:
    """Headless Chromium with a fresh profile in a temporary directory,
    which is its home too (its crash reporter and dconf write there, not in
    ``~``), in a process group of its own; :meth:`close` kills the group,
    waits for the browser, and removes the directory."""

    def __init__(self, binary):
        self.home = tempfile.mkdtemp(prefix='threadko-chromium-')
        self.profile = os.path.join(self.home, 'profile')
        env = dict(os.environ, HOME=self.home,
                   XDG_CONFIG_HOME=os.path.join(self.home, '.config'),
                   XDG_CACHE_HOME=os.path.join(self.home, '.cache'))
        self.output = tempfile.TemporaryFile()  # its chatter, for failures
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, '--user-data-dir=' + self.profile,
             'about:blank'],
            env=env, stdin=subprocess.DEVNULL, stdout=self.output,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.pages = []

    def chatter(self):
        self.output.seek(0)
        return self.output.read().decode('utf-8', 'replace')

    def devtools_port(self):
        """The port Chromium chose (it writes it into the profile)."""
        path = Path(self.profile, 'DevToolsActivePort')
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError('Chromium exited ({}):\n{}'.format(
                    self.proc.returncode, self.chatter()))
            try:
                port = path.read_text().split('\n')[0]
            except FileNotFoundError:
                port = ''
            if port.isdigit():
                return int(port)
            if time.monotonic() >= deadline:
                raise AssertionError('Chromium did not open its DevTools '
                                     'port:\n{}'.format(self.chatter()))
            time.sleep(POLL)

    def open(self, url):
        """Load ``url`` in Chromium's tab; return its :class:`DevTools`."""
        listing = 'http://127.0.0.1:{}/json/list'.format(self.devtools_port())
        with _opener.open(listing, timeout=WAIT) as response:
            targets = json.load(response)
        target = next(target for target in targets
                      if target['type'] == 'page')
        page = DevTools(target['webSocketDebuggerUrl'])
        self.pages.append(page)
        page.call('Runtime.enable')  # to hear of the page's errors
        page.call('Page.navigate', url=url)
        return page

    def close(self):
        for page in self.pages:
            page.close()
        # the group is the browser's pid, not reused before it is waited for
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its helpers too
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(WAIT)
        finally:
            self.output.close()
            # its crash reporter, in a session of its own, exits once the
            # browser has gone: it may still be writing for a moment
            wait_until(lambda: _removed(self.home), 'removed ' + self.home)


def _removed(path):
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.exists(path)


def wait_until(condition, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError('never: {}'.format(what))
        time.sleep(POLL)


@pytest.fixture
def chromium():
    binary = shutil.which('chromium')
    if binary is None:
        pytest.fail('chromium is not installed: `scripts/bootstrap test` '
                    'installs it (or set {}=1 to skip the browser '
                    'test)'.format(SKIP_VARIABLE), pytrace=False)
    browser = Chromium(binary)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def dispatch(memory_config):
    dispatch = event_dispatcher(memory_config)
    try:
        yield dispatch
    finally:
        dispatch.close()


def test_live_page_shows_the_prices_of_its_symbols(
        container_factory, memory_config, chromium, dispatch):
    from examples.websocket_live import PriceTicker

    container = container_factory(
        PriceTicker, {'WEB_SERVER_ADDRESS': '127.0.0.1:0'})
    container.start()
    url = 'http://127.0.0.1:{}/'.format(
        get_extension(container, WebServer).port)
    hub = get_extension(container, WebSocketHubProvider).hub

    def price(symbol, value):
        dispatch('market', 'price_changed', {'symbol': symbol, 'price': value})

    # the page connects and subscribes to its default symbols
    page = chromium.open(url)
    state = page.wait_for(
        lambda state: list(state['prices']) == ['ACME', 'GLOBEX', 'INITECH'],
        'a row for each symbol (subscribed)')
    assert state['status'] == 'connected'
    assert state['prices'] == {'ACME': '–', 'GLOBEX': '–', 'INITECH': '–'}
    [socket_id] = hub.connections
    assert hub.get_subscriptions(socket_id) == ['ACME', 'GLOBEX', 'INITECH']

    # prices dispatched as events appear in their rows
    price('ACME', 101.25)
    price('GLOBEX', 42)
    state = page.wait_for(
        lambda state: state['prices'] == {
            'ACME': '101.25', 'GLOBEX': '42.00', 'INITECH': '–'},
        'the prices of ACME and GLOBEX')
    assert sorted(state['log'][-2:]) == ['ACME 101.25', 'GLOBEX 42.00']

    # its × button unsubscribes: the next GLOBEX price is not sent
    page.evaluate('document.querySelector("#row-GLOBEX button").click()')
    page.wait_for(lambda state: 'GLOBEX' not in state['prices'],
                  'GLOBEX gone')
    assert hub.get_subscriptions(socket_id) == ['ACME', 'INITECH']
    with entrypoint_waiter(container, 'price_changed'):
        price('GLOBEX', 43)  # handled, and sent to nobody
    price('ACME', 102.5)  # so sent after it, if it were
    state = page.wait_for(lambda state: state['prices']['ACME'] == '102.50',
                          'the new price of ACME')
    log = state['log']
    assert log[:3] == [
        'watching ACME', 'watching GLOBEX', 'watching INITECH']
    # the first two prices were handled at the same time, in either order
    assert sorted(log[3:5]) == ['ACME 101.25', 'GLOBEX 42.00']
    assert log[5:] == ['stopped watching GLOBEX', 'ACME 102.50']

    # another page in the tab: the old socket is forgotten by the hub
    page.call('Page.navigate', url=url + '?symbols=INITECH')
    page.wait_for(lambda state: state['prices'] == {'INITECH': '–'},
                  'the new page subscribed')
    wait_until(lambda: socket_id not in hub.connections,
               'the hub forgot the old socket')
    [new_socket_id] = hub.connections
    assert hub.get_subscriptions(new_socket_id) == ['INITECH']
    price('INITECH', 7.5)
    page.wait_for(lambda state: state['prices'] == {'INITECH': '7.50'},
                  'the price of INITECH')

    # the service stops: the server closes the socket, the page says so
    container.stop()
    state = page.wait_for(
        lambda state: state['status'].startswith('disconnected'),
        'that it was disconnected')
    assert page.errors() == []
