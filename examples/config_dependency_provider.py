"""Two ways for a service to read its configuration.

``Config()`` injects the configuration of the worker's container (a copy, so
a worker cannot change it for the others). It works whether the container
got an explicit config dict (Nameko 2 style) or uses the global one::

    threadko run examples.config_dependency_provider:Service \\
        --define FOO_FEATURE_ENABLED=true
    curl http://localhost:8000/foo

``threadko.config`` is the process-wide configuration (Nameko 3 style).
``threadko run`` fills it before it imports the services, so it can be read
while a class is being defined, for example in a decorator argument::

    threadko run examples.config_dependency_provider:Heartbeat \\
        --define HEARTBEAT_INTERVAL=0.5
"""

import threadko
from threadko.dependency_providers import Config
from threadko.timer import timer
from threadko.web.handlers import http


class Service:
    name = "test_config"

    config = Config()

    @property
    def foo_enabled(self):
        return self.config.get("FOO_FEATURE_ENABLED", False)

    @http("GET", "/foo")
    def foo(self, request):
        if not self.foo_enabled:
            return 403, "FeatureNotEnabled"

        return "foo"


class Heartbeat:
    name = "heartbeat"

    # read once, when the module is imported
    @timer(interval=threadko.config.get("HEARTBEAT_INTERVAL", 10))
    def beat(self):
        print("heartbeat", flush=True)
