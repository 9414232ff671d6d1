"""Build hook for the C extension; all metadata lives in pyproject.toml."""

from glob import glob

from setuptools import Extension, setup

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
