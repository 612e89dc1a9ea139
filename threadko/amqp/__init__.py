"""Everything that talks to a message broker, and nothing else does.

RabbitMQ is reached with pika (``amqp://``, ``amqps://``, and Nameko's
``pyamqp://`` spelling); ``memory://`` is the embedded in-process broker of
:mod:`threadko.amqp.memory`, which offers the same connection interface.
"""

import logging

from threadko.amqp import pika_codec
# where Nameko 2 users import it from
from threadko.exceptions import UndeliverableMessage  # noqa: F401

pika_codec.install()

# pika reports at INFO every connection it opens and closes, at WARNING
# every returned message (which threadko turns into UnknownService or
# UndeliverableMessage), and at ERROR every failed connection attempt;
# threadko logs what matters itself. An application that configured the
# "pika" logger keeps its setting.
_pika_log = logging.getLogger('pika')
if _pika_log.level == logging.NOTSET:
    _pika_log.setLevel(logging.CRITICAL)
del _pika_log
