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

#: where each finding is explained (the section of the migration guide)
DOCS = '"Greenthread code" in docs/migrating.rst'

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
    'eventlet.greenthread.sleep': (
        'TK102', 'time.sleep() (it blocks only this worker\'s thread); to '
        'wait for something, threading.Event().wait(timeout)'),
    'eventlet.kill': (
        'TK103', 'a thread cannot be killed from outside: have it watch a '
        'threading.Event and return'),
    'eventlet.getcurrent': (
        'TK103', 'threading.current_thread()'),
    'eventlet.import_patched': (
        'TK101', 'a plain import: nothing is patched under threadko'),
    'eventlet.with_timeout': (
        'TK105', 'the timeout argument of the blocking call itself; '
        'threads cannot be interrupted from outside'),
    'eventlet.timeout': (
        'TK105', 'the timeout argument of the blocking call itself '
        '(RPC client timeout=, socket timeouts, Event.wait(timeout)); '
        'threads cannot be interrupted from outside'),
    'eventlet.Semaphore': (
        'TK108', 'threading.Semaphore'),
    'eventlet.BoundedSemaphore': (
        'TK108', 'threading.BoundedSemaphore'),
    'eventlet.CappedSemaphore': (
        'TK108', 'threading.BoundedSemaphore'),
    'eventlet.connect': (
        'TK112', 'socket.create_connection()'),
    'eventlet.serve': (
        'TK112', 'socketserver.ThreadingTCPServer, or a WSGI server'),
    'eventlet.event': (
        'TK106', 'threading.Event, or concurrent.futures.Future'),
    'eventlet.greenpool': (
        'TK104', 'concurrent.futures.ThreadPoolExecutor'),
    'eventlet.corolocal': (
        'TK100', 'threading.local() (but a pool thread keeps its locals '
        'for the next worker: reset them in worker_setup)'),
    'eventlet.hubs': (
        'TK100', 'remove it: there is no hub, the OS schedules threads'),
    'eventlet.debug': (
        'TK100', 'remove it: there is no hub to debug; faulthandler or '
        'py-spy show what each thread is doing'),
    'eventlet.pools': (
        'TK100', 'the client library\'s own thread-safe pool, or a '
        'queue.Queue of the pooled objects'),
    'eventlet.db_pool': (
        'TK100', 'the database library\'s own pool (SQLAlchemy\'s, say)'),
    'eventlet': (
        'TK100', 'eventlet is not needed (nor installed) under threadko; '
        'each use is listed on its own'),
}
#: a name of eventlet's that the table above does not know
UNKNOWN_EVENTLET = (
    'TK100', 'eventlet is not installed under threadko, and this has no '
    'listed equivalent: rewrite it with threading, concurrent.futures or '
    'the standard library')

#: the worker hooks of a dependency provider, which run on the workers'
#: threads, several at once
WORKER_HOOKS = ('get_dependency', 'worker_setup', 'worker_result',
                'worker_teardown')
SHARED_STATE = (
    'TK201', '{self}.{attr} is set in {hook}(): one provider serves every '
    'worker, and under threadko they run at once, so workers overwrite '
    "each other's {attr}. Keep per-worker state in the object "
    'get_dependency returns, or in a dict keyed by worker_ctx')


def check_tree(path):
    """Every :class:`Finding` in the Python files under ``path`` (a file
    or a directory), in path and line order. Hidden directories,
    ``__pycache__`` and virtualenvs (a directory with a ``pyvenv.cfg``)
    are skipped. Files that cannot be read or parsed give a ``TK000``
    finding."""
    findings = []
    for filename in _python_files(path):
        findings.extend(check_file(filename))
    return findings


def check_file(filename):
    """The :class:`Finding` list of one Python file."""
    try:
        with open(filename, 'rb') as source:
            text = source.read()
    except OSError as exc:
        return [Finding(filename, 1, 1, 'TK000', 'cannot read it: {}'.format(
            exc.strerror or exc))]
    try:
        tree = ast.parse(text, filename)
    except SyntaxError as exc:
        # exc.msg: str(exc) would repeat the path, maybe an absolute one
        return [Finding(filename, exc.lineno or 1, exc.offset or 1, 'TK000',
                        'cannot parse it: {}'.format(exc.msg))]
    except (ValueError, RecursionError, MemoryError) as exc:
        # source null bytes (before Python 3.12), nesting too deep
        return [Finding(filename, 1, 1, 'TK000',
                        'cannot parse it: {}'.format(exc))]
    checker = _Checker(filename)
    checker.visit(tree)
    return sorted(checker.findings, key=lambda f: (f.line, f.column))


def _python_files(path):
    if os.path.isfile(path):
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith('.') and d != '__pycache__'
            and not os.path.exists(os.path.join(root, d, 'pyvenv.cfg')))
        for name in sorted(files):
            if name.endswith('.py'):
                yield os.path.join(root, name)


