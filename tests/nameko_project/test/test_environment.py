"""This suite runs on threadko (pytest -p threadko.nameko, in pytest.ini):
`import nameko` gives threadko's package, and eventlet is never needed."""

import sys

import nameko
import nameko.rpc


def test_nameko_is_threadko_and_eventlet_is_not_imported():
    assert nameko.__name__ == 'threadko'
    assert nameko.rpc.__name__ == 'threadko.rpc'
    assert sys.modules['nameko.rpc'] is nameko.rpc
    assert not [name for name in sys.modules if name.startswith('eventlet')]
