"""The K-point stencil of ``mpigrad.stencil`` along one axis, and its adjoint, on host arrays.

    correlate(x, w, axis)             out[.., i, ..] = sum_k w[k] x[.., i + k, ..], i < n - K + 1
    correlate_transposed(g, w, axis)  out[.., j, ..] = sum_k w[k] g[.., j - k, ..], 0 <= j - k < m

(``K = len(w)``; ``m`` is ``g``'s length along ``axis``, and ``correlate_transposed`` has
``m + K - 1`` outputs there: it is ``correlate``'s adjoint.) Both return a new array of
``np.result_type(x, w)``; each output element sums its K terms in order k = 0, 1, ...

The lines along ``axis`` become the rows of a 2-D array (a copy only when ``axis`` is not the last
axis or the dtype changes), and a row loop runs over them: the Numba loops below for a dtype in
``dispatch.NUMBA_DTYPES``, else (and under ``MPIGRAD_KERNELS=numpy``) ``reference.py``'s slices.
The Numba loops run block by block (``BLOCK``), so the data passes through memory once where the
slices take 2K - 1 passes and temporaries (at 1 Mi float64 points, K = 3, on a 2-core VM: 0.29 ms
against 0.68 ms for the hand-written numpy step). They compile on first use (cached on disk), so
that importing this module loads no Numba.
"""

import functools

import numpy as np

from . import dispatch, reference

__all__ = ["BLOCK", "correlate", "correlate_transposed"]

BLOCK = 2048
"""Output elements per block: a block of the output and of its inputs stays in L1 while the K
weights pass over it, each pass a unit-stride loop that vectorizes."""


def correlate(x, w, axis):
    """The K-point stencil of ``x`` along ``axis``, valid positions only (see the module)."""
    length = x.shape[axis] - len(w) + 1
    return _along_axis(x, w, axis, length, _correlate_rows, reference.correlate_rows)


def correlate_transposed(g, w, axis):
    """``correlate``'s adjoint applied to ``g`` (see the module)."""
    length = g.shape[axis] + len(w) - 1
    return _along_axis(
        g, w, axis, length, _correlate_rows_transposed, reference.correlate_rows_transposed
    )


def _along_axis(a, w, axis, length, numba_rows, numpy_rows):
    """Run a row loop over the lines of ``a`` along ``axis``, into ``length`` outputs each."""
    dtype = a.dtype if a.dtype == w.dtype else np.result_type(a.dtype, w.dtype)
    last = axis in (-1, a.ndim - 1)
    if not last:  # the lines are independent: their order among the others does not matter
        a = a.swapaxes(axis, -1)
    lead = a.shape[:-1]
    rows = a.reshape(-1, a.shape[-1]).astype(dtype, copy=False)
    out = np.empty((rows.shape[0], length), dtype)
    if dtype in dispatch.NUMBA_DTYPES and dispatch.numba_kernels() is not None:
        row_loop = _compiled(numba_rows)
    else:
        row_loop = numpy_rows
    row_loop(rows, np.ascontiguousarray(w, dtype), out)
    out = out.reshape(lead + (length,))
    return out if last else out.swapaxes(-1, axis)


@functools.cache
def _compiled(row_loop):
    from numba import njit

    return njit(cache=True)(row_loop)


def _correlate_rows(x, w, out):
    """``out[r, i] = sum_k w[k] x[r, i + k]`` for ``i < out.shape[1]``, k in ascending order."""
    m = out.shape[1]
    for r in range(out.shape[0]):
        for lo in range(0, m, BLOCK):
            o = out[r, lo : min(lo + BLOCK, m)]
            xs = x[r, lo : lo + o.shape[0]]
            w0 = w[0]
            for i in range(o.shape[0]):
                o[i] = w0 * xs[i]
            for k in range(1, w.shape[0]):
                wk, xs = w[k], x[r, lo + k : lo + k + o.shape[0]]
                for i in range(o.shape[0]):
                    o[i] += wk * xs[i]


def _correlate_rows_transposed(g, w, out):
    """``out[r, j] = sum_k w[k] g[r, j - k]`` over ``0 <= j - k < g.shape[1]``, k in ascending
    order (after a zero: 0 + a == a)."""
    m, n = g.shape[1], out.shape[1]
    for r in range(out.shape[0]):
        for lo in range(0, n, BLOCK):
            hi = min(lo + BLOCK, n)
            out[r, lo:hi] = 0
            for k in range(w.shape[0]):
                first, last = max(lo, k), min(hi, m + k)  # the j of this block with 0 <= j-k < m
                if first >= last:
                    continue
                wk, o, gs = w[k], out[r, first:last], g[r, first - k : last - k]
                for j in range(last - first):
                    o[j] += wk * gs[j]
