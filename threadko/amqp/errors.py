"""What broker refusals mean, in words that say what to do.

The consumer loop and the publishers turn pika's channel and connection
errors into :class:`~threadko.exceptions.ConfigurationError` messages here,
one function per kind of refusal, so each message names the cause (the
resource, the permission, the queue type, the certificate) and the fix.
"""

import re
import ssl

import pika.exceptions


def explain_declaration_error(exc, description):
    """The message for a declaration the broker refused (a
    ``ChannelClosedByBroker`` from declaring ``description``'s entities)."""
    queue_type_message = explain_queue_type_mismatch(exc, description)
    if queue_type_message is not None:
        return queue_type_message
    access_message = explain_access_refused(exc, description)
    if access_message is not None:
        return access_message
    return 'The broker refused a declaration for {}: {}'.format(
        description, exc)


def is_declaration_error(exc):
    """Whether ``exc`` is the broker refusing a declaration (406
    inequivalent arguments, 403 access refused, 405 locked, 404 not
    found), not an outage."""
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker)


# RabbitMQ's words (and the memory broker's) for a queue redeclared with
# another type or delivery limit than it has, e.g. "PRECONDITION_FAILED -
# inequivalent arg 'x-queue-type' for queue 'rpc-a' in vhost 'v': received
# none but current is the value 'quorum' of type 'longstr'"
_QUEUE_TYPE_MISMATCH = re.compile(
    r"inequivalent arg '(?P<argument>x-queue-type|x-delivery-limit)' for "
    r"queue '(?P<queue>[^']*)' in vhost '(?P<vhost>[^']*)': received "
    r"(?P<received>.*) but current is (?P<current>.*)$")

_MIGRATION_DOCS = '"Moving to quorum queues" in docs/deployment.rst'
_QUORUM_DOCS = '"Quorum queues" in docs/deployment.rst'


def _argument_value(described):
    """The value in the broker's description of an argument (``none``,
    ``'5'`` or ``the value '5' of type 'signedint'``), or None."""
    match = re.search(r"'([^']*)'", described)
    return match.group(1) if match else None


def explain_queue_type_mismatch(exc, description):
    """The message for a 406 refusing to redeclare a queue with another
    ``x-queue-type`` or ``x-delivery-limit`` than the queue has on the
    broker (config ``QUEUE_TYPE`` / ``QUEUE_DELIVERY_LIMIT`` changed, or
    Nameko 2 and threadko services disagree), or None for any other
    refusal. Neither can change in place, so the message names the queue,
    both values and the ways out."""
    if getattr(exc, 'reply_code', None) != 406:
        return None
    match = _QUEUE_TYPE_MISMATCH.search(str(getattr(exc, 'reply_text', '')))
    if match is None:
        return None
    queue, vhost = match.group('queue'), match.group('vhost')
    received = _argument_value(match.group('received'))
    current = _argument_value(match.group('current'))
    if match.group('argument') == 'x-queue-type':
        return (
            'The broker refused a declaration for {}: queue {!r} exists as '
            'a {} queue, and this service declares it as a {} queue; a '
            "queue's type cannot change in place. Set QUEUE_TYPE to {} "
            '(for an @consume queue: its x-queue-type argument) to use the '
            'queue as it is, or move it: stop its consumers, let it drain, '
            'delete it (rabbitmqctl delete_queue --vhost {} {} --if-empty) '
            'and start the services again; see {}.'.format(
                description, queue, current or 'classic',
                received or 'classic', current or 'classic', vhost or '/',
                queue, _MIGRATION_DOCS))
    return (
        'The broker refused a declaration for {}: quorum queue {!r} exists '
        'with x-delivery-limit {}, and this service declares it with {}; '
        'RabbitMQ refuses to redeclare a queue with another delivery '
        'limit. Set QUEUE_DELIVERY_LIMIT to {} to use the queue as it is; '
        'to change the limit of an existing queue, apply a RabbitMQ policy '
        'with delivery-limit (the lower limit applies), or delete the '
        'drained queue so that it is declared again; see {}.'.format(
            description, queue, current or 'none', received or 'none',
            current or 'null', _QUORUM_DOCS))


# -- access refused (403) -----------------------------------------------------

