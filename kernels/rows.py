"""The softmax family over rows, cross-entropy and the sigmoid, by serial Numba loops
(``rows_cpu.py``) on the host arrays they take; each function returns None for the others, and
its caller computes the same with NumPy.

    softmax(x, axes)                        exp(x - logsumexp(x, axes))
    softmax_backward(out, grad, axes)       out * (grad - sum(grad * out, axes))
    log_softmax(x, axes)                    x - logsumexp(x, axes)
    log_softmax_backward(out, grad, axes)   grad - exp(out) * sum(grad, axes)
    logsumexp(x, axes)                      log(sum(exp(x), axes)), keeping the reduced axes
    cross_entropy(x, targets)               (mean_r(lse[r, 0] - x[r, targets[r]]), lse), where
                                            lse = logsumexp(x, (1,)) and x is (rows, classes)
    cross_entropy_backward(x, lse, targets, grad)
                                            (exp(x - lse) - onehot(targets)) * grad / rows
    sigmoid(x)                              1 / (1 + exp(-x))
    sigmoid_backward(out, grad)             grad * out * (1 - out)

Each returns a new array (``cross_entropy``: a NumPy scalar of ``x``'s dtype and an array).
``axes`` is a sorted tuple of non-negative axes, or None for all, as ``mpigrad.ops`` normalizes
them. The loops take ``x`` (``out`` in a backward) where it is a plain, C-contiguous, non-empty
ndarray of float64 or float32 (the softmax family's float32 up to ``FLOAT32_MAX_SIZE``
elements), and ``axes`` are its last
axis or all of its axes, so that the reduction runs over rows of consecutive elements; a ``grad``
must be a plain C-contiguous ndarray of ``out``'s shape and dtype (the 0-d ``grad`` of
``cross_entropy_backward`` may be any ndarray), ``targets`` an integer ndarray of ``rows`` class
indices in range. Under ``MPIGRAD_KERNELS=numpy`` they take nothing and Numba is not loaded.
Non-finite rows give what NumPy gives: see Note [row semantics] in ``rows_cpu.py``.
"""

import functools
import math

import numpy as np

from . import dispatch

__all__ = [
    "FLOAT32_MAX_SIZE",
    "cross_entropy",
    "cross_entropy_backward",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
]

FLOAT32_MAX_SIZE = 1 << 12
"""Largest float32 array (elements) whose rows the loops take: beyond it NumPy's vectorized
float32 ``exp`` makes its several passes faster than one serial loop. The sigmoid's loop takes
float32 arrays of any size (it replaces four passes, two of them transcendental)."""

_FLOAT64, _FLOAT32 = np.dtype(np.float64), np.dtype(np.float32)


def softmax(x, axes):
    return _over_rows("softmax", x, axes)


def softmax_backward(out, grad, axes):
    return _over_rows_backward("softmax_backward", out, grad, axes)


def log_softmax(x, axes):
    return _over_rows("log_softmax", x, axes)


def log_softmax_backward(out, grad, axes):
    return _over_rows_backward("log_softmax_backward", out, grad, axes)


def _over_rows(loop, x, axes):
    """What the loop named ``loop`` writes over the rows of ``x``, or None."""
    n = _row_length(x, axes)
    if not n:
        return None
    out = np.empty_like(x)
    getattr(_loops(), loop)(x, n, out)
    return out


def _over_rows_backward(loop, out, grad, axes):
    """The gradient the loop named ``loop`` makes from ``out`` and ``grad``, or None."""
    n = _row_length(out, axes)
    if not n or not _same(out, grad):
        return None
    grad_x = np.empty_like(out)
    getattr(_loops(), loop)(out, grad, n, grad_x)
    return grad_x


def logsumexp(x, axes):
    n = _row_length(x, axes)
    if not n:
        return None
    out = np.empty((1,) * x.ndim if n == x.size else x.shape[:-1] + (1,), x.dtype)
    _loops().logsumexp(x, out)
    return out


def cross_entropy(x, targets):
    if not _row_length(x, (1,)):
        return None
    lse = np.empty((x.shape[0], 1), x.dtype)
    return x.dtype.type(_loops().cross_entropy(x, targets, lse)), lse


def cross_entropy_backward(x, lse, targets, grad):
    if not _row_length(x, (1,)) or type(grad) is not np.ndarray:
        return None
    grad_x = np.empty_like(x)
    _loops().cross_entropy_backward(x, lse, targets, grad.item() / x.shape[0], grad_x)
    return grad_x


def sigmoid(x):
    if not _row_length(x, None, math.inf):
        return None
    out = np.empty_like(x)
    _loops().sigmoid(x, out)
    return out


def sigmoid_backward(out, grad):
    if not _row_length(out, None, math.inf) or not _same(out, grad):
        return None
    grad_x = np.empty_like(out)
    _loops().sigmoid_backward(out, grad, grad_x)
    return grad_x


def _row_length(x, axes, float32_max=None):
    """The length of the rows that ``axes`` reduce where the loops take ``x`` (float32 up to
    ``float32_max`` elements, else ``FLOAT32_MAX_SIZE``), else 0."""
    if type(x) is not np.ndarray or not x.flags.c_contiguous:
        return 0
    dtype, size = x.dtype, x.size
    if dtype != _FLOAT64 and (
        dtype != _FLOAT32 or size > (FLOAT32_MAX_SIZE if float32_max is None else float32_max)
    ):
        return 0
    if size == 0 or dispatch.numba_kernels() is None:
        return 0
    if axes is None or len(axes) == x.ndim:
        return size
    return x.shape[-1] if axes == (x.ndim - 1,) else 0


def _same(out, grad):
    """Whether ``grad`` is a plain C-contiguous ndarray of ``out``'s shape and dtype."""
    return (
        type(grad) is np.ndarray
        and grad.dtype == out.dtype
        and grad.shape == out.shape
        and grad.flags.c_contiguous
    )


@functools.cache
def _loops():
    from . import rows_cpu

    return rows_cpu
