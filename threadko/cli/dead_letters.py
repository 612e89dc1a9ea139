"""``threadko dead-letters``: list, show, replay and purge the messages a
handler with retries gave up on (see :mod:`threadko.dead_letters`)."""

import click

from threadko.cli.options import config_options
from threadko.config_files import build_config_with_warnings
from threadko.config_validation import validate_config
from threadko.dead_letters import DeadLetterQueue, summary

_broker_option = click.option(
    '--broker', metavar='URI',
    help='AMQP broker URI, used only when the config does not set AMQP_URI.')


def _queue(config_path, defines, broker, name):
    config, config_warnings = build_config_with_warnings(
        config_path, defines, broker)
    for message in config_warnings:
        click.echo('Warning: {}'.format(message), err=True)
    validate_config(config)
    return DeadLetterQueue(config, name)


@click.group('dead-letters')
def dead_letters():
    """Inspect and replay dead letters.

    QUEUE is a handler's queue (e.g. evt-orders-placed--billing.charge) or
    its dead-letter queue (the same name with .dead-letters). Each dead
    letter has an id, shown by list.
    """


@dead_letters.command('list')
@config_options
@_broker_option
@click.argument('queue')
def list_(config_path, defines, broker, queue):
    """Count the dead letters of QUEUE and summarise each: id, time of the
    last failure, exception, payload."""
    with _queue(config_path, defines, broker, queue) as dead:
        letters = dead.letters()
        click.echo('{}: {} dead letter(s)'.format(dead.name, len(letters)))
        for letter in letters:
            click.echo(summary(letter))


@dead_letters.command('show')
@config_options
@_broker_option
@click.argument('queue')
@click.argument('letter_id', metavar='ID')
def show(config_path, defines, broker, queue, letter_id):
    """Print one dead letter: its headers, properties and payload."""
    with _queue(config_path, defines, broker, queue) as dead:
        letter = dead.show(letter_id)
    properties = letter.properties
    click.echo('id: {}'.format(letter.id))
    for key, value in sorted((properties.headers or {}).items()):
        click.echo('header {}: {}'.format(key, value))
    for name in ('content_type', 'content_encoding', 'correlation_id',
                 'message_id', 'timestamp'):
        value = getattr(properties, name)
        if value is not None:
            click.echo('{}: {}'.format(name, value))
    click.echo('payload: {}'.format(letter.body.decode('utf-8', 'replace')))


@dead_letters.command('replay')
@config_options
@_broker_option
@click.option('--all', 'replay_all', is_flag=True,
              help='Replay every dead letter of QUEUE.')
@click.argument('queue')
@click.argument('ids', nargs=-1, metavar='[IDS]...')
def replay(config_path, defines, broker, replay_all, queue, ids):
    """Publish dead letters again to their original exchange and routing
    key (confirmed), then remove them; they start again at attempt 1."""
    if bool(ids) == replay_all:
        raise click.UsageError('give the ids of the letters, or --all')
    with _queue(config_path, defines, broker, queue) as dead:
        replayed = dead.replay(None if replay_all else set(ids))
    click.echo('replayed {} dead letter(s)'.format(len(replayed)))


@dead_letters.command('purge')
@config_options
@_broker_option
@click.argument('queue')
def purge(config_path, defines, broker, queue):
    """Delete every dead letter of QUEUE."""
    with _queue(config_path, defines, broker, queue) as dead:
        count = dead.purge()
    click.echo('purged {} dead letter(s) from {}'.format(count, dead.name))
