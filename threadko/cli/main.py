"""The ``threadko`` command group (console script ``threadko`` and
``python -m threadko``).

Commands raise :class:`~threadko.exceptions.CommandError` or
:class:`~threadko.exceptions.ConfigurationError` for problems the user can
fix; the group turns them into a one-line ``Error: <message>`` on stderr
and exit status 1, without a traceback.
"""

import click

import threadko
from threadko.cli.check_migration import check_migration
from threadko.cli.dead_letters import dead_letters
from threadko.cli.run import run
from threadko.cli.shell import shell
from threadko.cli.show_config import show_config
from threadko.exceptions import CommandError, ConfigurationError


class ThreadkoGroup(click.Group):
    """A click group that reports threadko's user-facing errors cleanly."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (CommandError, ConfigurationError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=ThreadkoGroup)
@click.version_option(threadko.__version__, prog_name='threadko')
def main():
    """threadko: Nameko-style microservices on plain OS threads."""


main.add_command(run)
main.add_command(show_config)
main.add_command(shell)
main.add_command(check_migration)
main.add_command(dead_letters)

