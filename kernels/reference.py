"""NumPy kernels: the reference semantics, and the path for arrays the Numba kernels do not take.

They serve any layout without copying (strided views, mixed C/F order, overlapping inputs,
ndarray subclasses, dtypes Numba lacks), and every host array under ``MPIGRAD_KERNELS=numpy``.
Arguments arrive checked (see ``checks.py``).
"""

import numpy as np

__all__ = ["correlate_rows", "correlate_rows_transposed", "scatter_add", "sum_into"]


def sum_into(dst, srcs):
    """``for s in srcs: dst += s``, one ``np.add(dst, s, out=dst)`` per source."""
    for src in srcs:
        np.add(dst, src, out=dst)


def scatter_add(dst, index, src):
    """``dst[index[i]] += src[i]`` for i in order (``np.add.at``), unless an index is out of range.

    Returns the position of the first out-of-range index, leaving ``dst`` unchanged, or -1.
    """
    rows = dst.shape[0]
    bad = np.flatnonzero((index < -rows) | (index >= rows))
    if bad.size:
        return int(bad[0])
    np.add.at(dst, index, src)
    return -1


def correlate_rows(x, w, out):
    """``out[r, i] = sum_k w[k] x[r, i + k]`` for ``i < out.shape[1]``, k in ascending order."""
    m = out.shape[1]
    np.multiply(x[:, :m], w[0], out=out)
    for k in range(1, len(w)):
        out += w[k] * x[:, k : k + m]


def correlate_rows_transposed(g, w, out):
    """``out[r, j] = sum_k w[k] g[r, j - k]`` over ``0 <= j - k < g.shape[1]``, k ascending."""
    m = g.shape[1]
    out[...] = 0
    for k in range(len(w)):
        out[:, k : k + m] += w[k] * g
