"""threadko: Nameko's programming model on plain OS threads.

``threadko.config`` is the process-wide configuration (Nameko 3 style).
"""

from threadko.bridge import install_as_nameko
from threadko.configuration import config

__all__ = ['config', 'install_as_nameko', '__version__']

try:
    from importlib.metadata import PackageNotFoundError, version
    __version__ = version('threadko')
except PackageNotFoundError:  # running from a checkout without install
    __version__ = '0.0.0'
