"""Click options shared by the commands that load a config, and the set-up
shared by the commands that then import and talk to services."""

import logging
import os
import sys

import click

from threadko.config_files import build_config_with_warnings, setup_logging
from threadko.config_validation import validate_config
from threadko.configuration import config as global_config

_log = logging.getLogger('threadko.cli')


def config_options(command):
    """Add ``-c/--config FILE`` and repeatable ``-d/--define KEY=VALUE``
    (passed as ``config_path`` and ``defines``) to a click command."""
    command = click.option(
        '-d', '--define', 'defines', multiple=True, metavar='KEY=VALUE',
        help='Set a config value (VALUE is read as YAML); overrides '
             'the file. KEY alone means True. Repeatable.')(command)
    command = click.option(
        '-c', '--config', 'config_path', metavar='FILE',
        help='YAML config file.')(command)
    return command


def nameko_bridge_option(command):
    """Add ``--nameko-bridge`` (passed as ``nameko_bridge``): code that
    imports ``nameko`` gets threadko's modules (see
    :func:`threadko.install_as_nameko`)."""
    return click.option(
        '--nameko-bridge', 'nameko_bridge', is_flag=True,
        help='Let code that imports nameko (services written for Nameko, '
             'community extensions) run unchanged: every `import nameko...` '
             'gives the matching threadko module.')(command)


def install_nameko_bridge(wanted):
    """Install the nameko bridge if ``wanted`` (before anything imports
    the user's code)."""
    if wanted:
        from threadko.bridge import install_as_nameko
        install_as_nameko()


def load_config_for_services(config_path, defines, broker):
    """Load the config (file, ``--define``s, ``broker`` as the default
    ``AMQP_URI``), make it the global :data:`threadko.config`, put the
    current directory on ``sys.path`` so service modules are found there,
    apply its ``LOGGING``, and log what the config loader warned about.

    :returns: the config dict
    """
    config, config_warnings = build_config_with_warnings(
        config_path, defines, broker)
    global_config.setup(config)
    _prepend_cwd_to_sys_path()
    setup_logging(config)
    for message in config_warnings:
        _log.warning('%s', message)
    validate_config(config)
    return config


def _prepend_cwd_to_sys_path():
    cwd = os.getcwd()
    if not any(entry in ('', '.', cwd) for entry in sys.path):
        sys.path.insert(0, cwd)
