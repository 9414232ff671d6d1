"""The command line fixes glibc's mapping threshold before any work."""

from __future__ import annotations

import platform
import sys

import pytest

from hpatch.allocator import give_back_freed_blocks

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_glibc_takes_the_threshold() -> None:
    assert give_back_freed_blocks() is True
    assert give_back_freed_blocks() is True  # again: the same setting


def test_the_command_line_sets_it_before_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import hpatch.allocator
    import hpatch.cli

    calls: list[str] = []
    monkeypatch.setattr(hpatch.allocator, "give_back_freed_blocks", lambda: calls.append("set"))
    monkeypatch.setattr(hpatch.cli, "_run", lambda *_: calls.append("run") or 0)
    with pytest.raises(SystemExit):
        hpatch.cli.main(["--version"])
    assert calls == ["set", "run"]
