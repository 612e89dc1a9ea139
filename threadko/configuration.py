"""The global configuration (Nameko 3 style) and its patching helper.

``threadko.config`` is one process-wide mapping. The CLI fills it *before*
importing services, so values can be used at class-definition time (for
example in decorator arguments). Containers and runners built without an
explicit config dict read it too; Nameko 2 code that passes a config dict
explicitly keeps working, and that dict is used as is.
"""

import copy
import functools
import threading
from collections import UserDict


class Config(UserDict):
    """A dict-like holder for the process-wide configuration.

    Reads are plain dict reads. :meth:`setup` and :meth:`patch` change the
    contents; they are meant for start-up and tests, not for the hot path.
    """

    def __init__(self, *args, **kwargs):
        self._lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def setup(self, values):
        """Replace the whole configuration with ``values``."""
        with self._lock:
            self.data.clear()
            self.data.update(values)

    def patch(self, values, clear=False):
        """Temporarily update (or, with ``clear=True``, replace) the
        configuration; the previous contents come back afterwards.

        Usable as a context manager::

            with config.patch({'max_workers': 1}):
                ...

        and as a decorator, for a function or a test::

            @config.patch({'AMQP_URI': 'memory://'})
            def test_something():
                ...
        """
        return _ConfigPatch(self, values, clear)


class _ConfigPatch:
    def __init__(self, config, values, clear):
        self.config = config
        self.values = values
        self.clear = clear
        self._saved = []

    def __enter__(self):
        with self.config._lock:
            self._saved.append(copy.deepcopy(self.config.data))
            if self.clear:
                self.config.data.clear()
            self.config.data.update(self.values)
        return self.config

    def __exit__(self, *exc_info):
        with self.config._lock:
            self.config.data.clear()
            self.config.data.update(self._saved.pop())

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self:
                return func(*args, **kwargs)
        return wrapper


config = Config()
