"""Testing helpers for threadko services.

- :mod:`threadko.testing.services`: ``worker_factory``, ``entrypoint_hook``,
  ``entrypoint_waiter``, ``replace_dependencies``, ``restrict_entrypoints``,
  the ``once`` and ``dummy`` entrypoints;
- :mod:`threadko.testing.utils`: ``get_extension``, ``get_container``,
  ``wait_for_call``, ``assert_stops_raising``, ``find_free_port``, matchers;
- :mod:`threadko.testing.waiting`: ``wait_for_call(obj, attr)`` and
  ``WaitResult``;
- :mod:`threadko.testing.pytest`: the pytest plugin (fixtures such as
  ``container_factory`` and ``runner_factory``).

Nothing is imported here, so that pytest loading the plugin stays cheap.
"""
