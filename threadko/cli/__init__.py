"""The ``threadko`` command line (``threadko run``, ``threadko shell``,
``threadko show-config``).

Each command lives in its own module and is registered on the group in
:mod:`threadko.cli.main`.
"""
