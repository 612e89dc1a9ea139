"""The extension API: everything pluggable into a service is an extension.

A service class declares extensions as class attributes (dependency
providers) or with decorators (entrypoints). Those declarations are inert;
when a :class:`~threadko.containers.ServiceContainer` is built it calls
:meth:`Extension.bind` to make a live copy per container, so nothing is
shared between containers except what a :class:`SharedExtension` shares
within one container.
"""

import inspect
import logging
import threading
import types
import warnings
import weakref
from functools import partial

from threadko.exceptions import IncorrectSignature

_log = logging.getLogger(__name__)

ENTRYPOINT_EXTENSIONS_ATTR = 'nameko_entrypoints'


class Extension:
    """Base class of entrypoints, dependency providers and the extensions
    they use.

    ``__init__`` also runs during :meth:`bind` (the bound copy is built
    from the same arguments), so keep it free of side effects and do real
    work in :meth:`setup`. :meth:`bind` introspects the extension for
    sub-extensions, so descriptors on it are evaluated then too.

    ``container`` is ``None`` until bound, then a weak proxy to the
    :class:`~threadko.containers.ServiceContainer`.
    """

    __params = None
    container = None

    def __new__(cls, *args, **kwargs):
        inst = super().__new__(cls)
        inst.__params = (args, kwargs)
        return inst

    def setup(self):
        """Called on bound extensions before the container starts.
        Initialise here."""

    def start(self):
        """Called once every extension's :meth:`setup` returned. An
        extension that reacts to outside events starts doing so now."""

    def stop(self):
        """Called when the container shuts down gracefully. Return only
        once this extension has stopped, and its threads have ended."""

    def interrupt_start(self):
        """Called from another thread while the container is starting,
        when it is stopped or killed, or another extension failed to
        start: this extension's :meth:`setup` or :meth:`start` may still be
        running, or be about to run. If either can block (waiting for a
        server to answer, say), make it return promptly now, and make a
        :meth:`start` that has not begun yet return at once. Must not raise
        or block.

        The container calls :meth:`stop` or :meth:`kill` only after the
        interrupted hooks returned (or ``THREAD_JOIN_TIMEOUT`` passed).
        The default does nothing: most hooks return quickly by themselves.
        threadko only; Nameko has no such hook.
        """

    def kill(self):
        """Called to stop this extension urgently, omitting cleanup.

        Must not raise: the container is already dying, so log and swallow.
        Threads cannot be interrupted, so ``kill`` should signal its
        threads to end and close what they block on (sockets, connections)
        rather than wait for them.
        """

    def bind(self, container):
        """Return a new instance of this extension bound to ``container``,
        with every sub-extension bound as well."""

        def clone(prototype):
            if prototype.is_bound():
                raise RuntimeError('Cannot `bind` a bound extension.')

            cls = type(prototype)
            args, kwargs = prototype.__params
            instance = cls(*args, **kwargs)
            # a weak proxy, so a container's shared_extensions never keep
            # the container alive through the extensions it holds
            instance.container = weakref.proxy(container)
            return instance

        instance = clone(self)

        for name, ext in inspect.getmembers(self, is_extension):
            setattr(instance, name, ext.bind(container))
        return instance

    def is_bound(self):
        """True once this instance belongs to a container."""
        return self.container is not None

    def __repr__(self):
        if not self.is_bound():
            return '<{} [unbound] at 0x{:x}>'.format(
                type(self).__name__, id(self))
        return '<{} at 0x{:x}>'.format(type(self).__name__, id(self))


class SharedExtension(Extension):
    """An extension bound once per container and sharing key, however many
    extensions declare it (e.g. one consumer shared by all ``@rpc``
    entrypoints of a service). Subclasses get their own instance."""

    @property
    def sharing_key(self):
        """Extensions with equal keys share one bound instance per
        container. Defaults to the class."""
        return type(self)

    def bind(self, container):
        """Return the container's existing instance for this sharing key,
        or bind and store a new one."""
        shared = container.shared_extensions.get(self.sharing_key)
        if shared:
            return shared

        instance = super().bind(container)
        container.shared_extensions[self.sharing_key] = instance
        return instance


