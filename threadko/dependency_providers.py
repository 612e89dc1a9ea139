"""Built-in dependency providers."""

from threadko.extensions import DependencyProvider


class Config(DependencyProvider):
    """Injects a shallow copy of the container's configuration, so a worker
    can read it without changing it for others::

        class Service:
            name = 'service'
            config = Config()

            @rpc
            def method(self):
                return self.config['FOO']
    """

    def get_dependency(self, worker_ctx):
        return dict(self.container.config)
