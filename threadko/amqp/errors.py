"""What broker refusals mean, in words that say what to do.

The consumer loop and the publishers turn pika's channel and connection
errors into :class:`~threadko.exceptions.ConfigurationError` messages here,
one function per kind of refusal, so each message names the cause (the
resource, the permission, the queue type, the certificate) and the fix.
"""

import pika.exceptions


def explain_declaration_error(exc, description):
    """The message for a declaration the broker refused (a
    ``ChannelClosedByBroker`` from declaring ``description``'s entities)."""
    return 'The broker refused a declaration for {}: {}'.format(
        description, exc)


def is_declaration_error(exc):
    """Whether ``exc`` is the broker refusing a declaration (406
    inequivalent arguments, 403 access refused, 405 locked, 404 not
    found), not an outage."""
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker)
