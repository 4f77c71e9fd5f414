"""The worker's C allocator setting (worker/runtime/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from worker.runtime.allocator import fix_mmap_threshold

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere a no-op"
)


@glibc
def test_the_threshold_is_set_on_glibc() -> None:
    """glibc takes the default threshold (and so stops raising it by itself)."""
    assert fix_mmap_threshold() is True
