"""hpatch: hotpatching for Windows PE binaries (x64 and ARM64)."""

from __future__ import annotations

from hpatch._backend import BACKEND
from hpatch.errors import HPatchError

__version__ = "0.1.0"
__all__ = ["BACKEND", "HPatchError", "__version__"]
