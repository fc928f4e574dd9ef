"""mpigrad.memory: glibc keeps freed memory once mpigrad is imported, unless turned off.

Each setting is probed in a fresh interpreter (the options are process-wide): it imports mpigrad,
allocates a 64 MiB array (above the largest mmap threshold glibc allows, 32 MiB) and reports
``kept()``, how many memory maps glibc's malloc holds (``mallinfo2().hblks``) before and after,
and the minor page faults of the same allocation made again once the first is freed.  Kept,
the array comes from the heap and the second one reuses its pages; otherwise each is mapped
afresh and faulted in.
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
glibc_only = pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")

PROBE = """
import ctypes, json, resource
import numpy as np
import mpigrad

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblks
array = np.ones(8 << 20)  # 64 MiB
maps = mallinfo2().hblks - before
del array
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
array = np.ones(8 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"kept": mpigrad.memory.kept(), "maps": maps, "faults": faults}))
"""

# A large one-off temporary freed below a small array still alive: kept, its pages stay until
# release() hands them back.  Resident MiB after the free and after release().
PINNED = """
import json
import numpy as np
import mpigrad

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / (1 << 20)

temp = np.ones(32 << 20)  # 256 MiB
alive = np.ones(1 << 10)
base = resident() - 256
del temp
freed = resident() - base
released = mpigrad.memory.release()
print(json.dumps({"freed": freed, "released": released, "after": resident() - base}))
"""


def _run(code, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MPIGRAD_KEEP"))}
    environ.update(env, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@glibc_only
@pytest.mark.parametrize(
    "env, kept",
    [
        ({}, True),
        ({"MPIGRAD_KEEP_FREED_MEMORY": "1"}, True),
        ({"MPIGRAD_KEEP_FREED_MEMORY": "0"}, False),
        ({"MALLOC_MMAP_MAX_": "65536"}, False),  # the user's own choice stands
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, False),
        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, False),
    ],
)
def test_import_keeps_freed_memory_unless_turned_off(env, kept):
    found = _run(PROBE, **env)
    assert (found["kept"], found["maps"]) == (kept, 0 if kept else 1)
    # Kept, the second 64 MiB reuses the first's pages; else its 16 384 pages (32 huge ones
    # where transparent huge pages are on) fault in afresh.
    assert found["faults"] < 16 if kept else found["faults"] >= 32


@glibc_only
def test_release_hands_back_what_a_freed_temporary_kept():
    found = _run(PINNED)
    assert found["freed"] > 200, "the freed temporary's pages should stay in the heap"
    assert found["released"] is True
    assert found["after"] < 50, found


@glibc_only
def test_release_does_nothing_where_memory_is_not_kept():
    found = _run(PINNED, MPIGRAD_KEEP_FREED_MEMORY="0")
    assert found["freed"] < 50, "glibc's defaults unmap a freed 256 MiB array"
    assert found["released"] is False


# Passes of a loop over 64 MiB arrays, each holding on to its gradient: whether each held
# gradient still has its pass's values after the later passes, which reuse freed pages.
PASSES = """
import json
import numpy as np
import mpigrad as mg

n = 8 << 20
x = mg.tensor(np.ones(n), requires_grad=True)
held = []
for step in range(3):
    c = mg.tensor(np.full(n, float(step + 1)))
    ((x * 2) * c).sum().backward()
    held.append(x.grad)
    x.grad = None
found = [[float(g.data.min()), float(g.data.max())] for g in held]
print(json.dumps({"kept": mg.memory.kept(), "grads": found}))
"""


@pytest.mark.parametrize("keep", ["1", "0"])
def test_a_gradient_handed_over_survives_later_passes_that_reuse_memory(keep):
    found = _run(PASSES, MPIGRAD_KEEP_FREED_MEMORY=keep)
    assert found["kept"] == (keep == "1" and GLIBC)
    assert found["grads"] == [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]


@pytest.mark.parametrize("text", ["yes", "2", "true"])
def test_a_bad_setting_raises_naming_the_variable(text):
    environ = dict(os.environ, MPIGRAD_KEEP_FREED_MEMORY=text, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", "import mpigrad"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"MPIGRAD_KEEP_FREED_MEMORY={text!r}: expected 1 (the default) or 0" in done.stderr
