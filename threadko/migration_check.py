"""Finding what a Nameko code base needs changed to run on threads.

:func:`check_tree` parses every Python file under a path (with :mod:`ast`:
strings and comments never match) and reports

- every use of eventlet (``eventlet.sleep``, ``spawn``, ``GreenPool``,
  ``Timeout``, ``Event``, ``monkey_patch``, ...), with its thread
  equivalent: under threadko nothing is monkey-patched, so greenthread
  primitives either block a real thread for nothing or do not exist;
- every dependency provider that keeps per-worker state on itself
  (``self.<attr> = ...`` in ``get_dependency``, ``worker_setup``,
  ``worker_result`` or ``worker_teardown``): one provider instance serves
  every worker of the container, and under threadko they run at once.

``threadko check-migration PATH`` prints them (:mod:`threadko.cli`).
"""

import ast
import os
from collections import namedtuple

DOCS = 'docs/migrating.rst'

Finding = namedtuple('Finding', 'path line column code message')
Finding.__doc__ = """One place to change: ``code`` names the kind (``TK1xx``
eventlet, ``TK2xx`` shared state), ``message`` what to use instead."""

#: eventlet names -> (code, what to use with threads); a name is looked up
#: as written (``eventlet.sleep``, ``greenthread.spawn``) after resolving
#: import aliases to ``eventlet...``
EVENTLET = {
    'eventlet.monkey_patch': (
        'TK101', 'remove it: threadko needs no monkey-patching, and the '
        'standard library then behaves as documented'),
    'eventlet.sleep': (
        'TK102', 'time.sleep() (it blocks only this worker\'s thread); to '
        'wait for something, threading.Event().wait(timeout)'),
    'eventlet.spawn': (
        'TK103', 'a worker of the container (call another entrypoint), '
        'concurrent.futures.ThreadPoolExecutor().submit(), or a managed '
        'thread of an extension (container.spawn_managed_thread)'),
    'eventlet.spawn_n': (
        'TK103', 'concurrent.futures.ThreadPoolExecutor().submit(), or '
        'container.spawn_managed_thread in an extension'),
    'eventlet.spawn_after': (
        'TK103', 'threading.Timer, or a @timer entrypoint'),
    'eventlet.GreenPool': (
        'TK104', 'concurrent.futures.ThreadPoolExecutor(max_workers=...)'),
    'eventlet.GreenPile': (
        'TK104', 'concurrent.futures.ThreadPoolExecutor and its futures'),
    'eventlet.Timeout': (
        'TK105', 'the timeout argument of the blocking call itself '
        '(RPC client timeout=, socket timeouts, Event.wait(timeout)); '
        'threads cannot be interrupted from outside'),
    'eventlet.Event': (
        'TK106', 'threading.Event, or concurrent.futures.Future for a '
        'value (send() -> set_result(), wait() -> result())'),
    'eventlet.Queue': (
        'TK107', 'queue.Queue'),
    'eventlet.queue': (
        'TK107', 'queue (queue.Queue, queue.LifoQueue, ...)'),
    'eventlet.semaphore': (
        'TK108', 'threading.Semaphore / threading.BoundedSemaphore'),
    'eventlet.lock': (
        'TK108', 'threading.Lock'),
    'eventlet.tpool': (
        'TK109', 'call the function directly: every worker is a thread '
        'already'),
    'eventlet.green': (
        'TK110', 'the standard library module of the same name'),
    'eventlet.patcher': (
        'TK101', 'remove it: nothing is patched under threadko'),
    'eventlet.backdoor': (
        'TK111', 'threadko has no backdoor: threadko shell, a debugger or '
        'py-spy'),
    'eventlet.wsgi': (
        'TK112', 'threadko.web.wsgi (ServiceApp) under any WSGI server'),
    'eventlet.websocket': (
        'TK112', 'a threaded websocket library'),
    'eventlet.listen': (
        'TK112', 'socket.create_server()'),
    'eventlet.greenthread': (
        'TK103', 'threading and concurrent.futures'),
    'eventlet.event': (
        'TK106', 'threading.Event, or concurrent.futures.Future'),
    'eventlet.greenpool': (
        'TK104', 'concurrent.futures.ThreadPoolExecutor'),
    'eventlet': (
        'TK100', 'eventlet is not needed (nor installed) under threadko: '
        'see the other findings for each use'),
}

