"""The project's tests, as written for Nameko: its fixtures
(``runner_factory``, ``rabbit_config``) and testing helpers."""

from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter, worker_factory
from nameko.testing.utils import get_container

from greeter import GreetingService, GuestBook


def test_hello_dispatches_an_event():
    service = worker_factory(GreetingService)

    assert service.hello("Matt") == "Hello, Matt!"
    service.dispatch.assert_called_once_with("greeted", {"name": "Matt"})


def test_a_greeting_is_signed_in_the_guest_book(runner_factory, rabbit_config):
    runner = runner_factory(rabbit_config, GreetingService, GuestBook)
    runner.start()
    guest_book = get_container(runner, GuestBook)

    with entrypoint_waiter(guest_book, "sign"):
        with ServiceRpcProxy("greeting_service", rabbit_config) as greeter:
            assert greeter.hello("Matt") == "Hello, Matt!"

    assert GuestBook.signatures == ["Matt"]
