"""Which path a kernel call takes (``route``), from one table of thresholds, and the calls that
take it; the Numba and numba.cuda kernels load here, on first use.

A call's arrays (``dst`` first) take the first row that fits them:

- ``"cuda"``: all are device arrays (Numba's, or any with ``__cuda_array_interface__``), for
  ``cuda.py``'s kernels. Host and device arrays mixed raise ValueError.
- ``"numpy"``: a scatter of at most ``SCATTER_NUMPY_MAX_SIZE`` source elements into plain
  ndarrays (``np.add.at``, whose fixed cost is a fraction of the Numba call's).
- ``"numba-parallel"``: the Numba kernels take them (below) and the largest has at least
  ``PARALLEL_MIN_SIZE`` elements, with more than one thread (Note [kernel threads]): one pass,
  split over threads.
- Sums (``accumulate``, ``sum_into``) with ``dst`` of at most ``SMALL_MAX_BYTES``: the sources one
  at a time, each by ``cpu.accumulate_small`` (a serial loop that beats ``np.add`` while the
  arrays sit in cache) where it takes the pair (plain ndarrays, both C-contiguous, no shared
  memory), else by ``np.add``. ``backend`` names ``"numba-serial"`` when the loop takes every
  source, else ``"numpy"``.
- ``"numpy"``: the Numba kernels do not take them: an ndarray subclass, a dtype outside
  ``NUMBA_DTYPES``, layouts other than all C- or all F-contiguous, ``dst`` sharing memory with
  another argument; every host call under ``MPIGRAD_KERNELS=numpy``. Also a sum of one source:
  beyond the cache one ``np.add`` is as fast as a serial loop and has nothing to fuse.
  NumPy ufuncs, no copies (``reference.py``).
- ``"numba-serial"``: the rest (a scatter, or a sum of several sources beyond the cache): one
  pass on one thread.

Numba is a dependency: only ``MPIGRAD_KERNELS=numpy`` keeps host calls off it.
"""

import functools
import os

import numpy as np

from . import checks, reference
from .threads import get_num_threads

__all__ = [
    "BACKENDS",
    "NUMBA_DTYPES",
    "PARALLEL_MIN_SIZE",
    "SCATTER_NUMPY_MAX_SIZE",
    "SMALL_MAX_BYTES",
    "accumulate",
    "backend",
    "cuda_kernels",
    "numba_kernels",
    "route",
    "scatter_add",
    "sum_into",
]

BACKENDS = ("cuda", "numba-parallel", "numba-serial", "numpy")
"""The paths ``route`` returns."""

# The thresholds. SMALL_MAX_BYTES < PARALLEL_MIN_SIZE (elements of a byte or more): a sum small
# enough for the one-source-at-a-time row is never split over threads, whatever the row order.
PARALLEL_MIN_SIZE = 1 << 20
"""Elements (of the call's largest array) from which a call runs on threads: below, waking them
costs more than they save."""

SMALL_MAX_BYTES = 1 << 19
"""Largest ``dst`` (bytes) whose sums go one source at a time, by the serial loop where it takes
them. Measured on one 2-core machine against ``np.add(dst, src, out=dst)``, dispatch included:
the loop was 1.7-1.9x faster up to 4 Ki elements, 1.1-1.4x from 16 Ki to 64 Ki (arrays in L2),
no faster from 1 MiB. Above it several sources take one pass, which measured 1.2-1.5x faster
than an ``np.add`` per source from 64 Ki to 512 Ki float64, and 3-4x slower on tiny arrays,
where its setup dominates."""

SCATTER_NUMPY_MAX_SIZE = 64
"""Largest scatter (elements of ``src``) that ``np.add.at`` takes: below, the Numba call's fixed
cost (its dispatch, route and the Python checks: about 10 us) is most of the call. Measured on
one 2-core machine, ``np.add.at`` alone took 1.5-5 us up to 64 elements of float64 (1-D, or rows
of 8), the Numba kernel alone 7-14 us; with rows of 8 ``np.add.at`` is slower from 128."""


NUMBA_DTYPES = frozenset(
    np.dtype(name)
    for name in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float32", "float64", "complex64", "complex128",
    )
)  # fmt: skip
"""The dtypes the Numba kernels take."""


