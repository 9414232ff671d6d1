"""The redirect fit rule lives in arch, shared by the differ and the applier: its
reasons are the differ's blocker causes, and applying a package never loads the differ."""

from __future__ import annotations

import subprocess
import sys

from hpatch.arch.redirect_fit import Misfit, entry_room, misfit, redirect_problem
from hpatch.arch.rewrite import Redirect
from hpatch.blockers import BlockerCause, BlockerClass
from hpatch.image import load_image

from ..conftest import SAMPLES


def test_every_misfit_is_a_limitation_the_differ_names() -> None:
    for reason in Misfit:
        assert BlockerCause(reason.value).blocker_class == BlockerClass.LIMITATION


def test_the_rule_on_a_sample() -> None:
    # gcc packs small functions 8 bytes apart: no room for a 14-byte absolute jump
    image = load_image(SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll")
    fitting = [
        f for f in image.functions if redirect_problem(image, f, Redirect.X64_JMP_REL32) is None
    ]
    assert fitting, "most functions take a 5-byte jump"
    tiny = min(image.functions, key=lambda f: f.size + f.padding_after)
    room = entry_room(image, tiny)
    assert room[0] < 14  # a small function with little padding after it
    found = misfit(image, tiny, Redirect.X64_JMP_ABS64, room)
    assert found is not None and found[0] == Misfit.NO_REDIRECT_ROOM


def test_applying_does_not_load_the_differ() -> None:
    script = (
        "import sys, hpatch.apply\n"
        "print(sorted(m for m in sys.modules if m.startswith('hpatch.diff')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
