"""Run Nameko 2.14 services from ``services.py`` until SIGTERM.

    python serve.py --amqp-uri URI [--config JSON] SERVICE_NAME [...]

The process is eventlet monkey-patched, as ``nameko run`` is. It prints
``READY`` on stdout once every container has started and ``STOPPED`` after
a graceful stop (SIGTERM), then exits 0. Logs go to stderr.
"""

import eventlet
eventlet.monkey_patch()  # noqa: E402 (must come before the other imports)

import argparse
import errno
import json
import logging
import signal
import sys

from nameko.runners import ServiceRunner

import services


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--amqp-uri', required=True)
    parser.add_argument('--config', default='{}',
                        help='extra config keys, as a JSON object')
    parser.add_argument(
        'services', nargs='+', choices=sorted(services.SERVICES))
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format='%(asctime)s %(name)s %(levelname)s %(message)s')
    config = dict(json.loads(args.config), AMQP_URI=args.amqp_uri)

    runner = ServiceRunner(config)
    for name in args.services:
        runner.add_service(services.SERVICES[name])

    def shutdown(signum, frame):
        # signal handlers cannot use eventlet primitives: stop in a greenlet
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, shutdown)
    runner.start()
    print('READY', flush=True)

    # as `nameko run`: wait in a greenlet, ignoring the EINTR the signal
    # may cause in the main greenlet
    waiter = eventlet.spawn(runner.wait)
    while True:
        try:
            waiter.wait()
            break
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
    print('STOPPED', flush=True)


if __name__ == '__main__':
    main()
