"""The retry settings of consumer connections when the config has no
``TRANSPORT_OPTIONS`` (docs/amqp.rst). They are Nameko's; a test checks
that they are threadko's too.
"""

DEFAULT_TRANSPORT_OPTIONS = {
    "max_retries": 3, "interval_start": 2, "interval_step": 1,
    "interval_max": 5,
}
