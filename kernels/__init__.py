"""Array kernels that sum gradients, in place, for NumPy and CUDA device arrays; and the stencil
of ``mpigrad.stencil`` with its adjoint, on host arrays.

Semantics, the same on every path and bit for bit the sequential Python loop, whatever the
thread count (see Note [deterministic chunks] in ``cpu.py``)::

    accumulate(dst, src)          dst += src
    sum_into(dst, srcs)           for s in srcs: dst += s    # element: ((dst + s0) + s1) + ...
    scatter_add(dst, index, src)  for i in range(len(index)): dst[index[i]] += src[i]

Each returns ``dst``. Arrays are neither broadcast nor cast; a call that raises leaves ``dst``
unchanged. The stencils return a new array of ``np.result_type(x, w)``::

    correlate(x, w, axis)             out[.., i, ..] = sum_k w[k] x[.., i + k, ..], i < n - K + 1
    correlate_transposed(g, w, axis)  out[.., j, ..] = sum_k w[k] g[.., j - k, ..], 0 <= j - k < m

(``K = len(w)``; ``m`` is ``g``'s length along ``axis``, and ``correlate_transposed`` has
``m + K - 1`` outputs there: it is ``correlate``'s adjoint.) They run ``stencil.py``'s Numba loops
when the result dtype is one Numba handles and Numba is there, else ``reference.py``'s slices.

Dispatch (``backend`` names the path a call takes):

- ``"cuda"``: the call's arrays are device arrays (Numba's, or any with
  ``__cuda_array_interface__``): numba.cuda kernels, see ``cuda.py``. Mixing host and device
  arrays raises ValueError.
- ``"numba-parallel"`` / ``"numba-serial"``: plain ``numpy.ndarray`` arguments of one dtype
  Numba handles (integers, float32/64, complex64/128), all C- or all F-contiguous, ``dst``
  sharing memory with none of the others. Parallel per Note [kernel threads] in ``threads.py``.
- ``"numpy"``: every other host call (strided views, mixed layouts, overlap, subclasses, other
  dtypes), and all host calls when Numba is missing or ``MPIGRAD_KERNELS=numpy``: NumPy ufuncs,
  no copies. Also a single addend on one thread (``accumulate``, ``sum_into`` of one source,
  serial) larger than ``cpu.SMALL_ADD_MAX_BYTES``: there ``np.add(dst, src, out=dst)`` is as
  fast as a serial loop and fuses nothing. Below that size a C-contiguous addend takes a serial
  loop (``cpu.accumulate_small``) that beats ``np.add`` while the arrays sit in cache.

Below ``threads.PARALLEL_MIN_SIZE`` elements ``sum_into`` adds its sources one at a time, each
as ``accumulate`` would; ``backend`` names the fused kernel's path for several sources there.

Environment, read on first use: ``MPIGRAD_KERNELS`` is ``auto`` (default) or ``numpy`` (host
arrays always take NumPy); ``MPIGRAD_NUM_THREADS`` sets the CPU thread count.

This package imports nothing from mpigrad, and only NumPy at import: Numba loads on the first host
call, numba.cuda with the first device array, and kernels compile on first use (cached on disk).
"""

import functools
import os

import numpy as np

from . import checks, reference, threads
from .threads import get_num_threads, set_num_threads

__all__ = [
    "BACKENDS",
    "accumulate",
    "backend",
    "correlate",
    "correlate_transposed",
    "get_num_threads",
    "scatter_add",
    "set_num_threads",
    "sum_into",
]

BACKENDS = ("cuda", "numba-parallel", "numba-serial", "numpy")
"""The values ``backend`` returns."""

_NUMBA_DTYPES = frozenset(
    np.dtype(name)
    for name in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float32", "float64", "complex64", "complex128",
    )
)  # fmt: skip


