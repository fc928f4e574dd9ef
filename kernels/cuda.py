"""CUDA kernels (numba.cuda) for device arrays; imported only when a device array shows up.

Same semantics and the same determinism as the CPU kernels, with no float atomics:

- ``sum_into``: a grid-stride loop over elements; each thread adds the sources in order.
- ``scatter_add``: threads are laid out over (column, range of dst rows). A thread owns one
  column of one row range and walks the whole index in order, adding the rows that land in its
  range, so every dst element is written by one thread in index order. The index check before
  it uses an integer ``atomic.min`` (order-independent) to find the first bad position.

Arrays may be Numba device arrays or any object with ``__cuda_array_interface__`` (viewed, not
copied); all of a call's arrays must be C- or all F-contiguous (ValueError otherwise). Every
call synchronizes the device before returning, so ``dst`` can go straight to MPI.

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) each launch is one block of 32 threads: the
simulator runs each GPU thread in Python, and the grid-stride loops cover any size.
"""

import math

import numpy as np
from numba import cuda, int64
from numba.core import config

from .cpu import ARITY

__all__ = ["scatter_add", "sum_into"]

_SIMULATOR = bool(config.ENABLE_CUDASIM)
_BLOCK = 32 if _SIMULATOR else 256  # threads per block, 1-D kernels
_MAX_BLOCKS = 1 if _SIMULATOR else 1024
_BLOCK_2D = (8, 4) if _SIMULATOR else (32, 8)  # (columns, row ranges) per block, scatter
_SCATTER_THREADS = 32 if _SIMULATOR else 1 << 16  # threads wanted per scatter launch


@cuda.jit
def _sum_kernel(dst, a, b, c, d, k):
    """``dst = (((dst + a) + b) + c) + d`` over the first ``k`` (1 to 4) of a, b, c, d."""
    # See Note [sum order] in cpu.py.
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        acc = dst[i] + a[i]
        if k > 1:
            acc = acc + b[i]
        if k > 2:
            acc = acc + c[i]
        if k > 3:
            acc = acc + d[i]
        dst[i] = acc


@cuda.jit
def _first_out_of_range_kernel(index, rows, first):
    """``first[0] = min(first[0], i)`` for every i with index[i] outside ``[-rows, rows)``."""
    for i in range(cuda.grid(1), index.size, cuda.gridsize(1)):
        if index[i] < -rows or index[i] >= rows:
            cuda.atomic.min(first, 0, i)


@cuda.jit
def _scatter_kernel(dst, index, src, ranges):
    """``dst[j, c] += src[i, c]`` for i in order, each thread owning columns of one row range.

    ``dst`` and ``src`` are 2-D (rows, columns); every index is in range; rows are split into
    ``ranges`` disjoint ranges.
    """
    rows, columns = dst.shape
    column0, range0 = cuda.grid(2)
    column_step, range_step = cuda.gridsize(2)
    for r in range(range0, ranges, range_step):
        lo = r * rows // ranges
        hi = (r + 1) * rows // ranges
        for c in range(column0, columns, column_step):
            for i in range(index.size):
                j = int64(index[i])
                if j < 0:
                    j += rows
                if lo <= j and j < hi:
                    dst[j, c] += src[i, c]


def sum_into(op, dst, srcs):
    """``for s in srcs: dst += s`` on the device, ARITY sources per launch; synchronizes.

    ``op`` names the public call in errors.
    """
    flat, *flat_srcs = _views(op, [dst, *srcs], [(dst.size,)] * (1 + len(srcs)))
    blocks = min(_MAX_BLOCKS, max(1, math.ceil(dst.size / _BLOCK)))
    for start in range(0, len(flat_srcs), ARITY):
        group = flat_srcs[start : start + ARITY]
        k = len(group)
        group += group[:1] * (ARITY - k)  # unused slots: any array of the same type
        if dst.size:
            _sum_kernel[blocks, _BLOCK](flat, *group, k)
    cuda.synchronize()


def scatter_add(dst, index, src):
    """``dst[index[i]] += src[i]`` for i in order on the device, unless an index is out of range.

    Returns the position of the first out-of-range index, leaving ``dst`` unchanged, or -1.
    Synchronizes.
    """
    rows, size = dst.shape[0], index.shape[0]
    columns = math.prod(dst.shape[1:])
    dst2, index, src2 = _views(
        "scatter_add", [dst, index, src], [(rows, columns), (size,), (size, columns)]
    )
    if size:
        first = cuda.to_device(np.array([size], dtype=np.int64))
        blocks = min(_MAX_BLOCKS, math.ceil(size / _BLOCK))
        _first_out_of_range_kernel[blocks, _BLOCK](index, rows, first)
        bad = int(first.copy_to_host()[0])
        if bad < size:
            return bad
    if size and columns:
        block_columns, block_ranges = _BLOCK_2D
        grid_columns = min(_MAX_BLOCKS, math.ceil(columns / block_columns))
        wanted = max(1, min(rows, _SCATTER_THREADS // (grid_columns * block_columns)))
        grid_ranges = math.ceil(wanted / block_ranges)
        ranges = min(rows, grid_ranges * block_ranges)
        _scatter_kernel[(grid_columns, grid_ranges), _BLOCK_2D](dst2, index, src2, ranges)
    cuda.synchronize()
    return -1


def _views(op, arrays, shapes):
    """Numba device-array views of ``arrays`` reshaped to ``shapes`` in their common order.

    Raises ValueError (naming ``op``) unless the arrays are all C- or all F-contiguous.
    """
    arrays = [a if getattr(a, "__cuda_ndarray__", False) else cuda.as_cuda_array(a) for a in arrays]
    for order, contiguous in (("C", "is_c_contiguous"), ("F", "is_f_contiguous")):
        if all(getattr(a, contiguous)() for a in arrays):
            return [a.reshape(*shape, order=order) for a, shape in zip(arrays, shapes, strict=True)]
    layouts = [(a.shape, a.strides) for a in arrays]
    raise ValueError(
        f"{op}: device arrays must be all C- or all F-contiguous, got (shape, strides) {layouts}"
    )
