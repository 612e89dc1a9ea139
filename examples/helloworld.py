"""The smallest useful service: one method, callable over RPC.

Run it with ``threadko run examples.helloworld --broker
amqp://guest:guest@localhost``, then call it from ``threadko shell`` (or any
standalone client on the same broker)::

    >>> n.rpc.greeting_service.hello(name="ナメコ")
    'Hello, ナメコ!'
"""

from threadko.rpc import rpc


class GreetingService:
    name = "greeting_service"

    @rpc
    def hello(self, name):
        return "Hello, {}!".format(name)
