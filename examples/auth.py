"""Authentication and authorisation carried in context data.

``Auth`` is a dependency provider. A login (``authenticate``) checks a user
name and password and puts a signed token into the worker's context data,
under ``auth_token``; every RPC call, event or message the worker sends
afterwards carries it along, in a ``nameko.auth_token`` header. Callers
that logged in earlier pass the token themselves, as context data of their
RPC client::

    ServiceRpcProxy("service", config, context_data={"auth_token": token})

``has_role`` and ``check_role`` read the token of the current call back
from ``worker_ctx.context_data``. The token is an HMAC-signed JSON payload
(standard library only); a real system would rather use JWTs or sessions.

The demo users are ``matt`` (password ``correct horse``, a developer) and
``susie`` (``battery staple``, a developer and an admin). ``examples/
expected_exceptions.py`` and ``examples/sensitive_arguments.py`` use
``Auth``.
"""

import base64
import hashlib
import hmac
import json

from threadko.extensions import DependencyProvider

TOKEN_CONTEXT_KEY = "auth_token"
HASH_ITERATIONS = 100_000


class Unauthenticated(Exception):
    pass


class Unauthorized(Exception):
    pass


def hash_password(password, salt):
    return hashlib.pbkdf2_hmac(
        "sha256", password.encode("utf-8"), salt, HASH_ITERATIONS)


class Auth(DependencyProvider):

    class Api:
        """What a worker sees as ``self.auth``."""

        def __init__(self, users, secret, worker_ctx):
            self.users = users
            self.secret = secret
            self.worker_ctx = worker_ctx

        def authenticate(self, username, password):
            user = self.users.get(username)
            if not user:
                raise Unauthenticated("User does not exist")
            if not hmac.compare_digest(
                    hash_password(password, user["salt"]), user["password"]):
                raise Unauthenticated("Incorrect password")

            token = self._sign({"username": username, "roles": user["roles"]})
            # `context_data` is a copy made for sending; `data` is the
            # worker's own, which the calls it makes from now on send along
            self.worker_ctx.data[TOKEN_CONTEXT_KEY] = token
            return token

        def has_role(self, role):
            token = self.worker_ctx.context_data.get(TOKEN_CONTEXT_KEY)
            if not token:
                raise Unauthenticated()
            payload = self._verify(token)
            return payload is not None and role in payload["roles"]

        def check_role(self, role):
            if self.has_role(role):
                return
            raise Unauthorized()

        def _sign(self, payload):
            body = base64.urlsafe_b64encode(
                json.dumps(payload).encode("utf-8")).decode("ascii")
            return "{}.{}".format(body, self._signature(body))

        def _verify(self, token):
            """The token's payload, or ``None`` if it is not one of ours."""
            body, _, signature = str(token).rpartition(".")
            try:
                if hmac.compare_digest(
                        signature.encode("utf-8"),
                        self._signature(body).encode("ascii")):
                    return json.loads(base64.urlsafe_b64decode(body))
            except ValueError:  # not base64, not JSON, not ASCII
                pass
            return None

        def _signature(self, body):
            return hmac.new(
                self.secret, body.encode("ascii"), hashlib.sha256).hexdigest()

    def setup(self):
        # a real service would keep the secret out of its source
        self.secret = self.container.config.get(
            "AUTH_SECRET", "not a secret").encode("utf-8")
        self.users = {
            "matt": {
                "salt": bytes.fromhex("7d1f0c4b9a2e5d83"),
                "password": bytes.fromhex(
                    "cd1e7acf41c9a0005cf99ccdfc389608"
                    "263af2f3a6fbd700d0b04bcad43c0d4e"),
                "roles": ["developer"],
            },
            "susie": {
                "salt": bytes.fromhex("c2a94e1b07f36d58"),
                "password": bytes.fromhex(
                    "7eb2ce264d3b22b6790966adc1f916c9"
                    "8ebebf4a0aba405744d753d302d2b962"),
                "roles": ["developer", "admin"],
            },
        }

    def get_dependency(self, worker_ctx):
        return Auth.Api(self.users, self.secret, worker_ctx)
