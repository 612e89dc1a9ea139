"""HTTP entrypoints (``@http``), served by waitress or by any WSGI server.

- :mod:`threadko.web.handlers`: the ``@http(method, url)`` entrypoint;
- :mod:`threadko.web.server`: the routing WSGI application and the one
  waitress server per process and address that serves it;
- :mod:`threadko.web.wsgi`: the same routes inside another WSGI
  application or server.
"""
