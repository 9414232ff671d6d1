"""The native/fallback split: one choice at import, the same API both ways."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import hpatch
from hpatch import _fallback, _native

NATIVE_FUNCTIONS = sorted(name for name in dir(_native) if not name.startswith("_"))


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HPATCH_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=False
    )


def test_backend_follows_the_environment() -> None:
    expected = "python" if os.environ.get("HPATCH_PURE_PYTHON") == "1" else "native"
    assert expected == hpatch.BACKEND


def test_pure_python_is_forced_by_env() -> None:
    result = _run("import hpatch; print(hpatch.BACKEND)", HPATCH_PURE_PYTHON="1")
    assert result.stdout.strip() == "python"
    result = _run("import hpatch; print(hpatch.BACKEND)")
    assert result.stdout.strip() == "native"


def test_require_native_refuses_the_fallback() -> None:
    result = _run("import hpatch", HPATCH_PURE_PYTHON="1", HPATCH_REQUIRE_NATIVE="1")
    assert result.returncode != 0
    assert "ImportError" in result.stderr


def test_every_native_function_has_a_twin_with_the_same_signature() -> None:
    assert NATIVE_FUNCTIONS, "the extension exports nothing"
    for name in NATIVE_FUNCTIONS:
        native, twin = getattr(_native, name), getattr(_fallback, name)
        shape = [(p.name, p.kind) for p in inspect.signature(native).parameters.values()]
        twin_shape = [(p.name, p.kind) for p in inspect.signature(twin).parameters.values()]
        assert shape == twin_shape, name
        assert native.__doc__ and twin.__doc__, name
