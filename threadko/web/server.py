"""Routing HTTP requests to ``@http`` entrypoints, and serving them.

:class:`Router` is a WSGI application: it matches a request against the
url rules of the entrypoints added to it (werkzeug routing) and lets the
matching entrypoint answer; 404 and 405 come from the router itself.

:class:`WebServer` is the shared extension every ``@http`` entrypoint of a
container uses. All containers of a process configured with the same
``WEB_SERVER_ADDRESS`` share one :class:`HttpSite`: one :class:`Router` with
all their routes, served by one waitress server
(:class:`~threadko.web.front.FrontServer`). The server starts with the
first of those containers and stops, gracefully, with the last.
``WEB_SERVER_ADDRESS: null`` serves nothing (for WSGI embedding, see
:mod:`threadko.web.wsgi`).
"""

import logging
import re
import threading
from collections import namedtuple

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import Map
from werkzeug.wrappers import Request

from threadko.constants import WEB_SERVER_CONFIG_KEY
from threadko.exceptions import ConfigurationError
from threadko.extensions import ProviderCollector, SharedExtension
from threadko.observability import http_observers
from threadko.web.front import (  # noqa: F401 (importable from here too)
    DEFAULT_MAX_REQUEST_BODY_SIZE, DEFAULT_STOP_TIMEOUT,
    MAX_REQUEST_BODY_SIZE_CONFIG_KEY, STOP_TIMEOUT_CONFIG_KEY, FrontServer,
    front_settings,
)

_log = logging.getLogger(__name__)

DEFAULT_WEB_SERVER_ADDRESS = '0.0.0.0:8000'
#: waitress request threads; default: the sum of the containers'
#: ``max_workers``, plus a few for requests that need no worker
THREADS_CONFIG_KEY = 'WEB_SERVER_THREADS'
SPARE_THREADS = 2

BindAddress = namedtuple('BindAddress', ['address', 'port'])


def parse_address(address_string):
    """``"[host:]port"`` -> :class:`BindAddress` (host ``""`` = all)."""
    match = re.match(r'^((?P<address>[^:]+):)?(?P<port>\d+)$',
                     str(address_string))
    if match is None:
        raise ConfigurationError(
            'Misconfigured bind address `{}`: use `[host:]port`, e.g. '
            '`0.0.0.0:8000`'.format(address_string))
    return BindAddress(match.group('address') or '', int(match.group('port')))


def socket_address(bind_address):
    """``bind_address`` as the socket it binds, the key of a process-wide
    site: ``""`` and ``"0.0.0.0"`` are the same socket."""
    return BindAddress(bind_address.address or '0.0.0.0', bind_address.port)


class Router:
    """A WSGI application routing to ``@http`` entrypoints.

    :param max_request_body_size: bodies larger than this many bytes are
        refused with 413 before any worker runs (``None``: no limit)
    """

    def __init__(self, max_request_body_size=DEFAULT_MAX_REQUEST_BODY_SIZE):
        self.max_request_body_size = max_request_body_size
        self._lock = threading.Lock()
        self._providers = []
        self._url_map = Map()
        #: see :meth:`observe`
        self.observers = ()

    def observe(self, observers):
        """Tell ``observers`` (metrics, tracing; see
        :func:`threadko.observability.http_observers`) about every request
        from now on: ``token = observer.request_started(request)`` before
        routing, ``observer.request_finished(token, request, rule,
        response, error)`` once the response is made (``rule``: the
        werkzeug ``Rule`` matched, or None; ``error``: an exception that
        escaped, the response is None then). Adding one twice does
        nothing."""
        with self._lock:
            self.observers = self.observers + tuple(
                observer for observer in observers
                if observer not in self.observers)

    def add(self, providers):
        """Route to ``providers`` too.

        :raises ConfigurationError: a url and method is routed already
        """
        with self._lock:
            providers = self._providers + [
                provider for provider in providers
                if provider not in self._providers]
            self._url_map = _build_map(providers)
            self._providers = providers

    def remove(self, providers):
        """Stop routing to ``providers`` (unknown ones are ignored)."""
        with self._lock:
            self._providers = [provider for provider in self._providers
                               if provider not in providers]
            self._url_map = _build_map(self._providers)

    def websocket_acceptor(self, path):
        """The provider routed ``GET path`` if it accepts websockets (has
        ``accept_websocket``), else ``None``."""
        try:
            provider, _ = self._url_map.bind('localhost').match(
                path, method='GET')
        except HTTPException:
            return None
        if hasattr(provider, 'accept_websocket'):
            return provider
        return None

    def __call__(self, environ, start_response):
        request = Request(environ)
        if self.observers:
            response = self._observed(request, environ)
            return response(environ, start_response)
        try:
            self._check_size(request)
            # the map is replaced, never mutated: no lock on the hot path
            adapter = self._url_map.bind_to_environ(environ)
            provider, values = adapter.match()
            request.path_values = values
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = exc
        return response(environ, start_response)

    def _observed(self, request, environ):
        """Route ``request`` as :meth:`__call__` does, between the
        observers' two calls."""
        started = [(observer, observer.request_started(request))
                   for observer in self.observers]
        rule = response = error = None
        try:
            self._check_size(request)
            adapter = self._url_map.bind_to_environ(environ)
            rule, values = adapter.match(return_rule=True)
            request.path_values = values
            response = rule.endpoint.handle_request(request)
        except HTTPException as exc:
            response = exc.get_response(environ)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for observer, token in reversed(started):
                observer.request_finished(
                    token, request, rule, response, error)
            del error
        return response

    def _check_size(self, request):
        limit = self.max_request_body_size
        if limit is not None and request.environ.get('CONTENT_LENGTH') and (
                request.content_length or 0) > limit:
            raise RequestEntityTooLarge(
                'The request body is larger than {} bytes.'.format(limit))


