"""Build hook for the C extension; all metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hpatch._native",
            sources=["native/hpatch_native.c", "native/x64.c"],
            depends=["native/x64.h"],
            extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
