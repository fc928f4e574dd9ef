"""How mpigrad has the C allocator keep freed memory for reuse, set when mpigrad is imported.

A backward pass allocates its gradients afresh and frees them once they are summed or handed on,
and a message's arrays live for one step; numpy takes each from the C allocator.  glibc's
``malloc`` serves an array above its mmap threshold (128 KiB, raised to the size of the largest
freed one, at most 32 MiB) by mapping fresh pages, and hands freed memory at the top of its heap
back to the kernel once more than its trim threshold (twice that) is free; either way the next
step's arrays page-fault, and the kernel zero-fills every page on first touch.  A step that
allocates arrays of a few MiB then spends more time on fresh pages than on arithmetic.

So ``import mpigrad`` raises, with ``mallopt``, glibc's mmap threshold to 32 MiB (its largest),
its trim threshold to 1 GiB and its top pad to 64 MiB: arrays up to 32 MiB come from the heap, and
what a step frees stays there for the next.  The cost: the process's resident memory stays near
its peak, up to 1 GiB more than it holds.  Arrays above 32 MiB are mapped and unmapped as before.

``MPIGRAD_KEEP_FREED_MEMORY=0`` keeps glibc's defaults, and so does setting any of glibc's own
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` (the user's choice
stands).  Elsewhere than glibc (musl, macOS) nothing is changed.  ``kept()`` says what applied.
"""

import ctypes
import ctypes.util
import os

__all__ = ["KEEP_FREED_MEMORY", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD", "kept"]

KEEP_FREED_MEMORY = "MPIGRAD_KEEP_FREED_MEMORY"
MMAP_THRESHOLD, TRIM_THRESHOLD, TOP_PAD = 32 << 20, 1 << 30, 64 << 20
_GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def kept():
    """True where mpigrad set glibc's thresholds above; False where it left them (turned off,
    set by the user through glibc's variables, or not glibc)."""
    return _applied


def _keep_freed_memory():
    """Set the thresholds unless turned off; ValueError if ``MPIGRAD_KEEP_FREED_MEMORY`` is not
    ``0`` or ``1``."""
    text = os.environ.get(KEEP_FREED_MEMORY, "").strip()
    if text not in ("", "0", "1"):
        raise ValueError(f"{KEEP_FREED_MEMORY}={text!r}: expected 1 (the default) or 0")
    if text == "0" or any(name in os.environ for name in _GLIBC_VARS):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and mallopt(_M_TOP_PAD, TOP_PAD)
        and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )


_applied = _keep_freed_memory()
