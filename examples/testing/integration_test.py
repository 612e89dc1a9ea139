"""Integration testing: run the services as they run in production, and
fire an entrypoint from the test.

``runner_factory`` hosts the services (and kills them after the test);
``rabbit_config`` gives the test a vhost of its own on RabbitMQ (pass
``--amqp-uri`` and ``--rabbit-api-uri`` to pytest to point it at your
broker). ``entrypoint_hook`` calls ``remote_method`` of ``examples/rpc.py``'s
``ServiceX`` as if an RPC request had arrived; its call to ``service_y``
goes through the broker for real.
"""

from examples.rpc import ServiceX, ServiceY  # the services under test
from threadko.testing.services import entrypoint_hook
from threadko.testing.utils import get_container


def test_service_x_y_integration(runner_factory, rabbit_config):
    # run the services in the normal way
    runner = runner_factory(rabbit_config, ServiceX, ServiceY)
    runner.start()

    # fire the "remote_method" entrypoint of ServiceX and check the result
    container = get_container(runner, ServiceX)
    with entrypoint_hook(container, "remote_method") as entrypoint:
        assert entrypoint("value") == "value-x-y"
