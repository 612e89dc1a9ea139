"""``pytest -p threadko.nameko``: a Nameko project's test suite, unchanged,
on threadko.

Loading this plugin installs the nameko bridge
(:func:`threadko.install_as_nameko`) before pytest imports any conftest or
test module, so their ``import nameko...`` give threadko's modules, and
keeps the real Nameko's own plugin (``pytest_nameko``, if Nameko is
installed too) out of the session: threadko's plugin provides the same
fixtures (``container_factory``, ``rabbit_config``, ``web_session``, ...)
and options (``--amqp-uri``, ``--rabbit-api-uri``).

Put it in the project's ``pytest.ini`` to make it the default::

    [pytest]
    addopts = -p threadko.nameko
"""

from threadko.bridge import install_as_nameko

from threadko.testing.plugin import PLUGINS

#: threadko's fixtures and options, Nameko's under the same names
FIXTURES_PLUGIN = 'threadko.testing.pytest'
#: the name of the real Nameko's pytest plugin (its entry point)
NAMEKO_PLUGIN = PLUGINS[FIXTURES_PLUGIN]

install_as_nameko()


def pytest_addhooks(pluginmanager):
    # runs as this plugin registers (``-p`` plugins register before the
    # installed ones load): the real plugin would import nameko's testing
    # module, which the bridge answers with threadko's, registered already
    pluginmanager.set_blocked(NAMEKO_PLUGIN)
    # threadko's fixtures, also when plugins do not load by themselves
    # (PYTEST_DISABLE_PLUGIN_AUTOLOAD, --disable-plugin-autoload); threadko's
    # entry point, if it loads, finds them registered already
    pluginmanager.import_plugin(FIXTURES_PLUGIN)
