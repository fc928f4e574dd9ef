"""mpigrad.memory: glibc keeps freed memory once mpigrad is imported, unless turned off.

Each case runs in a fresh interpreter (the thresholds are process-wide): it imports mpigrad,
allocates a 4 MiB array and reports ``kept()`` and how many memory maps glibc's malloc holds
(``mallinfo2().hblks``) before and after.  Above glibc's default mmap threshold, the array is
mapped afresh; below mpigrad's, it comes from the heap.
"""

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")

PROBE = """
import ctypes, json
import numpy as np
import mpigrad

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblks
array = np.ones(1 << 19)  # 4 MiB
print(json.dumps({"kept": mpigrad.memory.kept(), "maps": mallinfo2().hblks - before}))
"""


def _probe(**env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MPIGRAD_KEEP"))}
    environ.update(env, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
@pytest.mark.parametrize(
    "env, kept",
    [
        ({}, True),
        ({"MPIGRAD_KEEP_FREED_MEMORY": "1"}, True),
        ({"MPIGRAD_KEEP_FREED_MEMORY": "0"}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, False),  # the user's own choice stands
        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, False),
    ],
)
def test_import_keeps_freed_memory_unless_turned_off(env, kept):
    assert _probe(**env) == {"kept": kept, "maps": 0 if kept else 1}


def test_a_bad_setting_raises_naming_the_variable():
    environ = dict(os.environ, MPIGRAD_KEEP_FREED_MEMORY="yes", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", "import mpigrad"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "MPIGRAD_KEEP_FREED_MEMORY='yes': expected 1 (the default) or 0" in done.stderr
