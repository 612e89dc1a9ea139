"""A service that does something every second.

Run it with::

    threadko run examples.timer

and stop it with Ctrl-C. The timer fires one second after the service
started, then every second; each tick runs on a worker thread with a fresh
instance of the service. No message broker is needed: the timer is the
service's only entrypoint.
"""

import datetime

from threadko.timer import timer


class TimerExample:
    name = "timer_example"

    @timer(interval=1)
    def ping(self):
        now = datetime.datetime.now().strftime("%H:%M:%S")
        # flush, so each line shows up at once even when output is piped
        print("timer_example: ping at {}".format(now), flush=True)
