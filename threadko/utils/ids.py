"""Random ids for the hot paths (call ids, correlation ids).

``uuid.uuid4()`` reads ``os.urandom``, which releases the GIL around its
system call: on a busy process another thread then takes the GIL and the
caller waits to get it back, a thread switch per id (measured at tens of
microseconds per RPC call under load). These ids need to be unique, not
unguessable, so they come from :mod:`random` instead (seeded from the
system's randomness, and again in a forked child), which keeps the GIL.
"""

import random
import uuid

_getrandbits = random.getrandbits


def random_uuid():
    """A version 4 UUID as text, like ``str(uuid.uuid4())``, from
    :func:`random.getrandbits` (not for secrets)."""
    return str(uuid.UUID(int=_getrandbits(128), version=4))