#: the worker hooks of a dependency provider, which run on the workers'
#: threads, several at once
WORKER_HOOKS = ('get_dependency', 'worker_setup', 'worker_result',
                'worker_teardown')
SHARED_STATE = (
    'TK201', 'self.{attr} is set in {hook}(): one provider serves every '
    'worker, and under threadko they run at once, so workers overwrite '
    "each other's {attr}. Keep per-worker state in the object "
    'get_dependency returns, or in a dict keyed by worker_ctx')


def check_tree(path):
    """Every :class:`Finding` in the Python files under ``path`` (a file
    or a directory), in path and line order. Files that do not parse give
    a ``TK000`` finding."""
    findings = []
    for filename in _python_files(path):
        findings.extend(check_file(filename))
    return findings


def check_file(filename):
    """The :class:`Finding` list of one Python file."""
    with open(filename, 'rb') as source:
        text = source.read()
    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError) as exc:
        return [Finding(filename, getattr(exc, 'lineno', 0) or 0, 0,
                        'TK000', 'cannot parse it: {}'.format(exc))]
    checker = _Checker(filename)
    checker.visit(tree)
    return sorted(checker.findings, key=lambda f: (f.line, f.column))


def _python_files(path):
    if os.path.isfile(path):
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith('.') and d != '__pycache__')
        for name in sorted(files):
            if name.endswith('.py'):
                yield os.path.join(root, name)


class _Checker(ast.NodeVisitor):

    def __init__(self, filename):
        self.filename = filename
        self.findings = []
        self.aliases = {}  # local name -> 'eventlet...' dotted name

    def report(self, node, code, message):
        self.findings.append(Finding(
            self.filename, node.lineno, node.col_offset + 1, code, message))

    def report_eventlet(self, node, dotted):
        # the longest known prefix of the dotted name
        name = dotted
        while name not in EVENTLET and '.' in name:
            name = name.rsplit('.', 1)[0]
        code, instead = EVENTLET.get(name, EVENTLET['eventlet'])
        self.report(node, code, '{}: {} (see {})'.format(
            dotted, instead, DOCS))

    # -- imports --------------------------------------------------------------

    def visit_Import(self, node):
        for alias in node.names:
            if _is_eventlet(alias.name):
                local = alias.asname or alias.name.split('.')[0]
                self.aliases[local] = (
                    alias.name if alias.asname else local)
                self.report_eventlet(node, alias.name)

    def visit_ImportFrom(self, node):
        if node.level or not node.module or not _is_eventlet(node.module):
            return
        for alias in node.names:
            dotted = '{}.{}'.format(node.module, alias.name)
            self.aliases[alias.asname or alias.name] = dotted
            self.report_eventlet(node, dotted)

    # -- uses -----------------------------------------------------------------

    def visit_Attribute(self, node):
        dotted = self._dotted(node)
        if dotted is not None:
            self.report_eventlet(node, dotted)
            return  # the inner names are part of this one
        self.generic_visit(node)

    def _dotted(self, node):
        """``eventlet.x.y`` for an attribute chain on an eventlet name."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        return '.'.join([self.aliases[node.id]] + parts[::-1])

    # -- dependency providers -------------------------------------------------

    def visit_ClassDef(self, node):
        if any(_looks_like_provider(base) for base in node.bases):
            for item in node.body:
                if (isinstance(item, ast.FunctionDef)
                        and item.name in WORKER_HOOKS):
                    self._check_hook(item)
        self.generic_visit(node)

    def _check_hook(self, function):
        for node in ast.walk(function):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for attr in _self_attributes(target):
                    code, message = SHARED_STATE
                    self.report(node, code, message.format(
                        attr=attr, hook=function.name) + ' (see {})'.format(
                        DOCS))


def _is_eventlet(module):
    return module == 'eventlet' or module.startswith('eventlet.')


def _looks_like_provider(base):
    """A base class named ``DependencyProvider`` (plain or dotted): the
    provider classes of Nameko, threadko and their extensions."""
    name = base.attr if isinstance(base, ast.Attribute) else getattr(
        base, 'id', None)
    return name is not None and name.endswith('DependencyProvider')


def _self_attributes(target):
    """The attribute names ``target`` assigns on ``self``
    (``self.x = ...``, ``self.x, y = ...``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _self_attributes(element)
    elif (isinstance(target, ast.Attribute)
          and isinstance(target.value, ast.Name)
          and target.value.id == 'self'):
        yield target.attr
