"""The C allocator's setting for a long-running worker: a fixed mmap threshold.

glibc's malloc serves a block of at least its mmap threshold (128 KiB at start) with its
own mapping, returned to the system when freed. Its default raises the threshold to the
size of any such block freed (up to 32 MiB), and from then on the large blocks of a
growing join (dict tables, the offset marks' lists and arrays, each copied to a larger
one as it grows) come from the heap, where the old ones leave holes the process keeps:
about 30 bytes per pending request of the worker's RSS at a million pending requests
(``python -m bench.memory``, docs/design-notes.md). Fixing the threshold keeps large
blocks in their own mappings, so memory follows the pending requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt's parameter number of the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
# glibc's own starting value: blocks this large or larger get their own mapping.
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to ``threshold_bytes`` for good (setting it turns its
    dynamic raise off). Returns False, changing nothing, where the C library is not
    glibc (musl, macOS) or refuses the value (some glibc versions cap it)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: absent from musl
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt: the allocator keeps its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
