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
    registered already, or installed, not blocked (``-p no:<name>``;
    the nameko bridge blocks Nameko's) and plugins load automatically."""
    if pluginmanager.is_blocked(name):
        return False
    if pluginmanager.has_plugin(name):
        return True
    if os.environ.get('PYTEST_DISABLE_PLUGIN_AUTOLOAD'):
        return False
    return any(entry.name == name for entry in _pytest_entry_points())


def _pytest_entry_points():
    found = entry_points()
    if hasattr(found, 'select'):  # Python 3.10+
        return found.select(group='pytest11')
    return found.get('pytest11', ())
