"""``threadko show-config``: print the configuration ``threadko run`` would
use, with credentials redacted: passwords in URLs, and the string values
of keys named like secrets."""

import re

import click
import yaml

from threadko.cli.options import config_options
from threadko.config_files import build_config_with_warnings
from threadko.utils import REDACTED, sanitize_url

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


@click.command('show-config')
@config_options
def show_config(config_path, defines):
    """Print the configuration as YAML.

    Shows the result of reading the file (environment variables expanded)
    and applying the --define options, including the default AMQP_URI.
    Passwords in URLs, and the text values of keys named like secrets
    (password, secret, token, credential, api_key, private_key), are
    replaced by ********.
    """
    config, config_warnings = build_config_with_warnings(
        config_path, defines)
    for message in config_warnings:
        click.echo('Warning: {}'.format(message), err=True)
    click.echo(yaml.safe_dump(
        redact_secrets(config), default_flow_style=False), nl=False)
