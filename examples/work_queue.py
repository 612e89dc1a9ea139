"""A work queue: ``gallery`` publishes resize jobs, ``resizer`` consumes
them (docs/messaging.rst).

Both declare the ``jobs`` exchange and the ``jobs-resize`` queue exactly
as a Nameko service would, so either side could be a Nameko service.
Run them with ``threadko run examples.work_queue --broker
amqp://guest:guest@localhost`` and call ``gallery.upload(7)``.
"""

from threadko.messaging import Exchange, Publisher, Queue, consume
from threadko.rpc import rpc

jobs = Exchange("jobs")  # direct, durable
resize_jobs = Queue("jobs-resize", exchange=jobs, routing_key="resize")


class Gallery:
    name = "gallery"

    # declaring the queue too keeps messages published before the
    # resizer ever ran; without a queue, the broker drops them
    publish = Publisher(exchange=jobs, declare=[resize_jobs])

    @rpc
    def upload(self, image_id):
        self.publish({"image_id": image_id}, routing_key="resize")


class Resizer:
    name = "resizer"

    @consume(resize_jobs)
    def resize(self, job):
        ...  # job == {"image_id": ...}


class Thumbnails:
    """Publishes resize jobs with publish options."""

    name = "thumbnails"

    publish = Publisher(exchange=jobs, declare=[resize_jobs])

    @rpc
    def upload_thumbnail(self, image_id):
        # [docs-start publish-options]
        self.publish(
            {"image_id": image_id, "size": "thumb"},
            routing_key="resize",
            priority=5,              # needs x-max-priority on the queue
            expiration=300,          # dropped if not consumed within 5 minutes
            headers={"x-tenant": "acme"},
            mandatory=True,          # raise if no queue is bound for "resize"
        )
        # [docs-end publish-options]
