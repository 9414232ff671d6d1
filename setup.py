"""Build hook for the C extension; all metadata lives in pyproject.toml."""

import runpy
from glob import glob
from pathlib import Path

from setuptools import Extension, setup

# native/constants.h: the numbers the C core shares with Python, written from the
# Python enums (hpatch/arch/kinds.py, hpatch/arch/base.py) before every build.
runpy.run_path(str(Path(__file__).parent / "native" / "constants.py"))["main"]([])

setup(
    ext_modules=[
        Extension(
            "hpatch._native",
            sources=sorted(glob("native/*.c")),
            depends=sorted(glob("native/*.h")),
            extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
