"""The receive-buffer pool (Note [received buffers] in mpigrad/distributed/buffers.py): a buffer is
reused only once every array over it is gone, idle buffers are bounded in bytes, least recently
given back first out.  Serial: buffers are taken from the pool directly."""

import subprocess
import sys
import weakref

import numpy as np
import pytest
from spawn import child_env

from mpigrad import memory
from mpigrad.distributed.buffers import POOL_MIN_BYTES, BufferPool, Lease

MIB = 1 << 20


def buffer_of(array):
    """A weak reference to the pool's buffer behind ``array``."""
    assert type(array.base) is Lease
    return weakref.ref(array.base.buffer)


def test_a_buffer_given_back_is_received_into_again():
    pool = BufferPool(64 * MIB)
    a = pool.receive((2 * MIB // 8,), np.float64)
    assert a.flags.writeable and a.shape == (2 * MIB // 8,) and a.dtype == np.float64
    kept, address = buffer_of(a), a.ctypes.data
    del a
    assert pool.idle_bytes == 2 * MIB
    b = pool.receive((512, 1024), np.float32)  # the same number of bytes
    assert b.base.buffer is kept() and b.ctypes.data == address
    assert b.shape == (512, 1024) and b.dtype == np.float32 and b.flags.writeable
    assert pool.idle_bytes == 0


def test_no_buffer_is_reused_while_a_view_of_it_lives():
    for make_view in (lambda a: a[10:], lambda a: a.reshape(-1).view(np.uint8), lambda a: a.T):
        pool = BufferPool(64 * MIB)
        a = pool.receive((MIB // 8, 2), np.float64)
        kept = buffer_of(a)
        view = make_view(a)
        del a
        assert pool.idle_bytes == 0
        b = pool.receive((MIB // 8, 2), np.float64)
        assert b.base.buffer is not kept()
        view[...] = 1
        b[...] = 2
        assert np.all(view == 1) and not np.shares_memory(view, b)
        del view
        assert pool.idle_bytes == 2 * MIB  # the view was the last: the buffer came back
        assert pool.receive((2 * MIB,), np.uint8).base.buffer is kept()


def test_small_payloads_get_fresh_arrays():
    pool = BufferPool(64 * MIB)
    a = pool.receive((POOL_MIN_BYTES // 8 - 1,), np.float64)
    assert a.base is None and a.flags.writeable
    del a
    assert pool.idle_bytes == 0


def test_a_pool_of_zero_bytes_keeps_nothing():
    pool = BufferPool(0)
    a = pool.receive((4 * MIB,), np.uint8)
    assert a.base is None and a.flags.writeable


def test_the_least_recently_given_back_buffer_goes_first():
    sizes = (MIB, MIB + 8, MIB + 16)
    pool = BufferPool(3 * MIB)
    a, b, c = (pool.receive((n,), np.uint8) for n in sizes)
    ref_a, ref_b, ref_c = buffer_of(a), buffer_of(b), buffer_of(c)
    del a, b
    assert pool.idle_bytes == sizes[0] + sizes[1]
    a = pool.receive((sizes[0],), np.uint8)  # taken and given back: now the most recent
    assert a.base.buffer is ref_a()
    del a
    del c  # over the bound: b, given back longest ago, is dropped
    assert ref_b() is None and ref_a() is not None and ref_c() is not None
    assert pool.idle_bytes == sizes[0] + sizes[2]


def test_idle_bytes_stay_within_the_bound_and_leased_ones_do_not_count():
    pool = BufferPool(4 * MIB + 4096)
    arrays = [pool.receive((MIB + 4096 * i,), np.uint8) for i in range(10)]
    assert pool.idle_bytes == 0  # all handed out: they belong to their arrays
    refs = [buffer_of(a) for a in arrays]
    while arrays:
        del arrays[0]  # given back in order
    assert pool.idle_bytes <= pool.limit_bytes
    kept = [i for i, r in enumerate(refs) if r() is not None]
    assert kept == [7, 8, 9]  # the most recent that fit
    assert pool.idle_bytes == sum(MIB + 4096 * i for i in kept)


def test_release_drops_idle_buffers_and_forgets_those_handed_out():
    pool = BufferPool(64 * MIB)
    idle, out = pool.receive((2 * MIB,), np.uint8), pool.receive((3 * MIB,), np.uint8)
    ref_idle, ref_out = buffer_of(idle), buffer_of(out)
    del idle
    pool.release()
    assert pool.idle_bytes == 0 and ref_idle() is None
    out[...] = 7  # still the array's own
    del out
    assert pool.idle_bytes == 0 and ref_out() is None  # freed, not kept
    again = pool.receive((2 * MIB,), np.uint8)  # the pool stays usable
    ref_again = buffer_of(again)
    del again
    assert pool.receive((2 * MIB,), np.uint8).base.buffer is ref_again()


def test_the_process_pool_and_release():
    done = _child(
        None,
        (
            "from mpigrad.distributed.buffers import Lease\n"
            "a = buffers.receive_buffer((1 << 20,), np.uint16)\n"
            "assert type(a.base) is Lease, a.base\n"
            "del a\n"
            "assert buffers.pool().idle_bytes >= 2 << 20\n"
            "buffers.release()\n"
            "assert buffers.pool().idle_bytes == 0\n"
        ),
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not memory.kept(), reason="mpigrad keeps freed memory on glibc only")
def test_where_freed_memory_is_kept_payloads_get_fresh_arrays():
    # The allocator reuses freed pages already (Note [received buffers]).
    done = _child(
        None,
        (
            "print(buffers.pool().limit_bytes)\n"
            "print(buffers.receive_buffer((4 << 20,), np.uint8).base is None)\n"
        ),
        keep_freed_memory=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True"]


def test_a_buffer_given_back_while_the_pool_is_busy_is_not_lost():
    # A lease can die while the pool holds its lock (a garbage collection inside receive): its
    # buffer waits and becomes idle when the holder lets go.
    pool = BufferPool(64 * MIB)
    a = pool.receive((2 * MIB,), np.uint8)
    kept = buffer_of(a)
    with pool._lock:
        del a
    assert pool.receive((2 * MIB,), np.uint8).base.buffer is kept()


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_memory_stays_flat_over_many_sizes():
    # 1000 payloads of random sizes from 1 to 16 MiB, each written page by page and dropped:
    # the pool keeps at most its bound idle, so the process grows by no more than that, the
    # one live payload and some slack for malloc, which keeps freed heap pages (measured:
    # 35-50 MiB over the first two; without a bound 100 payloads alone grow it by 860 MiB).
    limit, slack = 64 * MIB, 64 * MIB
    pool = BufferPool(limit)
    rng = np.random.default_rng(0)
    start = _resident_bytes()
    peak = start
    for nbytes in rng.integers(MIB, 16 * MIB, size=1000):
        a = pool.receive((int(nbytes),), np.uint8)
        a[::4096] = 1
        peak = max(peak, _resident_bytes())
        del a
    assert pool.idle_bytes <= limit
    assert peak - start < limit + 16 * MIB + slack, f"grew by {(peak - start) / MIB:.0f} MiB"


def _child(value, script, keep_freed_memory=False):
    """Run ``script`` in a new process with ``MPIGRAD_POOL_BYTES`` set to ``value`` (None:
    unset), where mpigrad keeps no freed memory unless ``keep_freed_memory``."""
    env = child_env()
    env.pop("MPIGRAD_POOL_BYTES", None)
    env["MPIGRAD_KEEP_FREED_MEMORY"] = "1" if keep_freed_memory else "0"
    if value is not None:
        env["MPIGRAD_POOL_BYTES"] = value
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import numpy as np\nfrom mpigrad.distributed import buffers\n" + script,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "value, limit", [(None, 256 * MIB), ("", 256 * MIB), ("12345678", 12345678), (" 0 ", 0)]
)
def test_the_variable_sets_the_bound_once(value, limit):
    done = _child(
        value,
        (
            "import os\n"
            "print(buffers.pool().limit_bytes)\n"
            "os.environ['MPIGRAD_POOL_BYTES'] = '1'\n"  # read once: a later change does nothing
            "print(buffers.pool().limit_bytes)\n"
            "print(buffers.receive_buffer((4 << 20,), np.uint8).base is None)\n"
        ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(limit), str(limit), str(limit == 0)]


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "64M"])
def test_a_bad_value_of_the_variable_is_an_error_naming_it(value):
    done = _child(value, "buffers.receive_buffer((4 << 20,), np.uint8)\n")
    assert done.returncode != 0
    assert "ValueError: MPIGRAD_POOL_BYTES=" in done.stderr
    assert "expected a whole number of bytes, 0 or more" in done.stderr
