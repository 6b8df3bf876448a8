"""The process's memory policy: memory it frees stays with it, to be reused.

By default glibc serves each large array (NumPy's, XLA's) with its own ``mmap``
and returns it to the system when the array is freed, so the next array of that
size is fresh memory again. On virtual machines whose host backs guest memory
only when it is first touched and takes freed pages back (virtio-balloon free
page reporting, as on the machines this project is measured on), touching fresh
memory is far slower than reusing memory the process already holds, and it
showed as system time in every long command (docs/measurements.md, "Memory
reuse"). :func:`retain_freed_memory` makes large blocks come from the heap and
keeps freed heap memory for the next allocation; every thread started after it
shares the one heap (a thread's own arena would still ``mmap`` its large
blocks). Peak memory is unchanged; memory freed after a peak is not handed back
to the system until the process ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGEST = 2**31 - 1  # mallopt takes an int
ENV_VAR = "LOWRANK_RETAIN_MEMORY"  # "0": glibc's defaults (to compare, or where memory must go back early)


def retain_freed_memory() -> bool:
    """Applies the policy above to this process (glibc on Linux; elsewhere nothing is
    changed; ``LOWRANK_RETAIN_MEMORY=0`` keeps glibc's defaults). Call it before threads
    start. True when every setting was taken."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV_VAR) == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST))
    return all([mallopt(parameter, value) == 1 for parameter, value in settings])
