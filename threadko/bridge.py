"""Running Nameko code unchanged: after :func:`install_as_nameko`, every
``import nameko...`` in the process gives the matching threadko module.

``nameko.rpc`` *is* ``threadko.rpc`` then (the same module object), so
classes and ``isinstance`` checks agree whichever name imported them, and
the community extensions that import ``nameko`` (nameko-sqlalchemy,
nameko-redis, ...) run on threadko. The real Nameko (and eventlet with it)
is never imported, whether it is installed or not.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__all__ = ['install_as_nameko', 'is_installed', 'MISSING']

PREFIX = 'nameko'

#: Nameko modules threadko has no counterpart of (or, for
#: ``nameko.amqp.publish``, none of the same shape), and what to do instead
MISSING = {
    'nameko.cli.backdoor': (
        'threadko has no backdoor (a remote shell into a running process): '
        'use `threadko shell` to call services, and a debugger or py-spy '
        'to look inside a process'),
    'nameko.amqp.publish': (
        "Nameko's kombu-based Publisher, get_connection and get_producer "
        'have no threadko equivalent of the same shape: publish with '
        'threadko.messaging.Publisher (a dependency), or from a script '
        'with threadko.amqp.publish.Publisher over a ProducerPool; '
        'UndeliverableMessage is importable from nameko.amqp'),
    'nameko.utils.retry': (
        'threadko has no retry decorator: use tenacity, or a loop'),
}


class _AliasLoader(importlib.abc.Loader):
    """Gives the already imported threadko module for a ``nameko`` name."""

    def __init__(self, target):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just set the alias's spec on the module:
        # give it back its own, so that it stays threadko's
        module.__spec__ = self._spec


class _NamekoFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: answers every ``nameko`` and
    ``nameko.*`` import with threadko's module of the same path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith('threadko.'):
            return self._fromlist_of_missing(fullname, path)
        if fullname != PREFIX and not fullname.startswith(PREFIX + '.'):
            return None
        advice = MISSING.get(fullname)
        if advice is not None:
            raise _missing(fullname, advice)
        target_name = 'threadko' + fullname[len(PREFIX):]
        try:
            found = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise ModuleNotFoundError(
                'No module named {!r} under the nameko bridge: threadko has '
                'no {} to stand in for it. Rewrite that import (see the '
                'migration guide), or report the missing module'.format(
                    fullname, target_name), name=fullname)
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(target_name),
            is_package=found.submodule_search_locations is not None)

    @staticmethod
    def _fromlist_of_missing(fullname, path):
        # ``from nameko.web import websocket`` imports the submodule by the
        # package's own name (``threadko.web.websocket``), and the import
        # system turns a ModuleNotFoundError of that name into a bare
        # "cannot import name": answer it with the advice, under the name
        # that was written (which the import system lets through)
        nameko_name = PREFIX + fullname[len('threadko'):]
        advice = MISSING.get(nameko_name)
        if advice is None or importlib.machinery.PathFinder.find_spec(
                fullname, path) is not None:
            return None
        raise _missing(nameko_name, advice)


def _missing(name, advice):
    return ModuleNotFoundError(
        'No module named {!r} under the nameko bridge: {}'.format(
            name, advice), name=name)


_finder = _NamekoFinder()


def is_installed():
    """Whether :func:`install_as_nameko` has run in this process."""
    return _finder in sys.meta_path


def install_as_nameko():
    """Make ``import nameko...`` give threadko's modules, for the rest of
    the process (as PyMySQL's ``install_as_MySQLdb()`` does for MySQLdb).

    Call it before anything imports ``nameko``; calling it again does
    nothing. A Nameko module threadko does not have raises an
    :exc:`ImportError` that names it and says what to do instead
    (:data:`MISSING`).

    :raises RuntimeError: the real Nameko is imported already
    """
    if is_installed():
        return
    loaded = sys.modules.get(PREFIX)
    if loaded is not None and loaded is not sys.modules.get('threadko'):
        raise RuntimeError(
            'The real Nameko is imported already ({}): call '
            'threadko.install_as_nameko() before anything imports nameko '
            '(first thing in your entry point or conftest.py, or use '
            '`threadko run --nameko-bridge` / `pytest -p threadko.nameko`)'
            .format(getattr(loaded, '__file__', loaded)))
    sys.meta_path.insert(0, _finder)