# RabbitMQ's words for a resource permission check that failed, e.g.
# "ACCESS_REFUSED - access to queue 'rpc-a' in vhost 'v' refused for user
# 'u'"; they do not say which permission was missing: the channel method
# that was refused does (see _refused_operation)
_ACCESS_REFUSED = re.compile(
    r"access to (?P<kind>queue|exchange) '(?P<name>[^']*)' in vhost "
    r"'(?P<vhost>[^']*)' refused for user '(?P<user>[^']*)'")

# the permission each channel method needs on each kind of resource, and
# what for (RabbitMQ's access control table)
_NEEDED_PERMISSIONS = {
    'exchange_declare': {'exchange': ('configure', 'to declare it')},
    'exchange_delete': {'exchange': ('configure', 'to delete it')},
    'queue_declare': {'queue': ('configure', 'to declare it')},
    'queue_delete': {'queue': ('configure', 'to delete it')},
    'queue_bind': {'queue': ('write', 'to bind it to an exchange'),
                   'exchange': ('read', 'to bind a queue to it')},
    'queue_unbind': {'queue': ('write', 'to unbind it from an exchange'),
                     'exchange': ('read', 'to unbind a queue from it')},
    'queue_purge': {'queue': ('read', 'to purge it')},
    'basic_consume': {'queue': ('read', 'to consume from it')},
    'basic_get': {'queue': ('read', 'to get messages from it')},
    'basic_publish': {'exchange': ('write', 'to publish to it')},
}

# when the refused method is not known
_ANY_PERMISSION = {
    'exchange': 'configure (to declare it), write (to publish to it) or '
                'read (to bind a queue to it)',
    'queue': 'configure (to declare it), write (to bind it to an '
             'exchange) or read (to consume from it)',
}

_CHANNEL_MODULES = ('pika.', 'threadko.amqp.memory')


