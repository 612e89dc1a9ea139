"""Unit testing a service: call its methods directly, dependencies mocked.

``worker_factory`` makes an instance of the service class with every
dependency replaced by a ``MagicMock``. No container, broker or thread is
involved: the methods run in the test's own thread.
"""

from threadko.rpc import RpcProxy, rpc
from threadko.testing.services import worker_factory


class ConversionService:
    """The service under test."""

    name = "conversions"

    maths_rpc = RpcProxy("maths")

    @rpc
    def inches_to_cm(self, inches):
        return self.maths_rpc.multiply(inches, 2.54)

    @rpc
    def cms_to_inches(self, cms):
        return self.maths_rpc.divide(cms, 2.54)


def test_conversion_service():
    # a worker whose dependencies are mocks
    service = worker_factory(ConversionService)

    # the "maths" service is not running: make its mocked proxy compute
    service.maths_rpc.multiply.side_effect = lambda x, y: x * y
    service.maths_rpc.divide.side_effect = lambda x, y: x / y

    # the logic of inches_to_cm
    assert service.inches_to_cm(300) == 762
    service.maths_rpc.multiply.assert_called_once_with(300, 2.54)

    # the logic of cms_to_inches
    assert service.cms_to_inches(762) == 300
    service.maths_rpc.divide.assert_called_once_with(762, 2.54)
