"""How mpigrad has the C allocator keep freed memory for reuse, set when mpigrad is imported.

A training or time-stepping loop allocates the same arrays every pass: a forward's outputs, a
backward's gradients, a message's buffers, each freed once it is summed or handed on.  numpy
takes each from the C allocator.  glibc's ``malloc`` serves an array above its mmap threshold
(128 KiB, raised to the size of the largest freed one, at most 32 MiB) by mapping fresh pages,
and hands freed memory at the top of its heap back to the kernel once more than its trim
threshold (twice that) is free; either way the next pass's arrays page-fault, and the kernel
zero-fills every page on first touch.  A pass over arrays of a few MiB or more then spends as
much time on fresh pages as on arithmetic.

So ``import mpigrad`` tells glibc, with ``mallopt``, to map no array on its own
(``M_MMAP_MAX`` 0: every array, however large, comes from the heap), to keep up to 1 GiB free
at the top of its heap (trim threshold) and to grow it by 64 MiB more than asked (top pad).
What a pass frees then serves the next pass's arrays of the same sizes, without a page fault.
Ownership is unchanged: numpy frees an array when nothing refers to it, and only then does
``malloc`` hand its memory out again.

The cost is resident memory.  The resident size stays near its peak, up to 1 GiB above what the
process holds; and an array freed below one still alive (a large one-off temporary, then a
small array kept) keeps its pages until the heap reuses them, where glibc would have unmapped
it.  ``release()`` hands every free page back to the kernel (glibc's ``malloc_trim``): call it
after such a temporary, not in a loop.  Threads other than the main one allocate from arenas of
their own, where glibc still maps the largest arrays.

``MPIGRAD_KEEP_FREED_MEMORY=0`` keeps glibc's defaults, and so does setting any of glibc's own
``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` (the user's choice stands).  Elsewhere than glibc (musl, macOS) nothing is
changed.  ``kept()`` says what applied.
"""

import ctypes
import ctypes.util
import os

__all__ = ["KEEP_FREED_MEMORY", "TRIM_THRESHOLD", "TOP_PAD", "kept", "release"]

KEEP_FREED_MEMORY = "MPIGRAD_KEEP_FREED_MEMORY"
TRIM_THRESHOLD, TOP_PAD = 1 << 30, 64 << 20
_GLIBC_VARS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's malloc.h


def kept():
    """True where mpigrad set glibc's options above; False where it left them (turned off,
    set by the user through glibc's variables, or not glibc)."""
    return _applied


def release():
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``); True where
    any went back.  Where mpigrad did not keep freed memory (``kept()`` is False), does nothing
    and returns False."""
    return bool(_applied and _libc.malloc_trim(0))


def _glibc():
    """The C library, or None where it lacks glibc's ``mallopt`` and ``malloc_trim``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _keep_freed_memory():
    """Set the options unless turned off; ValueError if ``MPIGRAD_KEEP_FREED_MEMORY`` is not
    ``0`` or ``1``."""
    text = os.environ.get(KEEP_FREED_MEMORY, "").strip()
    if text not in ("", "0", "1"):
        raise ValueError(f"{KEEP_FREED_MEMORY}={text!r}: expected 1 (the default) or 0")
    if text == "0" or any(name in os.environ for name in _GLIBC_VARS) or _libc is None:
        return False
    mallopt = _libc.mallopt
    return bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and mallopt(_M_TOP_PAD, TOP_PAD)
        and mallopt(_M_MMAP_MAX, 0)
    )


_libc = _glibc()
_applied = _keep_freed_memory()
