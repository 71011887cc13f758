"""Keep a long-running daemon's memory returnable to the system (glibc's malloc only).

The daemon's large tables (a dict or list per token set, at 100,000 tokens
several megabytes each) are reallocated as they grow. glibc raises its mmap
threshold each time such a mapped block is freed, so later large blocks land
on the heap instead, where freeing them leaves holes the process keeps: about
0.4 KB a token at 100,000 tokens, measured. A fixed threshold keeps large
blocks mapped, so a table that grew gives its old block back at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024
"""glibc's default starting threshold, held fixed instead of growing."""


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold; ``False`` where that does not apply (another libc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
