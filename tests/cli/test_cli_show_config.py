"""``threadko show-config`` and ``threadko --version`` as a user runs them."""

from importlib.metadata import version

import yaml


def test_show_config_prints_expanded_config_with_defines(threadko, write):
    write('config.yaml', '''
        AMQP_URI: pyamqp://user:${TK_PASSWORD}@rabbit:5672/
        WEB_SERVER_ADDRESS: ${TK_WEB:0.0.0.0:8000}
        max_workers: 10
        nested:
          urls:
            - https://admin:hunter2@example.com/path
          plain: ${TK_PORT}
    ''')

    result = threadko(
        'show-config', '--config', 'config.yaml', '-d', 'max_workers=4',
        '--define', 'DEBUG', env={'TK_PASSWORD': 's3cret', 'TK_PORT': '81'})

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        'AMQP_URI': 'pyamqp://user:********@rabbit:5672/',
        'DEBUG': True,
        'WEB_SERVER_ADDRESS': '0.0.0.0:8000',
        'max_workers': 4,
        'nested': {
            'urls': ['https://admin:********@example.com/path'],
            'plain': 81,
        },
    }
    # block style, not flow style
    assert 'nested:\n  plain: 81\n  urls:\n  - https://' in result.stdout
    assert 's3cret' not in result.stdout + result.stderr
    assert 'hunter2' not in result.stdout + result.stderr


def test_show_config_without_file_shows_the_default_broker(threadko):
    result = threadko('show-config', '-d', 'SERVICE_NAME=x')

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        'AMQP_URI': 'memory://', 'SERVICE_NAME': 'x'}


def test_show_config_warns_about_unset_variables(threadko, write):
    write('config.yaml', 'HOST: ${TK_UNSET_HOST}\n')

    result = threadko('show-config', '-c', 'config.yaml')

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)['HOST'] is None
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Warning: Environment variable 'TK_UNSET_HOST'")


def test_show_config_errors_are_one_line(threadko, write):
    write('bad.yaml', 'A: "unterminated\n')

    result = threadko('show-config', '-c', 'bad.yaml')

    assert result.returncode == 1
    assert result.stdout == ''
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr
    assert lines[0].startswith("Error: Invalid YAML in config file 'bad.yaml'")


def test_version(threadko):
    result = threadko('--version')

    assert result.returncode == 0
    assert result.stdout.strip() == 'threadko, version {}'.format(
        version('threadko'))
