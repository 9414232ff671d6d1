"""Choose, once, between the C extension and its pure-Python twin.

``HPATCH_PURE_PYTHON=1`` forces the fallback; ``HPATCH_REQUIRE_NATIVE=1`` turns a
missing or broken extension into an import error instead of a silent slowdown.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _select() -> tuple[ModuleType, str]:
    if _env_flag("HPATCH_PURE_PYTHON"):
        if _env_flag("HPATCH_REQUIRE_NATIVE"):
            raise ImportError("HPATCH_PURE_PYTHON and HPATCH_REQUIRE_NATIVE are both set")
        return importlib.import_module("hpatch._fallback"), "python"
    try:
        native = importlib.import_module("hpatch._native")
    except ImportError:
        if _env_flag("HPATCH_REQUIRE_NATIVE"):
            raise
        return importlib.import_module("hpatch._fallback"), "python"
    return native, "native"


core, BACKEND = _select()
