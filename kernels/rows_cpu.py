"""Numba CPU loops for ``rows.py``: the softmax family over rows, cross-entropy and the sigmoid.

Each loop is serial (results depend on the arrays alone, never on a thread count), takes
C-contiguous arrays, read flat (a row is ``n`` consecutive elements), and writes its result into
``out``, a new array of the input's shape and dtype that ``rows.py`` allocates (a Numba call that
returns a new array costs more than the allocation and a call that returns nothing). ``rows.py``
checks the arrays and sends everything else to NumPy.

Note [row semantics]
The loops compute what ``mpigrad/ops/nn.py``'s NumPy code computes, in the same order of
operations per element, up to rounding: a row's largest entry ``m`` shifts it where ``m`` is
finite; a row with an infinite maximum is not shifted, so that its log-sum-exp is
``log(sum(exp(x)))`` (``+inf`` or ``-inf``) and the softmax ``exp(x - logsumexp)`` is 0 or NaN
exactly where NumPy's is. A NaN anywhere in a row makes its sum, and so every result of the
row, NaN, as in NumPy. Elementwise steps round to the
array's dtype; the sums of a row are accumulated in float64 in the order of the row (NumPy sums
pairwise, in the dtype), then rounded: float32 results may differ from NumPy's in the last bits.
Loops compile on first call and are cached on disk (``cache=True``).
"""

import numpy as np
from numba import njit

__all__ = [
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


@njit(cache=True)
def _row_max(xs):
    """The largest entry of the 1-D ``xs`` (non-empty); NaN entries are skipped unless first
    (a row holding NaN gives NaN on every branch: see Note [row semantics])."""
    m = xs[0]
    for i in range(1, xs.size):
        if xs[i] > m:
            m = xs[i]
    return m


@njit(cache=True)
def _row_logsumexp(xs):
    """``log(sum(exp(xs)))`` of the 1-D ``xs``, shifted by its maximum where that is finite."""
    m = _row_max(xs)
    if not np.isfinite(m):
        m = xs.dtype.type(0)
    total = 0.0
    for i in range(xs.size):
        total += np.exp(xs[i] - m)
    return xs.dtype.type(np.log(xs.dtype.type(total))) + m


@njit(cache=True)
def softmax(x, n, out):
    """``out = exp(x - m) / sum(exp(x - m))`` over each row of ``n``."""
    flat_x, flat_out = x.reshape(x.size), out.reshape(out.size)
    for lo in range(0, flat_x.size, n):
        xs, os = flat_x[lo : lo + n], flat_out[lo : lo + n]
        m = _row_max(xs)
        if np.isfinite(m):
            total = 0.0
            for i in range(n):
                e = np.exp(xs[i] - m)
                os[i] = e
                total += e
            denominator = x.dtype.type(total)
            for i in range(n):
                os[i] /= denominator
        else:
            lse = _row_logsumexp(xs)
            for i in range(n):
                os[i] = np.exp(xs[i] - lse)


@njit(cache=True)
def softmax_backward(out, grad, n, grad_x):
    """``grad_x = out * (grad - sum(grad * out))`` over each row of ``n``."""
    flat_out, flat_grad, flat_gx = (
        out.reshape(out.size),
        grad.reshape(grad.size),
        grad_x.reshape(grad_x.size),
    )
    for lo in range(0, flat_out.size, n):
        os, gs, gxs = flat_out[lo : lo + n], flat_grad[lo : lo + n], flat_gx[lo : lo + n]
        total = 0.0
        for i in range(n):
            total += gs[i] * os[i]
        dot = out.dtype.type(total)
        for i in range(n):
            gxs[i] = os[i] * (gs[i] - dot)


@njit(cache=True)
def log_softmax(x, n, out):
    """``out = (x - m) - log(sum(exp(x - m)))`` over each row of ``n``."""
    flat_x, flat_out = x.reshape(x.size), out.reshape(out.size)
    for lo in range(0, flat_x.size, n):
        xs, os = flat_x[lo : lo + n], flat_out[lo : lo + n]
        m = _row_max(xs)
        if np.isfinite(m):
            total = 0.0
            for i in range(n):
                shifted = xs[i] - m
                os[i] = shifted
                total += np.exp(shifted)
            log_total = x.dtype.type(np.log(x.dtype.type(total)))
            for i in range(n):
                os[i] -= log_total
        else:
            lse = _row_logsumexp(xs)
            for i in range(n):
                os[i] = xs[i] - lse


@njit(cache=True)
def log_softmax_backward(out, grad, n, grad_x):
    """``grad_x = grad - exp(out) * sum(grad)`` over each row of ``n``."""
    flat_out, flat_grad, flat_gx = (
        out.reshape(out.size),
        grad.reshape(grad.size),
        grad_x.reshape(grad_x.size),
    )
    for lo in range(0, flat_out.size, n):
        os, gs, gxs = flat_out[lo : lo + n], flat_grad[lo : lo + n], flat_gx[lo : lo + n]
        total = 0.0
        for i in range(n):
            total += gs[i]
        row_sum = out.dtype.type(total)
        for i in range(n):
            gxs[i] = gs[i] - np.exp(os[i]) * row_sum


@njit(cache=True)
def logsumexp(x, out):
    """``out[r] = log(sum(exp(row r)))`` for the ``out.size`` rows of ``x``."""
    n = x.size // out.size
    flat_x, flat_out = x.reshape(x.size), out.reshape(out.size)
    for r in range(flat_out.size):
        flat_out[r] = _row_logsumexp(flat_x[r * n : (r + 1) * n])


@njit(cache=True)
def cross_entropy(x, targets, lse):
    """``lse[r, 0] = logsumexp(x[r])`` for the rows of the 2-D ``x``; returns the mean over the
    rows of ``lse[r, 0] - x[r, targets[r]]``. Every target is in range."""
    rows = x.shape[0]
    total = 0.0
    for r in range(rows):
        lse[r, 0] = _row_logsumexp(x[r])
        total += lse[r, 0] - x[r, targets[r]]
    return total / rows


@njit(cache=True)
def cross_entropy_backward(x, lse, targets, scale, grad_x):
    """``grad_x = (exp(x - lse) - onehot(targets)) * scale`` for the 2-D ``x``."""
    factor, one = x.dtype.type(scale), x.dtype.type(1)
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            p = np.exp(x[r, c] - lse[r, 0])
            if c == targets[r]:
                p -= one
            grad_x[r, c] = p * factor


@njit(cache=True)
def sigmoid(x, out):
    """``out = 1 / (1 + exp(-x))``, by ``exp(x) / (1 + exp(x))`` where x < 0."""
    flat_x, flat_out = x.reshape(x.size), out.reshape(out.size)
    one = x.dtype.type(1)
    for i in range(flat_x.size):
        v = flat_x[i]
        if v >= 0:
            flat_out[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            flat_out[i] = e / (one + e)


@njit(cache=True)
def sigmoid_backward(out, grad, grad_x):
    """``grad_x = grad * out * (1 - out)``."""
    flat_out, flat_grad, flat_gx = (
        out.reshape(out.size),
        grad.reshape(grad.size),
        grad_x.reshape(grad_x.size),
    )
    one = out.dtype.type(1)
    for i in range(flat_out.size):
        o = flat_out[i]
        flat_gx[i] = flat_grad[i] * o * (one - o)
