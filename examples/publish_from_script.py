"""Publish a message from a plain script, outside any service
(docs/messaging.rst).

Usage: ``python -m examples.publish_from_script [AMQP_URI]`` (default
``amqp://guest:guest@localhost``), while ``threadko run examples.work_queue``
runs on the same broker: ``resizer`` gets the job.
"""

import sys

from threadko.amqp.connection import Connector
from threadko.amqp.publish import ProducerPool, Publisher
from threadko.messaging import Exchange


def main(amqp_uri):
    config = {"AMQP_URI": amqp_uri}
    pool = ProducerPool(Connector(config, heartbeat=0,
                                  transport_options=False))
    publisher = Publisher(pool, exchange=Exchange("jobs"))
    try:
        publisher.publish({"image_id": 7}, routing_key="resize")
    finally:
        pool.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost")