def accumulate(dst, src):
    """``dst += src`` in place; returns ``dst``.

    Raises ValueError when shapes or dtypes differ (naming both), or ``dst`` is read-only.
    """
    if type(dst) is np.ndarray and type(src) is np.ndarray:
        # The serial rows of route, tried before it: the loop checks its own arguments (in
        # compiled code) and declines, and NumPy refuses another dtype (casting="no") or a
        # read-only dst before writing. Only a call both refuse pays for route and the checks,
        # which then name the problem: they cost more than a small add itself.
        dtype = dst.dtype
        if dst.nbytes <= SMALL_MAX_BYTES and src.dtype is dtype and dtype in NUMBA_DTYPES:
            cpu = numba_kernels()
            if cpu is not None and cpu.accumulate_small(dst, src):
                return dst
        if dst.shape == src.shape and not _parallel(dst.size):
            try:
                return np.add(dst, src, out=dst, casting="no")
            except (TypeError, ValueError):
                pass
    _sum(route("accumulate", (dst, src)), "accumulate", dst, (src,))
    return dst


def sum_into(dst, srcs):
    """``for s in srcs: dst += s`` in place; returns ``dst``.

    Each element is ``((dst + s0) + s1) + ...``; beyond the cache, ``dst`` is read and written
    once per four sources rather than once per source. Raises ValueError when a source's shape or
    dtype differs from ``dst`` (naming ``srcs[i]``), or ``dst`` is read-only.
    """
    srcs = tuple(srcs)
    if _small_sum(dst, srcs):
        cpu = numba_kernels() if dst.dtype in NUMBA_DTYPES else None
        for src in srcs:
            if cpu is None or not cpu.accumulate_small(dst, src):
                np.add(dst, src, out=dst)
        return dst
    _sum(route("sum_into", (dst, *srcs)), "sum_into", dst, srcs)
    return dst


def scatter_add(dst, index, src):
    """``dst[index[i]] += src[i]`` for i in order, in place; returns ``dst``.

    ``dst`` has shape ``(N, *rest)``, ``index`` is 1-D of integers in ``[-N, N)`` (negative ones
    count from the end, as in NumPy), ``src`` has shape ``(len(index), *rest)``. Repeated indices
    accumulate, unlike ``dst[index] += src``. Raises TypeError for a non-integer index,
    ValueError for a bad shape or dtype, and IndexError naming the first out-of-range index
    value and N (before any write).
    """
    if _small_scatter(dst, index, src):
        # route's small-scatter row, tried before it (route costs as much as the add): NumPy
        # checks every index before it writes, and the reference kernel then finds the first
        # one out of range, again before any write.
        checks.check_scatter(dst, index, src)
        try:
            np.add.at(dst, index, src)
        except IndexError:
            bad = reference.scatter_add(dst, index, src)
            raise checks.out_of_range(int(index[bad]), bad, dst.shape[0]) from None
        return dst
    path = route("scatter_add", (dst, index, src))
    checks.check_scatter(dst, index, src)
    if path == "cuda":
        bad = cuda_kernels().scatter_add(dst, index, src)
    elif path == "numpy":
        bad = reference.scatter_add(dst, index, src)
    else:
        bad = numba_kernels().scatter_add(dst, index, src, _threads(path))
    if bad >= 0:
        raise checks.out_of_range(int(index[bad]), bad, dst.shape[0])
    return dst


def backend(dst, *others):
    """The path (one of ``BACKENDS``) a kernel call on these arrays takes.

    Pass the call's arrays in order: ``backend(dst, src)``, ``backend(dst, *srcs)``,
    ``backend(dst, index, src)``. Arrays that all have ``dst``'s shape and dtype are read as a
    sum, others as a scatter (both readings give one answer where both fit). Raises as the call
    would for arrays of the wrong kind.
    """
    shape, dtype = getattr(dst, "shape", None), getattr(dst, "dtype", None)
    same = all(
        getattr(a, "shape", None) == shape and getattr(a, "dtype", None) == dtype for a in others
    )
    return route("sum_into" if same else "scatter_add", (dst, *others))


def route(op, arrays):
    """The path of ``op`` (``"accumulate"``, ``"sum_into"`` or ``"scatter_add"``) on ``arrays``,
    ``dst`` first: see the module docstring.

    Raises TypeError for an argument that is no array, ValueError for host and device arrays
    mixed or a read-only ``dst``.
    """
    plain, largest = True, 0
    for a in arrays:
        if type(a) is not np.ndarray:
            if not isinstance(a, np.ndarray):
                return _route_device(op, arrays)
            plain = False
        elif a.size > largest:
            largest = a.size
    dst = arrays[0]
    if not dst.flags.writeable:
        raise ValueError(f"{op}: dst is read-only")
    if op == "scatter_add" and _small_scatter(*arrays):
        return "numpy"
    takes = plain and numba_kernels() is not None and _numba_takes(arrays)
    if takes and _parallel(largest):
        return "numba-parallel"
    if op != "scatter_add" and dst.nbytes <= SMALL_MAX_BYTES:
        loop = plain and all(_loop_takes(dst, src) for src in arrays[1:])
        return "numba-serial" if loop and numba_kernels() is not None else "numpy"
    one_source = len(arrays) == 2 and op != "scatter_add"
    return "numba-serial" if takes and not one_source else "numpy"


