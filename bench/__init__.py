"""clbench: a plugin-based benchmark for continual learning of Transformers."""

from importlib.metadata import PackageNotFoundError, version as _version

from .hookspecs import hookimpl, hookspec

try:
    __version__ = _version("clbench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["hookimpl", "hookspec", "__version__"]
