"""The daemon fixes glibc's mmap threshold, so a grown table's old block goes back at once.

What it saves is measured by the benchmark suite (``python -m bench --only start``:
peak RSS slope); here only that it takes effect where the daemon runs.
"""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from tokend.daemon.memory import keep_large_blocks_mapped

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="mallopt's mmap threshold is glibc's",
)


@glibc
def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    assert keep_large_blocks_mapped() is True