def accumulate(dst, src):
    """``dst += src`` in place; returns ``dst``.

    Raises ValueError when shapes or dtypes differ (naming both), or ``dst`` is read-only.
    """
    if type(dst) is np.ndarray and type(src) is np.ndarray:
        # A serial call (small, or on one thread) tries the compiled loop, which checks its own
        # arguments and declines, then NumPy, which refuses another dtype (casting="no") and a
        # read-only dst before writing. Only a refused call pays for the general checks below,
        # which then name the problem. Few checks matter even for large arrays: after a pass
        # over megabytes, the interpreter's own data is out of cache, and the general path's
        # microsecond of checks took 15 us beside a 4 Mi-element np.add (500 us).
        small = dst.size < threads.PARALLEL_MIN_SIZE
        if small:
            dtype = dst.dtype
            cpu = _numba() if src.dtype is dtype and dtype in _NUMBA_DTYPES else None
            if cpu is not None and cpu.accumulate_small(dst, src):
                return dst
        if (small or get_num_threads() == 1) and dst.shape == src.shape:
            try:
                return np.add(dst, src, out=dst, casting="no")
            except (TypeError, ValueError):
                pass
    path = _route("accumulate", (dst, src))
    checks.check_addend("accumulate", dst, src)
    _sum_into(path, "accumulate", dst, (src,))
    return dst


def sum_into(dst, srcs):
    """``for s in srcs: dst += s`` fused, in place; returns ``dst``.

    Each element is ``((dst + s0) + s1) + ...``, read and written once per four sources rather
    than once per source. Raises ValueError when a source's shape or dtype differs from ``dst``
    (naming ``srcs[i]``), or ``dst`` is read-only.
    """
    srcs = tuple(srcs)
    if _small_host_addends(dst, srcs):
        # Below the threading threshold one pass buys nothing over adding the sources one at a
        # time (as accumulate does), and the general checks would cost more than the adds
        # themselves (many tiny gradients).
        cpu = _numba() if dst.dtype in _NUMBA_DTYPES else None
        for src in srcs:
            if cpu is None or not cpu.accumulate_small(dst, src):
                np.add(dst, src, out=dst)
        return dst
    path = _route("sum_into", (dst, *srcs))
    for i, src in enumerate(srcs):
        checks.check_addend("sum_into", dst, src, f"srcs[{i}]")
    _sum_into(path, "sum_into", dst, srcs)
    return dst


def scatter_add(dst, index, src):
    """``dst[index[i]] += src[i]`` for i in order, in place; returns ``dst``.

    ``dst`` has shape ``(N, *rest)``, ``index`` is 1-D of integers in ``[-N, N)`` (negative ones
    count from the end, as in NumPy), ``src`` has shape ``(len(index), *rest)``. Repeated indices
    accumulate, unlike ``dst[index] += src``. Raises TypeError for a non-integer index,
    ValueError for a bad shape or dtype, and IndexError naming the first out-of-range index
    value and N (before any write).
    """
    path = _route("scatter_add", (dst, index, src))
    checks.check_scatter(dst, index, src)
    if path == "cuda":
        bad = _cuda().scatter_add(dst, index, src)
    elif path == "numpy":
        bad = reference.scatter_add(dst, index, src)
    else:
        bad = _numba().scatter_add(dst, index, src, _threads(path))
    if bad >= 0:
        raise checks.out_of_range(int(index[bad]), bad, dst.shape[0])
    return dst


def _small_host_addends(dst, srcs):
    """Whether ``dst`` and ``srcs`` are plain ndarrays of one shape and dtype, too small for
    threads, with ``dst`` writable: the case where NumPy's own add is the fastest correct path."""
    if type(dst) is not np.ndarray or dst.size >= threads.PARALLEL_MIN_SIZE:
        return False
    if not dst.flags.writeable:
        return False
    shape, dtype = dst.shape, dst.dtype
    for src in srcs:
        if type(src) is not np.ndarray or src.shape != shape or src.dtype != dtype:
            return False
    return True


def backend(dst, *others):
    """The path (one of ``BACKENDS``) a kernel call on these arrays takes.

    Pass the call's arrays in order: ``backend(dst, src)``, ``backend(dst, *srcs)``,
    ``backend(dst, index, src)``. Raises as the call would for arrays of the wrong kind.
    """
    return _route("backend", (dst, *others))