def _build_map(providers):
    rules = {}
    url_map = Map()
    for provider in providers:
        rule = provider.get_url_rule()
        for method in rule.methods or ('*',):
            key = (rule.rule, method)
            if key in rules and method != 'HEAD':
                raise ConfigurationError(
                    '{} {} is routed to both {} and {}: give one of them '
                    'another url or method'.format(
                        method, rule.rule, rules[key], provider))
            rules[key] = provider
        rule.endpoint = provider
        url_map.add(rule)
    return url_map


class HttpSite:
    """One address of this process: a :class:`Router` and the waitress
    server on that address. Containers share it through :meth:`acquire`
    and :meth:`release`; the first starts the server, the last stops it."""

    _sites = {}
    _sites_lock = threading.Lock()

    def __init__(self, bind_address, config):
        """Bind ``bind_address`` and start serving (with no routes yet).

        :raises ConfigurationError: the address cannot be bound
        """
        self.bind_address = bind_address
        settings = front_settings(config)
        self.router = Router(settings.max_request_body_size)
        self.fixed_threads = config.get(THREADS_CONFIG_KEY)
        self.users = []
        self.server = FrontServer(self.router, bind_address, settings)

    @classmethod
    def acquire(cls, bind_address, config, user, workers):
        """The site for ``bind_address``, serving once this returns.

        :param user: the acquiring object (a container's ``WebServer``)
        :param workers: how many requests ``user`` may serve at once
        :raises ConfigurationError: the address cannot be bound
        """
        bind_address = socket_address(bind_address)
        with cls._sites_lock:
            site = cls._sites.get(bind_address)
            if site is None:
                site = cls(bind_address, config)  # binds, or raises
                cls._sites[bind_address] = site
            site.users.append((user, workers))
            site._resize()
            return site

    def release(self, user, timeout):
        """``user`` is done; the last user stops the server, waiting up to
        ``timeout`` seconds for requests in flight."""
        with self._sites_lock:
            self.users = [(u, n) for u, n in self.users if u is not user]
            if self.users:
                self._resize()
                return
            if self._sites.get(self.bind_address) is self:
                del self._sites[self.bind_address]
        self.server.stop(timeout)

    def _resize(self):
        if self.fixed_threads:
            count = int(self.fixed_threads)
        else:
            count = sum(n for _, n in self.users) + SPARE_THREADS
        self.server.set_thread_count(count)

    @property
    def port(self):
        """The port actually bound (useful with port 0)."""
        return self.server.port


class WebServer(ProviderCollector, SharedExtension):
    """The container's side of HTTP serving: collects its ``@http``
    entrypoints and adds them to the process's :class:`HttpSite` for
    ``WEB_SERVER_ADDRESS`` (Nameko's default ``0.0.0.0:8000``) when the
    container starts."""

    site = None

    def setup(self):
        address = self.container.config.get(
            WEB_SERVER_CONFIG_KEY, DEFAULT_WEB_SERVER_ADDRESS)
        self.bind_address = parse_address(address) if address else None

    def start(self):
        if self.bind_address is None:
            return
        providers = self.providers
        site = HttpSite.acquire(
            self.bind_address, self.container.config, self,
            self.container.max_workers)
        try:
            site.router.add(providers)
        except ConfigurationError:
            site.release(self, timeout=0)
            raise
        site.router.observe(http_observers(self.container.config))
        # entrypoints unregister before this extension stops: remember
        # what to take out of the router then
        self._routed = providers
        self.site = site

    def stop(self):
        # the providers unregister as they stop: a websocket server once it
        # has told its sockets it is going away
        self.wait_for_providers()
        self._leave(timeout=None)

    def kill(self):
        self._leave(timeout=0)

    def _leave(self, timeout):
        site, self.site = self.site, None
        if site is not None:
            site.router.remove(self._routed)
            site.release(self, timeout)

    @property
    def port(self):
        """The port this container's routes are served on (``None`` when
        not serving)."""
        return None if self.site is None else self.site.port

    def context_data_from_headers(self, request):
        """Context data for a request's worker: none, as in Nameko.
        Override to take some from the request's headers."""
        return {}
