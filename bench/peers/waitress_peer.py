"""The bare waitress + werkzeug app the ``http`` scenario compares with:
what an ``@http`` hello world amounts to without a framework.

    python waitress_peer.py serve http --web-address HOST:PORT

Same routing (a werkzeug ``Map`` with one ``Rule``), request and response
objects as threadko, and as many waitress threads as threadko uses by
default (``max_workers`` + 2 = 12). Prints ``READY`` once listening; stops
on SIGTERM.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HELLO, parse_arguments  # noqa: E402

THREADS = 12


def hello_app():
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import Map, Rule
    from werkzeug.wrappers import Request, Response

    url_map = Map([Rule('/hello', endpoint='hello', methods=['GET'])])

    def app(environ, start_response):
        request = Request(environ)
        try:
            url_map.bind_to_environ(request.environ).match()
            response = Response(HELLO)
        except HTTPException as exc:
            response = exc
        return response(environ, start_response)
    return app


def main():
    args = parse_arguments(__doc__)
    if args.role != 'serve' or args.scenario != 'http':
        sys.exit('the waitress peer only serves the http scenario')
    from waitress.server import create_server
    host, _, port = args.web_address.rpartition(':')
    server = create_server(hello_app(), host=host, port=int(port),
                           threads=THREADS,
                           clear_untrusted_proxy_headers=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.close())
    print('READY', flush=True)
    try:
        server.run()
    except (OSError, ValueError):
        pass  # closed by SIGTERM while polling


if __name__ == '__main__':
    main()
