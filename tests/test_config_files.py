"""YAML config files with ${VAR:default} placeholders, --define parsing and
the CLI's config assembly (contract §5.3)."""

import io
import logging
import warnings

import pytest
import yaml

from threadko.config_files import (
    build_config, build_config_with_warnings, expand_env_vars, load_config,
    parse_define, setup_logging,
)
from threadko.constants import AMQP_URI_CONFIG_KEY, DEFAULT_AMQP_URI
from threadko.exceptions import ConfigurationError


def load(text):
    return load_config(io.StringIO(text))


@pytest.fixture
def env(monkeypatch):
    """Set environment variables for one test; ``None`` unsets one."""
    def set_env(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
    return set_env


@pytest.fixture
def no_warnings():
    """Fail the test if any warning is raised."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        yield


# -- syntax ----------------------------------------------------------------

def test_placeholder_is_replaced_by_the_variable(env):
    env(TK_HOST='rabbit.local')
    assert load('HOST: ${TK_HOST}') == {'HOST': 'rabbit.local'}


def test_placeholder_with_default_uses_the_variable_when_set(env):
    env(TK_HOST='rabbit.local')
    assert load('HOST: ${TK_HOST:localhost}') == {'HOST': 'rabbit.local'}


def test_several_placeholders_in_one_value(env):
    env(TK_USER='guest', TK_HOST='rabbit', TK_PORT=None)
    config = load('URI: amqp://${TK_USER}@${TK_HOST}:${TK_PORT:5672}/')
    assert config == {'URI': 'amqp://guest@rabbit:5672/'}


def test_placeholders_in_nested_structures(env):
    env(TK_A='1', TK_B='two')
    config = load('outer:\n  inner: ${TK_A}\n  items:\n    - ${TK_B}\n')
    assert config == {'outer': {'inner': 1, 'items': ['two']}}


def test_name_cannot_contain_spaces_so_text_stays_literal(no_warnings):
    assert load('X: ${TK BAD}') == {'X': '${TK BAD}'}


def test_unclosed_placeholder_stays_literal(no_warnings):
    assert load('X: ${TK_OPEN:{a}') == {'X': '${TK_OPEN:{a}'}


# -- lookup ----------------------------------------------------------------

def test_variable_set_to_empty_string_is_used_not_the_default(
        env, no_warnings):
    env(TK_EMPTY='')
    # the empty result is read again as YAML: null
    assert load('X: ${TK_EMPTY:fallback}') == {'X': None}
    assert load('X: a${TK_EMPTY:fallback}b') == {'X': 'ab'}


def test_unset_variable_uses_the_default(env, no_warnings):
    env(TK_UNSET=None)
    assert load('X: ${TK_UNSET:fallback}') == {'X': 'fallback'}


def test_unset_variable_without_default_is_null_and_warns(env):
    env(TK_UNSET=None)
    with pytest.warns(UserWarning, match=r"'TK_UNSET' is not set"):
        assert load('X: ${TK_UNSET}') == {'X': None}


def test_unset_variable_inside_text_becomes_empty_and_warns(env):
    env(TK_UNSET=None)
    with pytest.warns(UserWarning, match='TK_UNSET'):
        assert load('X: http://${TK_UNSET}/path') == {'X': 'http:///path'}


def test_warning_names_the_file_position(env, tmp_path):
    env(TK_UNSET=None)
    path = tmp_path / 'config.yaml'
    path.write_text('A: 1\nX: ${TK_UNSET}\n')
    with pytest.warns(UserWarning, match=r'config\.yaml, line 2'):
        load_config(path)


def test_variable_value_is_used_verbatim_not_expanded_again(env):
    env(TK_OUTER='${TK_INNER}', TK_INNER='expanded')
    assert load('X: ${TK_OUTER}') == {'X': '${TK_INNER}'}


# -- nesting ---------------------------------------------------------------

def test_default_may_contain_balanced_braces(env, no_warnings):
    env(TK_URL=None)
    config = load('URL: ${TK_URL:https://x/{path}}')
    assert config == {'URL': 'https://x/{path}'}


def test_default_may_contain_a_placeholder(env, no_warnings):
    env(TK_A=None, TK_B=None)
    assert load('X: ${TK_A:pre_${TK_B:1}}') == {'X': 'pre_1'}
    env(TK_B='b')
    assert load('X: ${TK_A:pre_${TK_B:1}}') == {'X': 'pre_b'}
    env(TK_A='a')
    assert load('X: ${TK_A:pre_${TK_B:1}}') == {'X': 'a'}


def test_nesting_several_levels_deep(env, no_warnings):
    env(TK_A=None, TK_B=None, TK_C=None)
    assert load('X: ${TK_A:${TK_B:${TK_C:x{deep}}}}') == {'X': 'x{deep}'}
    # the result is read as YAML: braces alone make a flow mapping
    assert load('X: ${TK_A:${TK_B:${TK_C:{deep}}}}') == {'X': {'deep': None}}


def test_text_after_a_nested_placeholder_is_kept(env, no_warnings):
    env(TK_A=None, TK_B='b')
    assert load('X: <${TK_A:[${TK_B}]}>') == {'X': '<[b]>'}


# -- typing ----------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('${TK_UNSET:8000}', 8000),
    ('${TK_UNSET:1.5}', 1.5),
    ('${TK_UNSET:True}', True),
    ('${TK_UNSET:false}', False),
    ('${TK_UNSET:[1,2]}', [1, 2]),
    ('${TK_UNSET:{a: 1, b: [2]}}', {'a': 1, 'b': [2]}),
    ('${TK_UNSET:"1"}', '1'),
    ('${TK_UNSET:null}', None),
])
def test_result_is_read_again_as_yaml(env, no_warnings, text, expected):
    env(TK_UNSET=None)
    # quoted with the explicit tag, so YAML accepts ': ' inside the value
    assert load('X: !env_var "{}"'.format(
        text.replace('"', '\\"'))) == {'X': expected}
    if ': ' not in text:
        assert load('X: {}'.format(text)) == {'X': expected}


def test_value_from_environment_is_typed_too(env):
    env(TK_PORT='5672', TK_LIST='[a, b]')
    assert load('P: ${TK_PORT}\nL: ${TK_LIST}') == {'P': 5672, 'L': ['a', 'b']}


def test_explicit_tag_on_quoted_text_keeps_inner_quotes_as_a_string(env):
    env(TK_NUM='123')
    assert load('X: !env_var "\'${TK_NUM}\'"') == {'X': '123'}


def test_explicit_tag_expands_a_quoted_scalar(env):
    env(TK_NUM='123')
    assert load('X: !env_var "${TK_NUM}"') == {'X': 123}


def test_result_that_is_not_yaml_is_a_configuration_error(env):
    env(TK_BAD='[unclosed')
    with pytest.raises(ConfigurationError) as exc_info:
        load('X: ${TK_BAD}')
    message = str(exc_info.value)
    assert 'line 1' in message and '!raw_env_var' in message
    assert '[unclosed' not in message  # values may be secrets


# -- raw -------------------------------------------------------------------

def test_raw_tag_keeps_the_result_a_string(env, no_warnings):
    env(TK_UNSET=None)
    config = load('X: !raw_env_var "${TK_UNSET:1234.5660}"')
    assert config == {'X': '1234.5660'}


def test_raw_tag_with_variable_from_environment(env):
    env(TK_PASS='[not: yaml')
    assert load('X: !raw_env_var ${TK_PASS}') == {'X': '[not: yaml'}


# -- no change ---------------------------------------------------------------

def test_dollar_without_braces_is_left_alone(no_warnings):
    assert load('X: $bar') == {'X': '$bar'}


def test_value_unchanged_by_substitution_is_returned_as_is(env):
    env(TK_SELF='${TK_SELF}')
    assert load('X: ${TK_SELF}') == {'X': '${TK_SELF}'}


def test_explicit_tag_without_placeholder_stays_a_string(no_warnings):
    assert load('X: !env_var "123"') == {'X': '123'}


# -- quoted ------------------------------------------------------------------

@pytest.mark.parametrize('text', ['"${TK_HOST}"', "'${TK_HOST}'"])
def test_quoted_scalar_without_tag_is_literal(env, text):
    env(TK_HOST='rabbit')
    assert load('X: {}'.format(text)) == {'X': '${TK_HOST}'}


# -- the loader is private ---------------------------------------------------

def test_global_safe_loader_is_not_changed(env):
    env(TK_HOST='rabbit')
    load('X: ${TK_HOST}')
    assert yaml.safe_load('X: ${TK_HOST}') == {'X': '${TK_HOST}'}


def test_expand_env_vars_reports_missing_names():
    missing = []
    result = expand_env_vars(
        'a${ONE}b${TWO:2}c${THREE}', environ={}, on_missing=missing.append)
    assert result == 'ab2c'
    assert missing == ['ONE', 'THREE']


# -- files and errors --------------------------------------------------------

def test_load_from_path(tmp_path, env):
    env(TK_HOST='rabbit')
    path = tmp_path / 'config.yaml'
    path.write_text('AMQP_URI: amqp://${TK_HOST}\nmax_workers: 3\n')
    assert load_config(path) == {'AMQP_URI': 'amqp://rabbit', 'max_workers': 3}
    assert load_config(str(path)) == load_config(path)


def test_empty_file_is_an_empty_config(tmp_path):
    path = tmp_path / 'config.yaml'
    path.write_text('# nothing yet\n')
    assert load_config(path) == {}


def test_missing_file_is_a_configuration_error(tmp_path):
    path = tmp_path / 'missing.yaml'
    with pytest.raises(ConfigurationError, match='Cannot read config file') \
            as exc_info:
        load_config(path)
    message = str(exc_info.value)
    assert 'missing.yaml' in message and 'No such file' in message
    assert '\n' not in message


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('A: 1\nB: [1, 2\nC: 3\n')
    with pytest.raises(ConfigurationError) as exc_info:
        load_config(path)
    message = str(exc_info.value)
    assert message.startswith('Invalid YAML in config file')
    assert 'bad.yaml' in message and 'line 3, column 2' in message
    assert '\n' not in message


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigurationError, match='mapping.*not a list'):
        load('- a\n- b\n')


def test_explicit_tag_on_a_list_is_an_error():
    with pytest.raises(ConfigurationError, match='line 1'):
        load('X: !env_var [a]')


# -- --define ----------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('max_workers=3', ('max_workers', 3)),
    ('NAME=hello', ('NAME', 'hello')),
    ('LIST=[1, 2]', ('LIST', [1, 2])),
    ('MAP={a: b}', ('MAP', {'a': 'b'})),
    ('EMPTY=', ('EMPTY', None)),
    ('QUOTED="3"', ('QUOTED', '3')),
    ('URI=amqp://h/?a=b', ('URI', 'amqp://h/?a=b')),
    ('FLAG', ('FLAG', True)),
    (' SPACED = 1', ('SPACED', 1)),
    ('a.b=1', ('a.b', 1)),
])
def test_parse_define(text, expected):
    assert parse_define(text) == expected


def test_define_value_expands_placeholders(env):
    env(TK_HOST='rabbit')
    assert parse_define('URI=amqp://${TK_HOST}') == ('URI', 'amqp://rabbit')


@pytest.mark.parametrize('text', ['', '=x', ' =x', '  '])
def test_define_without_key_is_an_error(text):
    with pytest.raises(ConfigurationError, match='expected KEY=VALUE'):
        parse_define(text)


def test_define_with_invalid_yaml_value_is_an_error():
    with pytest.raises(ConfigurationError, match='not valid YAML'):
        parse_define('X=[1')


# -- build_config ------------------------------------------------------------

@pytest.fixture
def config_file(tmp_path):
    def write(text):
        path = tmp_path / 'config.yaml'
        path.write_text(text)
        return str(path)
    return write


def test_defines_override_the_file(config_file):
    path = config_file('A: 1\nB: 2\n')
    config = build_config(path, ['B=3', 'C'])
    assert config['A'] == 1 and config['B'] == 3 and config['C'] is True


def test_broker_is_ignored_when_the_file_sets_amqp_uri(config_file):
    path = config_file('AMQP_URI: amqp://from-file\n')
    config = build_config(path, broker='amqp://from-option')
    assert config[AMQP_URI_CONFIG_KEY] == 'amqp://from-file'


def test_broker_is_ignored_when_a_define_sets_amqp_uri():
    config = build_config(None, ['AMQP_URI=amqp://defined'], 'amqp://option')
    assert config[AMQP_URI_CONFIG_KEY] == 'amqp://defined'


def test_broker_is_used_when_amqp_uri_is_unset(config_file):
    path = config_file('A: 1\n')
    config = build_config(path, broker='amqp://from-option')
    assert config == {'A': 1, AMQP_URI_CONFIG_KEY: 'amqp://from-option'}


def test_default_broker_is_the_in_process_one():
    assert build_config() == {AMQP_URI_CONFIG_KEY: DEFAULT_AMQP_URI}
    assert DEFAULT_AMQP_URI == 'memory://'


def test_build_config_with_warnings_returns_them(config_file, env):
    env(TK_UNSET=None)
    path = config_file('X: ${TK_UNSET}\n')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # returned, not issued
        config, messages = build_config_with_warnings(path)
    assert config['X'] is None
    assert len(messages) == 1 and 'TK_UNSET' in messages[0]


# -- logging -----------------------------------------------------------------

def test_invalid_logging_section_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match='Invalid LOGGING'):
        setup_logging({'LOGGING': {'version': 99}})


def test_logging_section_is_applied():
    name = 'threadko-test-config-files'
    logger = logging.getLogger(name)
    before = logger.level
    try:
        setup_logging({'LOGGING': {
            'version': 1, 'incremental': True,
            'loggers': {name: {'level': 'DEBUG'}},
        }})
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)
