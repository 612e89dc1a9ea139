"""A script for ``threadko shell``: call a service, dispatch an event.

``threadko shell`` runs its standard input as a script when it is not a
terminal, with ``n`` already defined. With the example services running on
RabbitMQ::

    threadko run examples.rpc examples.events --broker amqp://guest:guest@localhost

run it in another shell::

    threadko shell --broker amqp://guest:guest@localhost < examples/shell_script.py

It is not meant to be run with ``python`` itself: ``n`` would be undefined.
"""

# `n` is defined by threadko shell
result = n.rpc.service_x.remote_method("hellø")
print("service_x.remote_method('hellø') returned {!r}".format(result))

# several calls in flight at once
replies = [n.rpc.service_y.append_identifier.call_async(letter)
           for letter in ("a", "b", "c")]
print("async results: {}".format([reply.result() for reply in replies]))

# handled by service_b, which prints it in the `threadko run` terminal
n.dispatch_event("service_a", "event_type", {"from": "the shell"})
print("dispatched event_type as service_a")
