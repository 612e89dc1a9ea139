"""The RPC snippets of docs/rpc.rst: an exception raised as itself at the
caller, and several calls in flight from one worker.

``bank.withdraw(amount)`` raises ``InsufficientFunds`` when the balance is
too low; because the class is registered with ``deserialize_to_instance``
in a module both sides import, callers catch it by its own class.
``batch.process_all(items)`` calls ``other.method`` for every item at
once and collects the results.
"""

from threadko.exceptions import deserialize_to_instance
from threadko.rpc import RpcProxy, rpc


@deserialize_to_instance
class InsufficientFunds(Exception):
    """The balance is lower than the amount asked for."""


class Bank:
    name = "bank"

    balance = 50

    @rpc
    def withdraw(self, amount):
        if amount > self.balance:
            raise InsufficientFunds(amount)
        return self.balance - amount


class Other:
    name = "other"

    @rpc
    def method(self, item):
        return item * 2


class Batch:
    name = "batch"

    other = RpcProxy("other")

    @rpc
    def process_all(self, items):
        # [docs-start call-async]
        replies = [self.other.method.call_async(item) for item in items]
        results = [reply.result() for reply in replies]
        # [docs-end call-async]
        return results
