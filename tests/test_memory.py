"""The memory policy: a large array freed stays in the process's heap for the next one."""

import json
import os
import subprocess
import sys

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
taken = memory.retain_freed_memory()
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


def _probe(retain: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own settings, if any
    env[memory.ENV_VAR] = retain
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
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
