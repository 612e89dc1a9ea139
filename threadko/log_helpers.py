"""Logging helpers."""

import logging
import time
from contextlib import contextmanager


def make_timing_logger(logger, precision=3, level=logging.DEBUG):
    """Return a ``log_time(msg, *args)`` context manager that logs
    ``"<msg> in 1.234s"`` at ``level`` when the block exits."""

    @contextmanager
    def log_time(msg, *args):
        if not logger.isEnabledFor(level):
            yield
            return
        start_time = time.perf_counter()
        try:
            yield
        finally:
            message = '{} in {:0.{}f}s'.format(
                msg, time.perf_counter() - start_time, precision)
            logger.log(level, message, *args)

    return log_time
