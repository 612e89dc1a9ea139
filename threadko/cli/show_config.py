"""``threadko show-config``: print the configuration ``threadko run`` would
use, with credentials redacted: passwords in URLs, and the string values
of keys named like secrets."""

import click
import yaml

from threadko.cli.options import config_options
from threadko.config_files import build_config_with_warnings
from threadko.utils import redact_secrets

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
