"""Small helpers used across threadko (and by extension writers)."""

import inspect
import re
from copy import deepcopy
from pydoc import locate
from urllib.parse import urlparse

REDACTED = '********'


def get_redacted_args(entrypoint, *args, **kwargs):
    """Return the call arguments of ``entrypoint``'s method as a dict (as
    :func:`inspect.getcallargs` gives them, without ``self``), deep-copied,
    with every path in ``entrypoint.sensitive_arguments`` replaced by
    ``"********"``.

    Paths look like ``arg``, ``arg.key``, ``arg.key[2]`` or ``arg[0].key``.
    A path that does not match the arguments is ignored silently, so test
    each entrypoint's redaction to catch typos.
    """
    sensitive_arguments = entrypoint.sensitive_arguments
    if isinstance(sensitive_arguments, str):
        sensitive_arguments = (sensitive_arguments,)

    method = getattr(entrypoint.container.service_cls, entrypoint.method_name)
    callargs = inspect.getcallargs(method, None, *args, **kwargs)
    del callargs['self']
    # copy first so partial redaction never touches the caller's objects
    callargs = deepcopy(callargs)

    def redact(data, keys):
        key = keys[0]
        if len(keys) == 1:
            try:
                data[key]  # a missing key must not be added
                data[key] = REDACTED
            except (KeyError, IndexError, TypeError):
                pass
        else:
            try:
                child = data[key]
            except (KeyError, IndexError, TypeError):
                return
            redact(child, keys[1:])

    for variable in sensitive_arguments:
        keys = []
        for dict_key, list_index in re.findall(r'(\w+)|\[(\d+)\]', variable):
            if dict_key:
                keys.append(dict_key)
            elif list_index:
                keys.append(int(list_index))
        if keys and keys[0] in callargs:
            redact(callargs, keys)

    return callargs


def import_from_path(path):
    """Import and return the object at dotted ``path``; ``None`` gives
    ``None``. Raises :exc:`ImportError` if nothing is found there."""
    if path is None:
        return None
    obj = locate(path)
    if obj is None:
        raise ImportError('`{}` could not be imported'.format(path))
    return obj


# ``scheme://user:password@`` anywhere in a text, for what urlparse misses
# (the second and later URIs of a ``;``-separated failover list, a URL inside
# other text, a password with a raw ``#`` or ``?``) or refuses (e.g. a
# malformed IPv6 host)
_URL_CREDENTIALS = re.compile(
    r'(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s/]*(?=@)')


def sanitize_url(url):
    """Return ``url`` with its password (if any) replaced by ``********``.

    Also redacts every ``scheme://user:password@`` in text that holds
    several URLs (an ``AMQP_URI`` failover list ``uri1;uri2``) or a URL
    within other words. Never raises, so it is safe in error messages.
    """
    try:
        parts = urlparse(url)
        password = parts.password
    except ValueError:  # e.g. 'Invalid IPv6 URL'; the pattern still applies
        password = None
    if password is not None:
        host_info = parts.netloc.rsplit('@', 1)[-1]
        url = parts._replace(netloc='{}:{}@{}'.format(
            parts.username, REDACTED, host_info)).geturl()
    return _URL_CREDENTIALS.sub(r'\g<prefix>' + REDACTED, url)


# keys whose string values are credentials (DB_PASSWORD, api_token,
# SECRET_KEY, ...); numbers and booleans under them (TOKEN_TTL: 30) stay
_SECRET_KEY = re.compile(
    r'pass(word|wd|phrase)|secret|token|credential|api_?key|private_?key',
    re.IGNORECASE)


def redact_secrets(value):
    """Return a copy of ``value`` (any structure of dicts, lists and
    scalars) with credentials replaced by ``********``: the password of
    every URL (also in a ``;``-separated list of URLs), and every non-empty
    string (or list of strings) under a key named like a secret
    (``password``, ``secret``, ``token``, ``credential``, ``api_key``,
    ``private_key``, any case, anywhere in the name), at any depth."""
    if isinstance(value, dict):
        return {
            key: (_redact_all_strings(item)
                  if isinstance(key, str) and _SECRET_KEY.search(key)
                  else redact_secrets(item))
            for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    if isinstance(value, str) and '://' in value:
        return sanitize_url(value)
    return value


def _redact_all_strings(value):
    if isinstance(value, dict):
        return {key: _redact_all_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_all_strings(item) for item in value]
    if isinstance(value, str) and value:
        return REDACTED
    return value
