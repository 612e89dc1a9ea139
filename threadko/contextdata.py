"""Dependency providers that inject one key of the call's context data."""

from threadko.constants import (
    AUTH_TOKEN_CONTEXT_KEY, LANGUAGE_CONTEXT_KEY, USER_AGENT_CONTEXT_KEY,
    USER_ID_CONTEXT_KEY,
)
from threadko.extensions import DependencyProvider


class ContextDataProvider(DependencyProvider):
    """Injects ``worker_ctx.data.get(context_key)`` (``None`` if absent)."""

    context_key = None

    def get_dependency(self, worker_ctx):
        return worker_ctx.data.get(self.context_key)


class Language(ContextDataProvider):
    context_key = LANGUAGE_CONTEXT_KEY


class UserId(ContextDataProvider):
    context_key = USER_ID_CONTEXT_KEY


class UserAgent(ContextDataProvider):
    context_key = USER_AGENT_CONTEXT_KEY


class AuthToken(ContextDataProvider):
    context_key = AUTH_TOKEN_CONTEXT_KEY