def _exception_chain(exc):
    """``exc`` and the exceptions it was raised from or while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refused_operation(exc):
    """The channel method (``queue_declare``, ``basic_consume``, ...) that
    raised ``exc`` (or the error it was raised from), found in its
    traceback: the outermost frame of a channel of pika (or of the memory
    broker) with one of the names of :data:`_NEEDED_PERMISSIONS`."""
    for error in _exception_chain(exc):
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            name = frame.f_code.co_name
            if name in _NEEDED_PERMISSIONS and frame.f_globals.get(
                    '__name__', '').startswith(_CHANNEL_MODULES):
                return name
            tb = tb.tb_next
    return None


def access_refused_hint(exc, operation=None):
    """For a 403 ACCESS_REFUSED on a queue or exchange (``exc`` a pika
    ``ChannelClosedByBroker``, a
    :class:`~threadko.exceptions.BrokerRefused`, or anything with
    ``reply_code`` and ``reply_text``): which permission the user lacks on
    which resource, and how to grant it; None for any other error.

    :param operation: the channel method that was refused
        (``basic_publish``, ``queue_declare``, ...); found in the
        traceback of ``exc`` when not given
    """
    if getattr(exc, 'reply_code', None) != 403:
        return None
    reply_text = str(getattr(exc, 'reply_text', ''))
    match = _ACCESS_REFUSED.search(reply_text)
    if match is None:
        return None
    kind, name = match.group('kind'), match.group('name')
    vhost, user = match.group('vhost'), match.group('user')
    operation = operation or _refused_operation(exc)
    needed = _NEEDED_PERMISSIONS.get(operation, {}).get(kind)
    if needed is not None:
        permission, purpose = needed
        lacks = 'user {!r} lacks the {} permission on {} {!r} in vhost {!r}, ' \
            'which it needs {}'.format(user, permission, kind, name, vhost,
                                       purpose)
        pattern = "the user's {} pattern".format(permission)
    else:
        lacks = ('user {!r} lacks a permission on {} {!r} in vhost {!r}: '
                 '{}'.format(user, kind, name, vhost, _ANY_PERMISSION[kind]))
        pattern = 'the pattern of that permission'
    return (
        '{} ({} {}). Grant it by making {} on vhost {!r} match {!r}: '
        '`rabbitmqctl set_permissions -p {} {} CONFIGURE WRITE READ` sets '
        "the user's three patterns at once (`rabbitmqctl "
        'list_user_permissions {}` shows the current ones).'.format(
            lacks, exc.reply_code, reply_text, pattern, vhost, name,
            _shell_word(vhost), _shell_word(user), _shell_word(user)))


def explain_access_refused(exc, description):
    """The message for a declaration (or consume) of ``description``'s
    entities refused with 403 ACCESS_REFUSED, naming the resource and the
    missing permission; None for any other refusal."""
    hint = access_refused_hint(exc)
    if hint is None:
        return None
    return 'The broker refused a declaration for {}: {}'.format(
        description, hint)


def _shell_word(text):
    if re.fullmatch(r'[A-Za-z0-9_./:@%+=-]+', text):
        return text
    return "'{}'".format(text.replace("'", "'\\''"))


# -- connections refused for good ---------------------------------------------

# a TLS alert from the broker about the client's certificate (pika hands
# these over as text, inside a StreamLostError or IncompatibleProtocolError)
_CLIENT_CERTIFICATE_ALERT = re.compile(
    r'(?:TLSV1|TLSV13|SSLV3)_ALERT_(?P<alert>UNKNOWN_CA|BAD_CERTIFICATE|'
    r'CERTIFICATE_REQUIRED|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|'
    r'CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED)')

_VERIFY_MESSAGE = re.compile(
    r'certificate verify failed: (?P<message>.*?)\s*(?:\(_ssl\.c:\d+\))?'
    r"""['")]*$""")


def _causes(exc):
    """``exc`` and every exception inside it: pika's connection errors
    carry their causes in ``args`` (or ``exceptions``, for a failover
    list), besides ``__cause__`` and ``__context__``."""
    found, todo, seen = [], [exc], set()
    while todo:
        error = todo.pop(0)
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        found.append(error)
        todo.extend(error.args)
        todo.extend(getattr(error, 'exceptions', None) or ())
        todo.extend((error.__cause__, error.__context__))
    return found


def _text(causes):
    return ' '.join(repr(error) for error in causes)


def _verify_message(causes, text):
    for error in causes:
        message = getattr(error, 'verify_message', None)
        if message:
            return message
    match = _VERIFY_MESSAGE.search(text.split('\n')[0])
    return match.group('message') if match else 'unknown reason'


def explain_connection_error(exc, broker, tls=None, login_method=None,
                             username=None, vhost=None):
    """The message for a connection that failed for a reason retrying does
    not fix: the broker's certificate failed verification (another CA,
    expired, or not for the host name), the broker refused the client
    certificate, the port does not speak TLS, the login was refused, or
    the vhost is not open to the user; None for anything else (an outage:
    refused or lost TCP connections, timeouts, a broker starting).

    :param broker: where, as text (``host:port``, or several)
    :param tls: the ``AMQP_SSL`` settings without the key password (a
        dict), ``True``, or None when the connection is not TLS
    :param login_method: ``LOGIN_METHOD``
    :param username: the user of ``AMQP_URI`` (never the password)
    :param vhost: the vhost of ``AMQP_URI``
    """
    causes = _causes(exc)
    text = _text(causes)
    settings = tls if isinstance(tls, dict) else {}
    certfile = settings.get('certfile')
    if (any(isinstance(error, ssl.SSLCertVerificationError)
            for error in causes) or 'CERTIFICATE_VERIFY_FAILED' in text):
        return _explain_verify_failed(causes, text, broker, settings)
    alert = _CLIENT_CERTIFICATE_ALERT.search(text)
    if alert is not None:
        return _explain_client_certificate_refused(
            alert.group('alert'), broker, certfile)
    if 'WRONG_VERSION_NUMBER' in text:
        return (
            'TLS handshake failed: the server at {} does not speak TLS '
            '(WRONG_VERSION_NUMBER); is that the plain AMQP port? RabbitMQ '
            'listens for TLS on another port (5671 by default): put it in '
            'AMQP_URI.'.format(broker))
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        return _explain_login_refused(
            exc, broker, login_method, username, vhost, certfile)
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        if re.search(r'limit \(\d+\) is reached', text):
            return None  # a vhost's or user's connection limit: it passes
        external = _is_external(login_method)
        who = ("the client certificate's user" if external
               else 'user {!r}'.format(username))
        return (
            'Access refused: the broker at {} refused {} access to vhost '
            '{!r} ({}). Create the vhost, or give the user permissions on '
            'it: rabbitmqctl set_permissions -p {} {} CONFIGURE WRITE '
            'READ.'.format(
                broker, who, vhost, _broker_said(exc),
                _shell_word(vhost or '/'),
                'USER' if external else _shell_word(username or 'USER')))
    return None


def _is_external(login_method):
    return bool(login_method) and login_method.upper() == 'EXTERNAL'


def _broker_said(exc):
    """pika's wrapped reason, e.g. ``403 'ACCESS_REFUSED - ...'``."""
    text = ' '.join(str(arg) for arg in exc.args) or repr(exc)
    match = re.search(r'\((\d+)\) ([\'"])(.*)\2', text)
    if match:
        return '{} {}'.format(match.group(1), match.group(3))
    return text


def _explain_verify_failed(causes, text, broker, settings):
    message = _verify_message(causes, text)
    codes = {getattr(error, 'verify_code', None) for error in causes}
    if 62 in codes or 'mismatch' in message.lower():
        # X509_V_ERR_HOSTNAME_MISMATCH (or IP_ADDRESS_MISMATCH)
        name = re.search(r"not valid for '([^']*)'", message)
        return (
            "TLS hostname mismatch: the broker's certificate at {} is not "
            'valid for {} ({}). Connect with a name the certificate lists '
            '(in its subjectAltName) in AMQP_URI, or set '
            "AMQP_SSL['server_hostname'] to one of those names.".format(
                broker, repr(name.group(1)) if name else 'the host name',
                message))
    ca_certs = settings.get('ca_certs')
    trusted = ("a CA in AMQP_SSL['ca_certs'] ({})".format(ca_certs)
               if ca_certs else
               "a CA this system trusts (AMQP_SSL['ca_certs'] is not set)")
    if 'expired' in message or 'not yet valid' in message:
        return (
            "TLS certificate verify failed: the broker's certificate at {} "
            'is not valid now ({}). Renew the certificate of the broker (its '
            'ssl_options.certfile), or check the clock of this '
            'machine.'.format(broker, message))
    return (
        "TLS certificate verify failed: the broker's certificate at {} is "
        'not signed by {} ({}). Set ca_certs to the certificate of the CA '
        "that signed the broker's certificate, or give the broker a "
        'certificate signed by one of those CAs.'.format(
            broker, trusted, message))


def _explain_client_certificate_refused(alert, broker, certfile):
    if alert == 'CERTIFICATE_REQUIRED' or not certfile:
        return (
            'TLS: the broker at {} requires a client certificate ({}), '
            "and none was sent: set AMQP_SSL['certfile'] and "
            "AMQP_SSL['keyfile'] to a certificate signed by a CA the broker "
            'trusts.'.format(broker, alert))
    return (
        "TLS: the broker at {} refused the client certificate AMQP_SSL"
        "['certfile'] ({}) with alert {}: it is not signed by a CA the "
        'broker trusts (its ssl_options.cacertfile), or it has expired or '
        'been revoked. Use a certificate signed by a CA the broker '
        'trusts.'.format(broker, certfile, alert))


def _explain_login_refused(exc, broker, login_method, username, vhost,
                           certfile):
    said = _broker_said(exc)
    if _is_external(login_method):
        if not certfile:
            return (
                'Authentication refused: LOGIN_METHOD is EXTERNAL, which '
                'logs in with the client certificate, and AMQP_SSL has no '
                "certfile ({}): set AMQP_SSL['certfile'] and "
                "AMQP_SSL['keyfile'].".format(said))
        return (
            'Authentication refused: the broker at {} refused the EXTERNAL '
            "login with the client certificate AMQP_SSL['certfile'] ({}) "
            '({}). The broker takes the user name from the certificate (its '
            'common name with ssl_cert_login_from = common_name, else its '
            'distinguished name): a broker user of that name must exist '
            '(rabbitmqctl add_user, then clear_password) with permissions '
            'on vhost {!r}, and the broker needs the '
            'rabbitmq_auth_mechanism_ssl plugin with EXTERNAL in its '
            'auth_mechanisms.'.format(broker, certfile, said, vhost))
    return (
        'Authentication refused: the broker at {} refused the login of user '
        '{!r} ({}). Check the user name and password in AMQP_URI (and, for '
        'the user guest, that the broker allows it from this host: RabbitMQ '
        'accepts guest from localhost only).'.format(broker, username, said))
