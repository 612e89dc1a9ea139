"""The entry point of threadko's pytest plugin (``-p no:threadko`` turns it
off): it loads :mod:`threadko.testing.pytest`, unless the real Nameko's
plugin has this session, and :mod:`threadko.testing.sqlalchemy_fixtures`,
unless nameko-sqlalchemy's plugin (the same fixtures) has it.

With Nameko and threadko installed side by side (a code base moving one
service at a time), both plugins would define the same options and
fixtures, and pytest would refuse to start. So Nameko's plugin keeps the
session, and an existing Nameko test suite runs as before; a threadko
suite in the same virtualenv selects threadko's with ``-p
no:pytest_nameko`` (Nameko's off), or runs Nameko code on threadko with
``-p threadko.nameko`` (the nameko bridge).
"""

import os
from importlib.metadata import entry_points

#: threadko's plugins, each with the installed plugin (entry point name)
#: that would define the same options and fixtures: the real Nameko's,
#: and nameko-sqlalchemy's
PLUGINS = {
    'threadko.testing.pytest': 'pytest_nameko',
    'threadko.testing.sqlalchemy_fixtures': 'nameko_sqlalchemy',
}


def pytest_addhooks(pluginmanager):
    # runs as this entry point registers, so before any option is added
    for plugin, rival in PLUGINS.items():
        if not takes_the_session(pluginmanager, rival):
            pluginmanager.import_plugin(plugin)


def takes_the_session(pluginmanager, name):
    """Whether the installed plugin ``name`` is (or will be) loaded:
    registered already, named by a ``-p`` option, or installed while
    plugins load automatically; and not blocked (``-p no:<name>``; the
    nameko bridge blocks Nameko's)."""
    if pluginmanager.is_blocked(name):
        return False
    if pluginmanager.has_plugin(name):
        return True
    known = _known_args(pluginmanager)
    if name in [arg.strip() for arg in getattr(known, 'plugins', None) or ()]:
        return True  # ``-p <name>`` later on the command line
    if os.environ.get('PYTEST_DISABLE_PLUGIN_AUTOLOAD') or getattr(
            known, 'disable_plugin_autoload', False):  # pytest 8.4+
        return False
    return any(entry.name == name for entry in _pytest_entry_points())


def _known_args(pluginmanager):
    """The options pytest has parsed before loading any plugin (``-p``,
    ``--disable-plugin-autoload``), or ``None``."""
    config = pluginmanager.get_plugin('pytestconfig')
    return getattr(config, 'known_args_namespace', None)


def _pytest_entry_points():
    found = entry_points()
    if hasattr(found, 'select'):  # Python 3.10+
        return found.select(group='pytest11')
    return found.get('pytest11', ())
