"""Small helpers shared by the op modules."""

import numpy as np

from ..tensor import Tensor


def data(value):
    """The ndarray (or Python scalar) behind an op argument."""
    return value.data if isinstance(value, Tensor) else value


def constant(array):
    """A value that is never differentiated (a mask, a sign, a weight): a plain ndarray, which
    ops take as a constant whether their other operands are Tensors or arrays."""
    return np.asarray(array)


def plus(a, b):
    """``a + b`` where None stands for a zero tangent or gradient."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def normalize_axis(axis, ndim, what):
    """``axis`` (int, tuple or None) as a sorted tuple of non-negative axes, or None."""
    if axis is None:
        return None
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, without building a set
        return (axis % ndim,)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{what}: axis {a} is out of range for a tensor of {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: repeated axis in {axis}")
    return tuple(sorted(out))


def keepdims_shape(shape, axes):
    """``shape`` with the reduced ``axes`` (None: all) kept as size 1."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))
