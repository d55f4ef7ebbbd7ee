"""interplab: put claims about how neural networks represent and compute to measurement."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("interplab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
