"""The process's memory policy: small pages for NumPy's arrays, and memory freed kept for reuse.

On the virtual machines this project is measured on, touching memory a process
has never used is slow in two ways (docs/measurements.md, "Memory reuse"):

- NumPy advises the kernel to back every array of 4 MiB or more with
  transparent huge pages (``madvise(MADV_HUGEPAGE)``), and with the kernel's
  ``defrag`` setting at ``madvise`` each such fault compacts memory to find a
  free 2 MiB page, synchronously: 150 MB of new array took 1.7 s here, 0.07 s
  with 4 KiB pages. :func:`small_pages_for_numpy` turns that advice off, as
  ``NUMPY_MADVISE_HUGEPAGE=0`` would at import (a value set in that variable is
  left to rule).
- glibc serves each large array with its own ``mmap`` and returns it when the
  array is freed, so the next one is fresh memory again.
  :func:`retain_freed_memory` makes large blocks come from the one heap and
  keeps freed heap memory for the next allocation; memory freed after a peak
  goes back to the system only when the process ends.

:func:`apply` does both; the CLI and the app call it first.
``LOWRANK_RETAIN_MEMORY=0`` keeps glibc's and NumPy's defaults (to compare, or
where memory must go back early).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import numpy as np

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGEST = 2**31 - 1  # mallopt takes an int
ENV_VAR = "LOWRANK_RETAIN_MEMORY"  # "0": glibc's and NumPy's defaults


def apply() -> dict[str, bool]:
    """The policy above, for this process (call it before threads start); which parts were taken."""
    if os.environ.get(ENV_VAR) == "0":
        return {"small_pages": False, "retain_freed": False}
    return {"small_pages": small_pages_for_numpy(), "retain_freed": retain_freed_memory()}


def small_pages_for_numpy() -> bool:
    """New NumPy arrays get no huge-page advice (unless ``NUMPY_MADVISE_HUGEPAGE`` says
    otherwise). True when the advice is off."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0"
    toggle = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if toggle is None:  # a NumPy without the switch
        return False
    toggle(False)
    return True


def retain_freed_memory() -> bool:
    """Large blocks from the heap, freed heap memory kept (glibc on Linux; elsewhere nothing
    is changed). Every thread started after it shares the one heap (a thread's own arena
    would still ``mmap`` its large blocks). True when every setting was taken."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST))
    return all([mallopt(parameter, value) == 1 for parameter, value in settings])