class DependencyProvider(Extension):
    """Provides an object to each worker as ``worker.<attr_name>``, and
    hooks into every worker's lifecycle.

    All worker hooks run in the worker's own thread, in this order for each
    worker: :meth:`get_dependency`, :meth:`worker_setup`, (the service
    method), :meth:`worker_result`, :meth:`worker_teardown`. An exception
    escaping any of them kills the container.

    Workers run truly in parallel on OS threads: the object returned by
    :meth:`get_dependency` may be used by several workers at once unless
    you return one per worker, so make it thread-safe. Pool threads are
    reused, so reset any ``threading.local`` state in :meth:`worker_setup`.
    """

    attr_name = None

    def bind(self, container, attr_name):
        """Return a bound instance for ``container`` injected as
        ``attr_name``."""
        instance = super().bind(container)
        instance.attr_name = attr_name
        self.attr_name = attr_name
        return instance

    def get_dependency(self, worker_ctx):
        """Return the object to inject into the worker instance."""

    def worker_setup(self, worker_ctx):
        """Called before the service method runs; raise to refuse the
        worker (which kills the container)."""

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        """Called with the method's result, or with ``exc_info`` (a
        ``sys.exc_info()`` triple) if it raised."""

    def worker_teardown(self, worker_ctx):
        """Called after the worker finished, whatever its outcome."""

    def __repr__(self):
        if not self.is_bound():
            return '<{} [unbound] at 0x{:x}>'.format(
                type(self).__name__, id(self))
        return '<{} [{}.{}] at 0x{:x}>'.format(
            type(self).__name__, self.container.service_name,
            self.attr_name, id(self))


class ProviderCollector:
    """Mixin for a shared extension that serves several providers (e.g.
    entrypoints) and must not stop before all of them have stopped.

    Thread-safe: providers register and unregister from any thread.
    """

    def __init__(self, *args, **kwargs):
        self._providers = set()
        self._providers_registered = False
        self._providers_lock = threading.Lock()
        self._last_provider_unregistered = threading.Event()
        super().__init__(*args, **kwargs)

    def register_provider(self, provider):
        """Add ``provider`` to the set this extension serves."""
        _log.debug('registering provider %s for %s', provider, self)
        with self._providers_lock:
            self._providers_registered = True
            self._providers.add(provider)
            # a restarted container registers its providers again
            self._last_provider_unregistered.clear()

    @property
    def providers(self):
        """A snapshot of the registered providers (a list)."""
        with self._providers_lock:
            return list(self._providers)

    def unregister_provider(self, provider):
        """Remove ``provider``; when the last one goes, release anyone in
        :meth:`wait_for_providers`. Unknown providers are ignored."""
        with self._providers_lock:
            if provider not in self._providers:
                return
            _log.debug('unregistering provider %s for %s', provider, self)
            self._providers.remove(provider)
            if not self._providers:
                _log.debug('last provider unregistered for %s', self)
                self._last_provider_unregistered.set()

    def wait_for_providers(self):
        """Block until every registered provider has unregistered. Returns
        at once if none ever registered."""
        if self._providers_registered:
            _log.debug('waiting for providers to unregister %s', self)
            self._last_provider_unregistered.wait()
            _log.debug('all providers unregistered %s', self)

    def stop(self):
        """Default stop for users of this mixin: wait for the providers."""
        self.wait_for_providers()


def register_entrypoint(fn, entrypoint):
    """Attach ``entrypoint`` (a declaration) to the function ``fn``."""
    descriptors = getattr(fn, ENTRYPOINT_EXTENSIONS_ATTR, None)
    if descriptors is None:
        descriptors = set()
        setattr(fn, ENTRYPOINT_EXTENSIONS_ATTR, descriptors)
    descriptors.add(entrypoint)


class _SignatureCheck:
    """A method's signature, and what binding to it takes, so that the
    usual calls are checked without binding (positions count ``self``)."""

    __slots__ = ('signature', '_position', '_required', '_max',
                 '_keyword_only', '_keyword_only_required', '_any_keyword',
                 '_by_name')

    def __init__(self, fn):
        self.signature = signature = inspect.signature(fn)
        self._position = {}  # a positional parameter's name -> its index
        self._required = []  # (index, name) of the required positional ones
        self._keyword_only = set()
        self._keyword_only_required = []
        self._any_keyword = False  # there is **kwargs
        # keywords are checked here only without *args and positional-only
        # parameters; binding decides those
        self._by_name = True
        unbounded = False
        for param in signature.parameters.values():
            required = param.default is param.empty
            if param.kind in (param.POSITIONAL_ONLY,
                              param.POSITIONAL_OR_KEYWORD):
                if param.kind == param.POSITIONAL_ONLY:
                    self._by_name = False
                if required:
                    self._required.append((len(self._position), param.name))
                self._position[param.name] = len(self._position)
            elif param.kind == param.VAR_POSITIONAL:
                unbounded = True
                self._by_name = False
            elif param.kind == param.KEYWORD_ONLY:
                self._keyword_only.add(param.name)
                if required:
                    self._keyword_only_required.append(param.name)
            else:
                self._any_keyword = True
        self._max = None if unbounded else len(self._position)

    def accepts_positional(self, count):
        """Whether ``count`` positional arguments (and no keywords) bind."""
        count += 1  # self
        return (not self._keyword_only_required
                and len(self._required) <= count
                and (self._max is None or count <= self._max))

    def accepts(self, count, kwargs):
        """Whether ``count`` positional arguments and ``kwargs`` bind;
        False when unsure (then bind to find out)."""
        if not kwargs:
            return self.accepts_positional(count)
        if not self._by_name:
            return False
        count += 1  # self
        position = self._position
        if count > len(position):
            return False
        for key in kwargs:
            index = position.get(key)
            if index is not None:
                if index < count:
                    return False  # given twice
            elif not (key in self._keyword_only or self._any_keyword):
                return False
        return all(name in kwargs for index, name in self._required
                   if index >= count) and all(
            name in kwargs for name in self._keyword_only_required)


