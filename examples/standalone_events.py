"""Dispatch an event as ``service_a`` from a plain script.

Usage: ``python -m examples.standalone_events [AMQP_URI]`` (default
``amqp://guest:guest@localhost``), while ``threadko run examples.events``
runs on the same broker (it declares the ``service_a.events`` exchange).
"""

import sys

from threadko.standalone.events import event_dispatcher


def main(amqp_uri):
    dispatch = event_dispatcher({"AMQP_URI": amqp_uri})
    dispatch("service_a", "event_type", {"from": "a script"})
    dispatch.close()
    print("dispatched event_type as service_a")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost")