def _parallel(size):
    """Whether a call whose largest array has ``size`` elements runs on threads."""
    return size >= PARALLEL_MIN_SIZE and get_num_threads() > 1


def _threads(path):
    return get_num_threads() if path == "numba-parallel" else 1


def _small_sum(dst, srcs):
    """Whether ``dst`` and ``srcs`` are plain ndarrays of one shape and dtype, with ``dst``
    writable and at most ``SMALL_MAX_BYTES``: route's one-source-at-a-time row."""
    if type(dst) is not np.ndarray or dst.nbytes > SMALL_MAX_BYTES:
        return False
    if not dst.flags.writeable:
        return False
    shape, dtype = dst.shape, dst.dtype
    for src in srcs:
        if type(src) is not np.ndarray or src.shape != shape or src.dtype != dtype:
            return False
    return True


def _small_scatter(dst, index, src):
    """Whether a scatter takes route's small-scatter row: plain ndarrays, ``dst`` writable, a
    signed integer ``index`` (which ``np.add.at`` takes as it is) and at most
    ``SCATTER_NUMPY_MAX_SIZE`` elements of ``src``."""
    return (
        type(src) is np.ndarray
        and src.size <= SCATTER_NUMPY_MAX_SIZE
        and type(dst) is np.ndarray
        and type(index) is np.ndarray
        and index.dtype.kind == "i"
        and dst.flags.writeable
    )


def _sum(path, op, dst, srcs):
    """Check the sources against ``dst``, then add them on ``path``."""
    for i, src in enumerate(srcs):
        checks.check_addend(op, dst, src, "src" if op == "accumulate" else f"srcs[{i}]")
    if path == "cuda":
        cuda_kernels().sum_into(op, dst, srcs)
    elif path == "numpy":
        reference.sum_into(dst, srcs)
    else:
        numba_kernels().sum_into(dst, srcs, _threads(path))


def _route_device(op, arrays):
    """``"cuda"`` if every array is on the device; raise for a host/device mix or a non-array."""
    on_device = [
        getattr(a, "__cuda_ndarray__", False) or hasattr(a, "__cuda_array_interface__")
        for a in arrays
    ]
    if all(on_device):
        return "cuda"
    for i, a in enumerate(arrays):
        if not on_device[i] and not isinstance(a, np.ndarray):
            raise TypeError(f"{op}: expected NumPy or CUDA device arrays, argument {i} is {a!r}")
    raise ValueError(
        f"{op}: cannot mix host and device arrays (on device: argument positions "
        f"{[i for i, d in enumerate(on_device) if d]} of {len(arrays)})"
    )


def _numba_takes(arrays):
    """Whether the Numba kernels take these plain ndarrays: one of ``NUMBA_DTYPES`` each, all C-
    or all F-contiguous, ``dst`` (the first) sharing memory with none of the others."""
    dst = arrays[0]
    c_order = f_order = True
    for a in arrays:
        if a.dtype not in NUMBA_DTYPES or (a is not dst and np.may_share_memory(dst, a)):
            return False
        flags = a.flags
        c_order = c_order and flags.c_contiguous
        f_order = f_order and flags.f_contiguous
    return c_order or f_order


def _loop_takes(dst, src):
    """Whether ``cpu.accumulate_small`` takes ``(dst, src)``: its own checks, in Python."""
    return (
        type(src) is np.ndarray
        and src.shape == dst.shape
        and src.dtype == dst.dtype
        and dst.dtype in NUMBA_DTYPES
        and dst.flags.c_contiguous
        and src.flags.c_contiguous
        and not np.may_share_memory(dst, src)
    )


@functools.cache
def numba_kernels():
    """``cpu.py`` (Numba's CPU kernels), or None when ``MPIGRAD_KERNELS=numpy`` keeps host calls
    on NumPy. Reads ``MPIGRAD_KERNELS`` once; raises ValueError for a value other than ``auto``
    and ``numpy``."""
    mode = os.environ.get("MPIGRAD_KERNELS", "auto")
    if mode not in ("auto", "numpy"):
        raise ValueError(f"MPIGRAD_KERNELS must be 'auto' or 'numpy', got {mode!r}")
    if mode == "numpy":
        return None
    from . import cpu

    return cpu


def cuda_kernels():
    """``cuda.py`` (numba.cuda kernels), imported with the first device array."""
    from . import cuda

    return cuda
