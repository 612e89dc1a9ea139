"""``threadko show-config``: print the configuration ``threadko run`` would
use, with credentials in URLs redacted."""

import re

import click
import yaml

from threadko.cli.options import config_options
from threadko.config_files import build_config_with_warnings
from threadko.utils import REDACTED, sanitize_url

# ``scheme://user:password@`` anywhere in a string, for what urlparse misses
# (a URL inside other text) or refuses (e.g. a malformed IPv6 host)
_URL_CREDENTIALS = re.compile(
    r'(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s/?#]*(?=@)')


def redact_url_passwords(value):
    """Return a copy of ``value`` (any structure of dicts, lists and
    scalars) in which every string that is a URL with a password has the
    password replaced by ``********``."""
    if isinstance(value, dict):
        return {key: redact_url_passwords(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_url_passwords(item) for item in value]
    if isinstance(value, str) and '://' in value:
        try:
            value = sanitize_url(value)
        except ValueError:
            pass
        return _URL_CREDENTIALS.sub(r'\g<prefix>' + REDACTED, value)
    return value


@click.command('show-config')
@config_options
def show_config(config_path, defines):
    """Print the configuration as YAML.

    Shows the result of reading the file (environment variables expanded)
    and applying the --define options, including the default AMQP_URI.
    Passwords in URLs are replaced by ********.
    """
    config, config_warnings = build_config_with_warnings(
        config_path, defines)
    for message in config_warnings:
        click.echo('Warning: {}'.format(message), err=True)
    click.echo(yaml.safe_dump(
        redact_url_passwords(config), default_flow_style=False), nl=False)
