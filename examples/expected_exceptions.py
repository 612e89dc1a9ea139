"""``expected_exceptions``: errors that are the caller's fault.

Both kinds of error go back to the caller alike. What differs is the log:
a worker that raises one of its entrypoint's ``expected_exceptions`` is
logged at WARNING (the caller did something wrong; nothing to fix here),
any other exception at ERROR, with its traceback (a bug to look at).
``update`` refuses callers without the ``admin`` role (see
``examples/auth.py``); for admins it fails with a genuine bug.
"""

from examples.auth import Auth, Unauthorized
from threadko.rpc import rpc


class Service:
    name = "service"

    auth = Auth()

    @rpc(expected_exceptions=Unauthorized)
    def update(self, data):
        if not self.auth.has_role("admin"):
            raise Unauthorized()

        # the update itself would go here
        raise TypeError("Whoops, genuine error.")
