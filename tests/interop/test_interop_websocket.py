"""Nameko 2.14.1's own websocket test client against a threadko websocket
service: ``nameko.testing.websocket.make_virtual_socket`` (on eventlet and
``websocket-client``, in the Nameko virtualenv) talks to a
:mod:`threadko.web.websocket` service served by this test process.

The Nameko side is one script run to its end: it prints a JSON line with
what it saw. No broker is involved.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from threadko.web.websocket import WebSocketHubProvider, rpc

from support import web_port

SCRIPT_TIMEOUT = 60  # seconds for the Nameko script, eventlet start included

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'scripts'))
from nameko_venv import clean_env  # noqa: E402


class Newsroom:
    name = 'newsroom'
    hub = WebSocketHubProvider()

    @rpc
    def echo(self, socket_id, value):
        return {'socket_id': socket_id, 'value': value}

    @rpc
    def join(self, socket_id, channel):
        self.hub.subscribe(socket_id, channel)
        return self.hub.get_subscriptions(socket_id)

    @rpc
    def announce(self, socket_id, channel, text):
        self.hub.broadcast(channel, 'announcement', {
            'text': text, 'from': socket_id})

    @rpc
    def fail(self, socket_id, message):
        raise ValueError(message)


#: run by the Nameko venv's python, with the port as its argument: as a
#: Nameko test does (the ``websocket`` fixture: ``run_forever`` on a
#: greenthread of a monkey-patched process)
NAMEKO_CLIENT = textwrap.dedent('''
    import eventlet
    eventlet.monkey_patch()

    import json
    import sys

    from nameko.exceptions import MethodNotFound, RemoteError
    from nameko.testing.websocket import make_virtual_socket

    port = int(sys.argv[1])
    threads = []


    def connect():
        ws_app, connect_socket = make_virtual_socket('127.0.0.1', port)
        threads.append((ws_app, eventlet.spawn(ws_app.run_forever)))
        return connect_socket()


    out = {}
    with eventlet.Timeout(30):
        reader, writer = connect(), connect()
        out['connected'] = reader.wait_for_event('connected')
        writer_id = writer.wait_for_event('connected')[1]['socket_id']
        out['echo'] = reader.rpc(
            'echo', value={'n': [1, 2.5, None, 'caf\\u00e9']})
        try:
            reader.rpc('no_such_method')
        except MethodNotFound as exc:
            out['method_not_found'] = [type(exc).__module__,
                                       type(exc).__name__, str(exc)]
        try:
            reader.rpc('fail', message='it broke')
        except RemoteError as exc:
            out['remote_error'] = [type(exc).__name__, exc.exc_type,
                                   exc.value]
        out['joined'] = reader.rpc('join', channel='news')
        # the other socket's call broadcasts to the channel
        writer.rpc('announce', channel='news', text='hello from threadko')
        out['event'] = reader.wait_for_event('announcement')
        out['writer_id'] = writer_id
        out['writer_events'] = reader.get_event_queue('announcement').qsize()
    for ws_app, thread in threads:
        ws_app.close()
        thread.kill()
    print(json.dumps(out))
''')


def test_nameko_websocket_client_against_a_threadko_service(
        nameko_python, container_factory, memory_config, tmp_path):
    container = container_factory(
        Newsroom, {'WEB_SERVER_ADDRESS': '127.0.0.1:0'})
    container.start()
    script = tmp_path / 'nameko_ws_client.py'
    script.write_text(NAMEKO_CLIENT)

    done = subprocess.run(
        [str(nameko_python), str(script), str(web_port(container))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(), timeout=SCRIPT_TIMEOUT, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    event, data = out['connected']
    assert event == 'connected'
    socket_id = data['socket_id']
    assert out['echo'] == {'socket_id': socket_id,
                           'value': {'n': [1, 2.5, None, 'caf\u00e9']}}
    # registered on both sides: raised as Nameko's own class
    assert out['method_not_found'] == [
        'nameko.exceptions', 'MethodNotFound', '']
    assert out['remote_error'] == ['RemoteError', 'ValueError', 'it broke']
    assert out['joined'] == ['news']
    assert out['event'] == ['announcement', {
        'text': 'hello from threadko', 'from': out['writer_id']}]
    assert out['writer_events'] == 0