def _sum_into(path, op, dst, srcs):
    if path == "cuda":
        _cuda().sum_into(op, dst, srcs)
    elif path == "numpy":
        reference.sum_into(dst, srcs)
    else:
        _numba().sum_into(dst, srcs, _threads(path))


def _route(op, arrays):
    """Pick the path for ``arrays`` (``dst`` first); see the module docstring.

    Plain loops, no generators: this runs on every call, and on small arrays the whole call
    takes a few microseconds.
    """
    plain, largest = True, 0
    for a in arrays:
        if type(a) is not np.ndarray:
            if not isinstance(a, np.ndarray):
                return _route_device(op, arrays)
            plain = False
        elif a.size > largest:
            largest = a.size
    if not arrays[0].flags.writeable:
        raise ValueError(f"{op}: dst is read-only")
    parallel = largest >= threads.PARALLEL_MIN_SIZE and get_num_threads() > 1
    if not plain or _numba() is None or not _numba_takes(arrays):
        return "numpy"
    if parallel:
        return "numba-parallel"
    if len(arrays) == 2 and not _small_loop_takes(*arrays):
        return "numpy"
    return "numba-serial"


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
    """Whether the Numba kernels take these plain ndarrays; see the module docstring."""
    dst = arrays[0]
    c_order = f_order = True
    for a in arrays:
        if a.dtype not in _NUMBA_DTYPES or (a is not dst and np.may_share_memory(dst, a)):
            return False
        flags = a.flags
        c_order = c_order and flags.c_contiguous
        f_order = f_order and flags.f_contiguous
    return c_order or f_order


def _small_loop_takes(dst, src):
    """Whether ``cpu.accumulate_small`` runs for these arrays, which ``_numba_takes`` accepted."""
    return (
        src is not dst
        and dst.flags.c_contiguous
        and src.flags.c_contiguous
        and dst.nbytes <= _numba().SMALL_ADD_MAX_BYTES
    )


def _threads(path):
    return get_num_threads() if path == "numba-parallel" else 1


@functools.cache
def _numba():
    """The Numba CPU kernels module, or None when Numba is missing or MPIGRAD_KERNELS=numpy."""
    mode = os.environ.get("MPIGRAD_KERNELS", "auto")
    if mode not in ("auto", "numpy"):
        raise ValueError(f"MPIGRAD_KERNELS must be 'auto' or 'numpy', got {mode!r}")
    if mode == "numpy":
        return None
    try:
        from . import cpu
    except ImportError:
        return None
    return cpu


def correlate(x, w, axis):
    """The K-point stencil of ``x`` along ``axis``, valid positions only (see the module)."""
    return _stencil(x, w, axis, x.shape[axis] - len(w) + 1, "correlate_rows")


def correlate_transposed(g, w, axis):
    """``correlate``'s adjoint applied to ``g`` (see the module)."""
    return _stencil(g, w, axis, g.shape[axis] + len(w) - 1, "correlate_rows_transposed")


def _stencil(a, w, axis, length, kernel):
    """Run a row kernel over the lines of ``a`` along ``axis``: they become the rows of a 2-D
    array (a copy only when ``axis`` is not the last axis or the dtype changes)."""
    dtype = np.result_type(a.dtype, w.dtype)
    a = np.moveaxis(a, axis, -1)
    lead = a.shape[:-1]
    rows = a.reshape(-1, a.shape[-1]).astype(dtype, copy=False)
    out = np.empty((rows.shape[0], length), dtype)
    module = _stencil_numba() if dtype in _NUMBA_DTYPES else None
    getattr(module or reference, kernel)(rows, np.ascontiguousarray(w, dtype), out)
    return np.moveaxis(out.reshape(lead + (length,)), -1, axis)


@functools.cache
def _stencil_numba():
    """``stencil.py``, or None where ``_numba`` gives None (no Numba, MPIGRAD_KERNELS=numpy)."""
    if _numba() is None:
        return None
    from . import stencil

    return stencil


def _cuda():
    from . import cuda

    return cuda
