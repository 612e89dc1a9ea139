"""``entrypoint_hook`` with context data.

The hook fires an entrypoint without going through its transport, and can
pass context data as a caller would: here the ``language`` that the
``Language`` dependency provider reads. ``memory_config`` runs the test on
the embedded ``memory://`` broker, so it needs no RabbitMQ
(``rabbit_config`` works the same way).
"""

import pytest

from threadko.contextdata import Language
from threadko.rpc import rpc
from threadko.testing.services import entrypoint_hook


class HelloService:
    """The service under test."""

    name = "hello_service"

    language = Language()

    @rpc
    def hello(self, name):
        greeting = "Hello"
        if self.language == "fr":
            greeting = "Bonjour"
        elif self.language == "de":
            greeting = "Guten Tag"

        return "{}, {}!".format(greeting, name)


@pytest.mark.parametrize("language, greeting", [
    ("en", "Hello"),
    ("fr", "Bonjour"),
    ("de", "Guten Tag"),
])
def test_hello_languages(language, greeting, container_factory,
                         memory_config):
    container = container_factory(HelloService, memory_config)
    container.start()

    context_data = {"language": language}
    with entrypoint_hook(container, "hello", context_data) as hook:
        assert hook("Matt") == "{}, Matt!".format(greeting)