class _Checker(ast.NodeVisitor):

    def __init__(self, filename):
        self.filename = filename
        self.findings = []
        self.aliases = {}  # local name -> 'eventlet...' dotted name
        self.providers = set()  # provider classes defined in this file

    def report(self, node, code, message):
        self.findings.append(Finding(
            self.filename, node.lineno, node.col_offset + 1, code, message))

    def report_eventlet(self, node, dotted):
        # the longest known prefix of the dotted name
        name = dotted
        while name not in EVENTLET and '.' in name:
            name = name.rsplit('.', 1)[0]
        if name == 'eventlet' and dotted != 'eventlet':
            code, instead = UNKNOWN_EVENTLET
        else:
            code, instead = EVENTLET[name]
        self.report(node, code, '{}: {} (see {})'.format(
            dotted, instead, DOCS))

    # -- imports --------------------------------------------------------------

    def visit_Import(self, node):
        for alias in node.names:
            local = alias.asname or alias.name.split('.')[0]
            if _is_eventlet(alias.name):
                self.aliases[local] = (
                    alias.name if alias.asname else local)
                self.report_eventlet(node, alias.name)
            else:
                self.aliases.pop(local, None)  # the name means another module

    def visit_ImportFrom(self, node):
        eventlet = (not node.level and node.module
                    and _is_eventlet(node.module))
        for alias in node.names:
            local = alias.asname or alias.name
            if not eventlet:
                self.aliases.pop(local, None)
                continue
            dotted = '{}.{}'.format(node.module, alias.name)
            if alias.name != '*':
                self.aliases[local] = dotted
            self.report_eventlet(node, dotted)

    # -- uses -----------------------------------------------------------------

    def visit_Attribute(self, node):
        dotted = self._dotted(node)
        if dotted is not None:
            self.report_eventlet(node, dotted)
            return  # the inner names are part of this one
        self.generic_visit(node)

    def visit_Name(self, node):
        # a name imported from eventlet (``from eventlet import sleep``),
        # used on its own: ``sleep(1)``
        if isinstance(node.ctx, ast.Load) and node.id in self.aliases:
            self.report_eventlet(node, self.aliases[node.id])

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
        if any(_looks_like_provider(base, self.providers)
               for base in node.bases):
            self.providers.add(node.name)
            for item in node.body:
                if (isinstance(item, ast.FunctionDef)
                        and item.name in WORKER_HOOKS):
                    self._check_hook(item)
        self.generic_visit(node)

    def _check_hook(self, function):
        args = function.args.posonlyargs + function.args.args
        if not args:
            return  # a staticmethod: no instance to keep state on
        for node, attr in _instance_assignments(function.body, args[0].arg):
            code, message = SHARED_STATE
            self.report(node, code, message.format(
                self=args[0].arg, attr=attr, hook=function.name)
                + ' (see {})'.format(DOCS))


def _is_eventlet(module):
    return module == 'eventlet' or module.startswith('eventlet.')


def _looks_like_provider(base, providers=()):
    """A base class named ``DependencyProvider`` (plain or dotted: the
    provider classes of Nameko, threadko and their extensions), or one of
    ``providers``, the provider classes of the same file."""
    name = base.attr if isinstance(base, ast.Attribute) else getattr(
        base, 'id', None)
    return name is not None and (
        name.endswith('DependencyProvider') or name in providers)


def _instance_assignments(body, self_name):
    """``(node, attribute name)`` for each assignment to an attribute of
    ``self_name`` in ``body``: ``self.x = ...``, ``self.x += ...``,
    ``self.x, y = ...``, ``for self.x in ...``, ``with ... as self.x``,
    ``setattr(self, "x", ...)``. Nested functions see the same ``self``
    unless they have a parameter of that name; nested classes are left
    out (their methods' ``self`` is another object)."""
    for statement in body:
        for node in _walk_scope(statement, self_name):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign):
                targets = [node.target]
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets = [node.target]
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets = [node.target]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                targets = [item.optional_vars for item in node.items
                           if item.optional_vars is not None]
            elif (isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Name)
                  and node.func.id == 'setattr' and len(node.args) == 3
                  and _is_name(node.args[0], self_name)):
                name = node.args[1]
                yield node, (name.value if isinstance(name, ast.Constant)
                             and isinstance(name.value, str) else '<attr>')
            for target in targets:
                for attr in _attributes_of(target, self_name):
                    yield node, attr


def _walk_scope(node, self_name):
    """``ast.walk(node)``, without nested classes, and without nested
    functions and lambdas whose parameters hide ``self_name``."""
    todo = [node]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ClassDef):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                             ast.Lambda)):
            arguments = node.args
            names = [arg.arg for arg in (
                arguments.posonlyargs + arguments.args
                + arguments.kwonlyargs)]
            names += [arg.arg for arg in (arguments.vararg, arguments.kwarg)
                      if arg is not None]
            if self_name in names:
                continue
        yield node
        todo.extend(reversed(list(ast.iter_child_nodes(node))))


def _is_name(node, name):
    return isinstance(node, ast.Name) and node.id == name


def _attributes_of(target, self_name):
    """The attribute names ``target`` assigns on ``self_name``
    (``self.x = ...``, ``self.x, y = ...``, ``*self.rest``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _attributes_of(element, self_name)
    elif isinstance(target, ast.Starred):
        yield from _attributes_of(target.value, self_name)
    elif isinstance(target, ast.Attribute) and _is_name(
            target.value, self_name):
        yield target.attr