class Entrypoint(Extension):
    """An extension that fires service methods, by calling
    ``self.container.spawn_worker(self, args, kwargs, ...)``.

    :param expected_exceptions: an exception class or tuple of them that
        the caller may cause (bad input, say). Workers failing with them
        are logged at WARNING instead of ERROR, and HTTP answers them 400.
    :param sensitive_arguments: an argument path or tuple of them to redact
        in logs; see :func:`threadko.utils.get_redacted_args`.
    """

    method_name = None
    # method -> inspect.Signature, for check_signature (computing it takes
    # longer than the check itself)
    _signatures = weakref.WeakKeyDictionary()

    def __init__(self, expected_exceptions=(), sensitive_arguments=(),
                 **kwargs):
        sensitive_variables = kwargs.pop('sensitive_variables', ())
        if sensitive_variables:
            sensitive_arguments = sensitive_variables
            warnings.warn(
                'The `sensitive_variables` argument has been renamed to '
                '`sensitive_arguments`.', DeprecationWarning, stacklevel=2)

        self.expected_exceptions = expected_exceptions
        self.sensitive_arguments = sensitive_arguments
        super().__init__(**kwargs)

    def bind(self, container, method_name):
        """Return a bound instance for ``container`` firing ``method_name``."""
        instance = super().bind(container)
        instance.method_name = method_name
        return instance

    def check_signature(self, args, kwargs):
        """Raise :class:`~threadko.exceptions.IncorrectSignature` unless the
        method accepts ``(*args, **kwargs)``."""
        fn = getattr(self.container.service_cls, self.method_name)
        checker = self._signatures.get(fn)
        if checker is None:
            checker = self._signatures[fn] = _SignatureCheck(fn)
        if checker.accepts(len(args), kwargs):
            return  # the common cases, without binding
        try:
            checker.signature.bind(None, *args, **kwargs)
        except TypeError as refused:
            # getcallargs words the error as Nameko does; unwrapped, as it
            # does not follow a decorator's __wrapped__ (functools.wraps)
            # the way signature() does
            try:
                inspect.getcallargs(inspect.unwrap(fn), None, *args, **kwargs)
            except TypeError as exc:
                raise IncorrectSignature(str(exc))
            raise IncorrectSignature(str(refused))

    @classmethod
    def decorator(cls, *args, **kwargs):
        """The user-facing decorator (``rpc = Rpc.decorator``). Works bare
        (``@rpc``) and with arguments (``@rpc(expected_exceptions=...)``),
        and returns the decorated function unchanged."""

        def registering_decorator(fn, args, kwargs):
            instance = cls(*args, **kwargs)
            register_entrypoint(fn, instance)
            return fn

        if len(args) == 1 and isinstance(args[0], types.FunctionType):
            return registering_decorator(args[0], args=(), kwargs={})
        return partial(registering_decorator, args=args, kwargs=kwargs)

    def __repr__(self):
        if not self.is_bound():
            return '<{} [unbound] at 0x{:x}>'.format(
                type(self).__name__, id(self))
        return '<{} [{}.{}] at 0x{:x}>'.format(
            type(self).__name__, self.container.service_name,
            self.method_name, id(self))


def is_extension(obj):
    return isinstance(obj, Extension)


def is_dependency(obj):
    return isinstance(obj, DependencyProvider)


def is_entrypoint(obj):
    return isinstance(obj, Entrypoint)


def iter_extensions(extension):
    """Depth-first iterator over the sub-extensions of ``extension``
    (children before their parent)."""
    for _, ext in inspect.getmembers(extension, is_extension):
        for item in iter_extensions(ext):
            yield item
        yield ext
