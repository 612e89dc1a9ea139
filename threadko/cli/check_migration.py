"""``threadko check-migration PATH``: list what Nameko code needs changed to
run on threads (see :mod:`threadko.migration_check`)."""

import os

import click

from threadko.migration_check import check_tree


@click.command('check-migration')
@click.argument('paths', nargs=-1, required=True, metavar='PATH...',
                type=click.Path(exists=True))
def check_migration(paths):
    """List each use of eventlet (sleep, spawn, GreenPool, Timeout, Event,
    monkey_patch, ...) in the Python files under PATH, with its thread
    equivalent, and each dependency provider that keeps per-worker state on
    itself (self.<attr> = ... in a worker hook), a race once workers run at
    once.

    Exit status 0 when there is nothing to change, 1 when there is (so it
    can gate CI).
    """
    findings = [finding for path in paths for finding in check_tree(path)]
    for finding in findings:
        click.echo('{}:{}:{}: {} {}'.format(
            os.path.relpath(finding.path), finding.line, finding.column,
            finding.code, finding.message))
    files = len({finding.path for finding in findings})
    if findings:
        click.echo('{} place(s) to change in {} file(s)'.format(
            len(findings), files), err=True)
    else:
        click.echo('nothing to change', err=True)
    raise SystemExit(1 if findings else 0)
