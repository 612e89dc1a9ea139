"""WSGI file for gunicorn, mod_wsgi or uWSGI: one set of services and
one RPC client per server process (docs/web.rst)::

    gunicorn --workers 4 --threads 8 examples.wsgi:application

``$AMQP_URI`` names the broker.
"""

import os

from examples.wsgi_embedding import make_app

application, services, rpc_client = make_app(
    {"AMQP_URI": os.environ.get("AMQP_URI", "amqp://guest:guest@localhost")})
