"""Numba CPU kernels, serial and parallel, for contiguous NumPy arrays.

Note [deterministic chunks]
Each kernel is written once, over a range of output rows (``_sum_range``, ``_scatter_range``).
The serial path runs it over all rows; the parallel path splits the rows into ``chunks``
disjoint ranges and runs one per ``prange`` iteration. Every output element is written by one
thread, which adds its terms in the sequential order, and there is no ``fastmath``: the result
is bit-identical to the sequential Python loop whatever the thread or chunk count.

Note [sum order]
Each summed element is ``(((dst + a) + b) + c) + d``, the order of the sequential loop, every
partial float sum rounded to the array's dtype (integers wrap, as in NumPy). ``_sum_range``
here and ``_sum_kernel`` in ``cuda.py`` spell that out line for line; they are not one shared
function because, measured, an inlined element function stops the CPU loop from vectorizing
(3-4x slower). Change both or neither.

Arrays arrive checked: same dtype, all C- or all F-contiguous, ``dst``
sharing memory with no other argument (``dispatch.route`` sends everything else to NumPy), except
that ``accumulate_small`` checks its own.
Kernels compile on first call and are cached on disk (``cache=True``).
"""

import math

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

__all__ = ["ARITY", "accumulate_small", "scatter_add", "sum_into"]

ARITY = 4
"""Sources summed per pass over ``dst`` by ``sum_into``: one compiled kernel serves 1 to ARITY."""


@njit(cache=True)
def _sum_range(dst, a, b, c, d, k, lo, hi):
    """``dst[lo:hi] = (((dst + a) + b) + c) + d`` over the first ``k`` (1 to 4) of a, b, c, d."""
    # Loops over slices from 0 vectorize; a loop from a signed ``lo`` does not (wraparound checks).
    # See Note [sum order].
    dst, a, b, c, d = dst[lo:hi], a[lo:hi], b[lo:hi], c[lo:hi], d[lo:hi]
    for i in range(dst.size):
        acc = dst[i] + a[i]
        if k > 1:
            acc = acc + b[i]
        if k > 2:
            acc = acc + c[i]
        if k > 3:
            acc = acc + d[i]
        dst[i] = acc


@njit(cache=True, parallel=True)
def _sum_chunks(dst, a, b, c, d, k, chunks):
    """``_sum_range`` over ``chunks`` disjoint ranges, in parallel.

    See Note [deterministic chunks].
    """
    n = dst.size
    for t in prange(chunks):
        _sum_range(dst, a, b, c, d, k, t * n // chunks, (t + 1) * n // chunks)


def _add_small(dst, src):
    raise NotImplementedError  # typed through the overload below, only inside jitted code


@overload(_add_small)
def _add_small_typed(dst, src):
    """The loop for two writable C-contiguous arrays of one Numba number dtype, else ``False``.

    Deciding on the types here, once per signature, keeps the per-call checks in compiled code.
    """
    takes = (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.mutable
        and dst.layout == "C"
        and src.layout == "C"
        and dst.ndim == src.ndim
        and dst.dtype == src.dtype
        and isinstance(dst.dtype, (types.Integer, types.Float, types.Complex))
    )
    if not takes:
        return lambda dst, src: False

    def loop(dst, src):
        if dst.shape != src.shape:
            return False
        start, other, nbytes = dst.ctypes.data, src.ctypes.data, dst.nbytes
        if nbytes and start < other + nbytes and other < start + nbytes:
            return False
        flat_dst, flat_src = dst.reshape(dst.size), src.reshape(src.size)
        for i in range(flat_dst.size):
            flat_dst[i] += flat_src[i]
        return True

    return loop


@njit(cache=True)
def accumulate_small(dst, src):
    """``dst += src`` by a serial loop; returns whether it ran.

    It runs when both are C-contiguous arrays of one shape and one integer, float or complex
    dtype, ``dst`` is writable and shares no memory with ``src``. Otherwise it returns False and
    leaves ``dst`` unchanged. Arguments must be ndarrays of a dtype Numba types
    (``dispatch.NUMBA_DTYPES``); ``dispatch`` decides which sizes it gets.
    """
    return _add_small(dst, src)


@njit(cache=True)
def _first_out_of_range(index, rows):
    """Position of the first index outside ``[-rows, rows)``, or -1."""
    for i in range(index.size):
        if index[i] < -rows or index[i] >= rows:
            return i
    return -1


@njit(cache=True)
def _scatter_range(dst, index, src, lo, hi):
    """``dst[j] += src[i]`` for i in order, j = index[i] (+ rows if negative), for j in [lo, hi).

    ``dst`` and ``src`` are 2-D (rows, columns); every index is in range.
    """
    rows = dst.shape[0]
    for i in range(index.size):
        j = np.int64(index[i])
        if j < 0:
            j += rows
        if lo <= j and j < hi:
            for c in range(dst.shape[1]):  # 2-D indexing: 8x faster than row views here
                dst[j, c] += src[i, c]


@njit(cache=True, parallel=True)
def _scatter_chunks(dst, index, src, chunks):
    """``_scatter_range`` over ``chunks`` disjoint row ranges in parallel (each walks all of index).

    See Note [deterministic chunks].
    """
    rows = dst.shape[0]
    for t in prange(chunks):
        _scatter_range(dst, index, src, t * rows // chunks, (t + 1) * rows // chunks)


def sum_into(dst, srcs, threads):
    """``for s in srcs: dst += s``, ARITY sources per pass; parallel when ``threads > 1``."""
    flat = dst.ravel("A")  # views: the arrays share one contiguous order
    for start in range(0, len(srcs), ARITY):
        group = [src.ravel("A") for src in srcs[start : start + ARITY]]
        k = len(group)
        group += group[:1] * (ARITY - k)  # unused slots: any array of the same type
        if threads > 1:
            _in_parallel(_sum_chunks, threads, flat, *group, k)
        else:
            _sum_range(flat, *group, k, 0, flat.size)


def scatter_add(dst, index, src, threads):
    """``dst[index[i]] += src[i]`` for i in order, unless an index is out of range.

    Returns the position of the first out-of-range index, leaving ``dst`` unchanged, or -1.
    Parallel over row ranges when ``threads > 1``.
    """
    rows = dst.shape[0]
    bad = _first_out_of_range(index, rows)
    if bad >= 0:
        return bad
    columns = math.prod(dst.shape[1:])
    dst2 = dst.reshape((rows, columns), order="A")
    src2 = src.reshape((index.size, columns), order="A")
    if threads > 1:
        _in_parallel(_scatter_chunks, threads, dst2, index, src2)
    else:
        _scatter_range(dst2, index, src2, 0, rows)
    return -1


def _in_parallel(kernel, chunks, *args):
    """Run ``kernel(*args, chunks)`` on up to ``chunks`` Numba threads, then restore the count."""
    previous = numba.get_num_threads()
    numba.set_num_threads(min(chunks, numba.config.NUMBA_NUM_THREADS))
    try:
        kernel(*args, chunks)
    finally:
        numba.set_num_threads(previous)
