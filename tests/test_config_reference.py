"""docs/configuration.rst documents every config key threadko reads, and
only those: the keys are found in threadko's source, so a key added to the
code without its entry in the reference fails here."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'threadko'
REFERENCE = ROOT / 'docs' / 'configuration.rst'

# a definition-list term of the reference: a key alone on its line
TERM = re.compile(r'^``([A-Za-z_][A-Za-z0-9_]*)``\s*$', re.MULTILINE)
KEY_CONSTANT = re.compile(r'_CONFIG_KEY$')
MAPPING_READS = ('get', 'setdefault', 'pop')


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        yield path, ast.parse(path.read_text(encoding='utf-8'), str(path))


def _key_constants():
    """``{NAME: key}`` of every ``*_CONFIG_KEY = '...'`` in threadko."""
    constants = {}
    for _, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign):
                continue
            if not (isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                continue
            for target in node.targets:
                if (isinstance(target, ast.Name)
                        and KEY_CONSTANT.search(target.id)):
                    constants[target.id] = node.value.value
    return constants


def _is_config(node):
    """``config``, ``self.config``, ``self.container.config``,
    ``web_config``, ... : an expression naming a configuration."""
    return ast.unparse(node).lower().endswith('config')


def _key_of(node, constants):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    name = getattr(node, 'id', None) or getattr(node, 'attr', None)
    return constants.get(name)


def keys_read_by_threadko():
    """Every key threadko reads from a configuration: the ``*_CONFIG_KEY``
    constants, and the keys (literal or constant) of each
    ``<config>.get(...)``, ``<config>.setdefault(...)``,
    ``<config>.pop(...)`` and ``<config>[...]`` read in the code
    (docstrings are not code, so their examples do not count)."""
    constants = _key_constants()
    keys = set(constants.values())
    for _, tree in _modules():
        for node in ast.walk(tree):
            key_node = None
            if (isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in MAPPING_READS
                    and _is_config(node.func.value) and node.args):
                key_node = node.args[0]
            elif (isinstance(node, ast.Subscript)
                    and isinstance(node.ctx, ast.Load)
                    and _is_config(node.value)):
                key_node = node.slice
            if key_node is not None:
                key = _key_of(key_node, constants)
                if key is not None:
                    keys.add(key)
    return keys


def documented_keys():
    return set(TERM.findall(REFERENCE.read_text(encoding='utf-8')))


def test_the_source_scan_finds_the_keys_threadko_is_known_to_read():
    keys = keys_read_by_threadko()

    # a sample from every corner of the code, so a scan that silently
    # finds nothing cannot pass the test below
    assert {
        'AMQP_URI', 'HEARTBEAT', 'serializer', 'max_workers',
        'THREAD_JOIN_TIMEOUT', 'WEB_SERVER_STOP_TIMEOUT',
        'SHUTDOWN_GRACE_PERIOD', 'LOGGING', 'DECLARE_EVENT_EXCHANGES',
    } <= keys
    assert 'FOO' not in keys  # from a docstring's example


def test_every_key_threadko_reads_is_in_the_configuration_reference():
    missing = keys_read_by_threadko() - documented_keys()

    assert not missing, (
        'config keys read by threadko but not documented in '
        'docs/configuration.rst (add a ``KEY`` entry with its default): '
        '{}'.format(', '.join(sorted(missing))))


def test_the_configuration_reference_documents_no_key_threadko_ignores():
    stale = documented_keys() - keys_read_by_threadko()

    assert not stale, (
        'docs/configuration.rst documents keys threadko no longer reads: '
        '{}'.format(', '.join(sorted(stale))))
