"""Click options shared by the commands that load a config."""

import click


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
