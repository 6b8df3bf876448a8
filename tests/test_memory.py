"""The memory policy: a large array freed stays in the process's heap for the next one, and NumPy's
arrays get no huge-page advice."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lowrank_core import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# In a fresh process (the policy is process-wide and for good): a 256 MiB array allocated by the main
# thread and by a thread started after the policy, then freed; glibc's own accounting (mallinfo2)
# says where its memory came from and whether it stayed.
PROBE = r"""
import ctypes, json, threading
import numpy as np
from lowrank_core import memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
taken = memory.apply()["retain_freed"]
seen = []

def allocate():
    array = np.ones(256 << 20, np.uint8)
    mapped = libc.mallinfo2().hblkhd
    del array
    seen.append({"mapped_mib": mapped >> 20, "kept_after_free_mib": libc.mallinfo2().fordblks >> 20})

allocate()
thread = threading.Thread(target=allocate)
thread.start()
thread.join()
print(json.dumps({"taken": taken, "seen": seen}))
"""


def _probe(retain: str, probe: str = PROBE) -> dict:
    # glibc's and NumPy's own settings, if any, left out
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "NUMPY_MADVISE"))}
    env[memory.ENV_VAR] = retain
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_freed_arrays_stay_in_the_heap_in_every_thread_started_after_it():
    probe = _probe("1")
    assert probe["taken"] is True
    for seen in probe["seen"]:  # the main thread's and a later thread's
        assert seen["mapped_mib"] < 256 and seen["kept_after_free_mib"] >= 256


def test_switched_off_glibc_maps_and_returns_large_arrays():
    probe = _probe("0")
    assert probe["taken"] is False
    for seen in probe["seen"]:
        assert seen["mapped_mib"] >= 256 and seen["kept_after_free_mib"] < 256


# A 64 MiB array touched after the policy: NumPy's huge-page advice (its state read back through the
# switch itself) and, from the kernel's own accounting, how much of the array huge pages back.
PAGES = r"""
import json, re
import numpy as np
from lowrank_core import memory

def huge_kib():
    return int(re.search(r"AnonHugePages:\s+(\d+)", open("/proc/self/smaps_rollup").read()).group(1))

taken = memory.apply()["small_pages"]
before = huge_kib()
array = np.ones(64 << 20, np.uint8)
grew = huge_kib() - before
toggle = np._core.multiarray._set_madvise_hugepage
advice = toggle(True)
toggle(advice)
print(json.dumps({"taken": taken, "advice": advice, "huge_kib": grew}))
"""


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


@pytest.mark.skipif(not hasattr(np._core.multiarray, "_set_madvise_hugepage"), reason="NumPy's huge-page switch")
def test_numpy_arrays_get_no_huge_page_advice():
    on, off = _probe("1", PAGES), _probe("0", PAGES)
    assert on["taken"] is True and on["advice"] is False
    assert off["taken"] is False and off["advice"] is True  # NumPy's default, kept when switched off
    if _thp_mode() == "madvise":  # huge pages only where advised: none for this array
        assert on["huge_kib"] == 0
