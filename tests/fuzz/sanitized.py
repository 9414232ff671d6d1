"""Run against a sanitized build of ``hpatch._native`` instead of the installed one.

``make sanitize`` compiles native/*.c with AddressSanitizer and UndefinedBehavior-
Sanitizer into a directory of its own and names the result in
``HPATCH_SANITIZED_NATIVE``. Loaded as a pytest plugin (``-p tests.fuzz.sanitized``)
or called by the fuzz driver before hpatch is imported, this module makes that file
the one ``import hpatch._native`` loads, and refuses to go on unless it is: a run
that silently tested the unsanitized build would prove nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ENV = "HPATCH_SANITIZED_NATIVE"
MODULE = "hpatch._native"


class _SanitizedNative(importlib.abc.MetaPathFinder):
    """Answers for hpatch._native only, with the sanitized extension."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != MODULE:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(self.path))
        return importlib.util.spec_from_file_location(fullname, self.path, loader=loader)


def _load_capstone_without_deepbind() -> None:
    """capstone dlopens its library with RTLD_DEEPBIND, which the ASan runtime refuses
    (google/sanitizers#611) by ending the process; load it once without the flag."""
    if "capstone" in sys.modules:
        return
    deepbind = os.__dict__.pop("RTLD_DEEPBIND", None)
    try:
        import capstone  # noqa: F401
    finally:
        if deepbind is not None:
            os.RTLD_DEEPBIND = deepbind  # type: ignore[attr-defined]


def install() -> Path:
    """Make the sanitized build the one imported; the path of that build."""
    value = os.environ.get(ENV, "")
    if not value:
        raise RuntimeError(f"{ENV} is not set: run through `make sanitize`")
    path = Path(value).resolve()
    if not path.is_file():
        raise RuntimeError(f"{ENV}={value}: no such file")
    if MODULE in sys.modules:
        raise RuntimeError(f"{MODULE} was imported before the sanitized build was installed")
    sys.meta_path.insert(0, _SanitizedNative(path))
    _load_capstone_without_deepbind()
    return path


def check(path: Path) -> str:
    """Refuse to run unless the sanitized build and the ASan runtime are both live."""
    import hpatch
    from hpatch import _native

    loaded = Path(_native.__file__ or "").resolve()
    if loaded != path:
        raise RuntimeError(f"{MODULE} is {loaded}, not the sanitized build {path}")
    if hpatch.BACKEND != "native":
        raise RuntimeError(f"hpatch.BACKEND is {hpatch.BACKEND!r}, not 'native'")
    maps = Path("/proc/self/maps")
    if maps.is_file() and "libasan" not in maps.read_text():
        raise RuntimeError("the ASan runtime is not loaded (LD_PRELOAD=libasan.so missing)")
    return f"sanitized native core: {loaded}"


# --- pytest plugin ----------------------------------------------------------------

_PATH: Path | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args) -> None:  # type: ignore[no-untyped-def]
    # before tests/conftest.py, which imports hpatch and so chooses the backend
    global _PATH
    _PATH = install()


def pytest_report_header(config) -> str:  # type: ignore[no-untyped-def]
    assert _PATH is not None
    return check(_PATH)


def pytest_sessionstart(session) -> None:  # type: ignore[no-untyped-def]
    assert _PATH is not None
    check(_PATH)
