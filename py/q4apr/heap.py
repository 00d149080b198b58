"""Native runs only: keep the memory numpy's temporaries are freed to.

Converting a chunk allocates and frees a few MiB of temporaries.  glibc hands blocks
that large back to the kernel at once (mmap/munmap, or trimming the heap's top), so the
next chunk page-faults and zeroes them all over again: ~15 % of a 1 GiB run's CPU time
(perf), and with several workers the kernel's memory-map lock is shared too.  Asking glibc
to keep them costs no more memory than the run's peak, which it reaches anyway.
"""

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 64 << 20) -> bool:
    """Blocks up to `limit` bytes come from the heap and stay there when freed (glibc's
    mallopt; elsewhere nothing changes).  Returns whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version   # glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * limit))
