"""A small project written for Nameko 2, unchanged: it imports ``nameko``,
never ``threadko``. The migration guide moves it to threadko both ways:
rewriting its imports, or keeping them and running it through the nameko
bridge."""

import threading

from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc


class GreetingService:
    name = "greeting_service"

    dispatch = EventDispatcher()

    @rpc
    def hello(self, name):
        self.dispatch("greeted", {"name": name})
        return "Hello, {}!".format(name)


class GuestBook:
    name = "guest_book"

    # class-level, so that tests can look: under threadko workers run at
    # once, so the list is guarded (under Nameko it did not need to be)
    signatures = []
    lock = threading.Lock()

    @event_handler("greeting_service", "greeted")
    def sign(self, payload):
        with GuestBook.lock:
            GuestBook.signatures.append(payload["name"])
