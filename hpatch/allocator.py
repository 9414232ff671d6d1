"""The C allocator told to give freed blocks back to the system at once.

glibc serves a block of 128 KiB or more from a mapping of its own and unmaps it when
it is freed, but after the first such free it raises that threshold (up to 32 MiB) to
spare later allocations the system calls: blocks below the new threshold then come
from the heap, and what is freed between long-lived objects stays there. A diff holds
its two images and frees the work of each stage before the next (function discovery's
sites, the references of the functions it fingerprints), so with the threshold
raised the process keeps what it freed: its peak on two 20 MB DLLs moved between 126
and 152 MiB with nothing but the working directory changed. Fixing the threshold at
glibc's own starting value keeps the peak at what the work holds (see bench/README.md).
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt parameter numbers (glibc malloc.h) and the threshold it starts from.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 << 10


def give_back_freed_blocks() -> bool:
    """Fix glibc's mapping threshold at 128 KiB; True if the allocator took it (False
    elsewhere: another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
