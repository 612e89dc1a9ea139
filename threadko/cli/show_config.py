"""``threadko show-config``: print the configuration ``threadko run`` would
use, with credentials redacted: passwords in URLs, and the string values
of keys named like secrets."""

import click
import yaml

from threadko.amqp.connection import SSL_PASSWORD_KEY
from threadko.cli.options import config_options
from threadko.config_files import build_config_with_warnings
from threadko.constants import AMQP_SSL_CONFIG_KEY
from threadko.utils import REDACTED, redact_secrets


def redact_config(config):
    """``config`` as show-config prints it: :func:`redact_secrets`, and
    the key password of ``AMQP_SSL`` redacted whatever its type (YAML
    reads ``password: 123456`` as a number, which redact_secrets keeps)."""
    shown = redact_secrets(config)
    ssl_option = shown.get(AMQP_SSL_CONFIG_KEY)
    if isinstance(ssl_option, dict) and ssl_option.get(
            SSL_PASSWORD_KEY) not in (None, ''):
        shown[AMQP_SSL_CONFIG_KEY] = dict(
            ssl_option, **{SSL_PASSWORD_KEY: REDACTED})
    return shown


@click.command('show-config')
@config_options
def show_config(config_path, defines):
    """Print the configuration as YAML.

    Shows the result of reading the file (environment variables expanded)
    and applying the --define options, including the default AMQP_URI.
    Passwords in URLs, and the text values of keys named like secrets
    (password, secret, token, credential, api_key, private_key), are
    replaced by ********, as is AMQP_SSL's key password of any type.
    """
    config, config_warnings = build_config_with_warnings(
        config_path, defines)
    for message in config_warnings:
        click.echo('Warning: {}'.format(message), err=True)
    click.echo(yaml.safe_dump(
        redact_config(config), default_flow_style=False), nl=False)
