"""Ways to make tensors.  Shapes are given as ``zeros(2, 3)`` or ``zeros((2, 3))``; the default
dtype is numpy's (float64)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .tensor import Tensor

__all__ = [
    "tensor",
    "from_numpy",
    "zeros",
    "ones",
    "zeros_like",
    "ones_like",
    "full",
    "arange",
    "rand",
    "randn",
]


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(n) for n in shape)


def _new(array, requires_grad):
    return Tensor(array, requires_grad=requires_grad)


def tensor(
    data: ArrayLike | Tensor, dtype: DTypeLike = None, requires_grad: bool = False
) -> Tensor:
    """A new leaf holding a copy of ``data`` (array-like or Tensor)."""
    if isinstance(data, Tensor):
        data = data.data
    return _new(np.array(data, dtype=dtype), requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A leaf sharing memory with ``array`` (writes to one show in the other)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects an ndarray, got {type(array).__name__}")
    return Tensor._make(array)


def zeros(
    *shape: int | Sequence[int], dtype: DTypeLike = np.float64, requires_grad: bool = False
) -> Tensor:
    return _new(np.zeros(_shape(shape), dtype), requires_grad)


def ones(
    *shape: int | Sequence[int], dtype: DTypeLike = np.float64, requires_grad: bool = False
) -> Tensor:
    return _new(np.ones(_shape(shape), dtype), requires_grad)


def zeros_like(
    t: Tensor | np.ndarray, dtype: DTypeLike = None, requires_grad: bool = False
) -> Tensor:
    return _new(np.zeros_like(np.asarray(t), dtype=dtype), requires_grad)


def ones_like(
    t: Tensor | np.ndarray, dtype: DTypeLike = None, requires_grad: bool = False
) -> Tensor:
    return _new(np.ones_like(np.asarray(t), dtype=dtype), requires_grad)


def full(
    shape: int | Sequence[int],
    fill_value: float,
    dtype: DTypeLike = None,
    requires_grad: bool = False,
) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _new(np.full(shape, fill_value, dtype), requires_grad)


def arange(
    start: float,
    stop: float | None = None,
    step: float = 1,
    dtype: DTypeLike = None,
    requires_grad: bool = False,
) -> Tensor:
    return _new(np.arange(start, stop, step, dtype=dtype), requires_grad)


def _rng(generator):
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def rand(
    *shape: int | Sequence[int],
    generator: np.random.Generator | int | None = None,
    dtype: DTypeLike = np.float64,
    requires_grad: bool = False,
) -> Tensor:
    """Uniform on [0, 1).  ``generator`` is a numpy Generator or a seed (None: fresh entropy)."""
    return _new(_rng(generator).random(_shape(shape)).astype(dtype, copy=False), requires_grad)


def randn(
    *shape: int | Sequence[int],
    generator: np.random.Generator | int | None = None,
    dtype: DTypeLike = np.float64,
    requires_grad: bool = False,
) -> Tensor:
    """Standard normal.  ``generator`` is a numpy Generator or a seed (None: fresh entropy)."""
    return _new(
        _rng(generator).standard_normal(_shape(shape)).astype(dtype, copy=False), requires_grad
    )
