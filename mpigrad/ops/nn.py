"""Neural-network ops: softmax family and losses."""

import math

import numpy as np

from .. import kernels
from ..function import Function, binary_op, unary_op
from ..tensor import Tensor
from ._util import constant, data, keepdims_shape, normalize_axis
from .elementwise import exp
from .movement import Reshape
from .reduce import Sum, mean, sum

__all__ = ["softmax", "log_softmax", "logsumexp", "cross_entropy", "mse_loss"]


def _stable_logsumexp(x, axes):
    """log(sum(exp(x))) over ``axes`` with keepdims, shifted by the max for stability."""
    if x.size == 0:
        return np.full(keepdims_shape(x.shape, axes), -np.inf, x.dtype)
    shift = np.maximum.reduce(x, axis=axes, keepdims=True)
    if not _all_finite(shift):  # an infinite or nan maximum: no shift there
        shift = np.where(np.isfinite(shift), shift, 0)
        with np.errstate(divide="ignore"):
            return np.log(np.add.reduce(np.exp(x - shift), axis=axes, keepdims=True)) + shift
    # A finite shift makes every sum at least 1: its log raises no warning.
    return np.log(np.add.reduce(_exp_shifted(x, shift), axis=axes, keepdims=True)) + shift


def _all_finite(a):
    """Whether every entry of the ndarray ``a`` is finite (one value read as a Python float,
    which costs a fraction of numpy's test)."""
    return math.isfinite(a.item()) if a.size == 1 else bool(np.isfinite(a).all())


def _exp_shifted(x, shift):
    """``exp(x - shift)`` in one new array (0-d arrays give a numpy scalar, not an array)."""
    out = np.subtract(x, shift)
    return np.exp(out, out=out) if type(out) is np.ndarray else np.asarray(np.exp(out))


def _sum_kept(v, axes):
    """``v`` summed over ``axes`` with keepdims: a numpy reduction on an ndarray (array mode),
    else the differentiable ``Sum``."""
    if type(v) is np.ndarray:
        return np.add.reduce(v, axis=axes, keepdims=True)
    return Sum.apply(v, axes, True)


@unary_op
class LogSumExp(Function):
    """out = log(sum(exp(x), axes)); grad_x = grad * softmax(x, axes)"""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.axes = axes
        ctx.save_for_backward(x)
        x = data(x)
        out = kernels.logsumexp(x, axes)
        if out is None:
            out = _stable_logsumexp(x, axes)
        ctx.logsumexp = out
        return out if keepdims else out.reshape(_squeezed(out.shape, axes))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad = grad.reshape(ctx.logsumexp.shape)
        return grad * _softmax(ctx, x, ctx.axes), None, None

    @staticmethod
    def jvp(ctx, t, *_):
        x, _, keepdims = ctx.inputs
        out = _sum_kept(t * Softmax.apply(x, ctx.axes), ctx.axes)
        return out if keepdims else Reshape.apply(out, _squeezed(out.shape, ctx.axes))


def _softmax(ctx, x, axes):
    """softmax(x) over ``axes``: in array mode exp(x - logsumexp) from the ``ctx.logsumexp`` that
    forward kept (two numpy calls), else the differentiable ``Softmax``."""
    if type(x) is np.ndarray:
        return np.exp(np.subtract(x, ctx.logsumexp))
    return Softmax.apply(x, axes)


def _squeezed(shape, axes):
    """``shape`` without ``axes`` (None: all)."""
    return () if axes is None else tuple(n for i, n in enumerate(shape) if i not in axes)


@unary_op
class Softmax(Function):
    """out = exp(x) / sum(exp(x), axis); grad_x = out * (grad - sum(grad * out, axis))"""

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        x = data(x)
        out = kernels.softmax(x, axis)
        if out is None and x.size == 0:
            out = np.exp(x)
        elif out is None:
            shift = np.maximum.reduce(x, axis=axis, keepdims=True)
            if _all_finite(shift):
                out = _exp_shifted(x, shift)
                np.divide(out, np.add.reduce(out, axis=axis, keepdims=True), out=out)
            else:
                out = np.exp(x - _stable_logsumexp(x, axis))
        ctx._save_output(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        grad_x = kernels.softmax_backward(out, grad, ctx.axis)  # None for Tensors
        if grad_x is None:
            grad_x = out * (grad - _sum_kept(grad * out, ctx.axis))
        return grad_x, None

    @staticmethod
    def jvp(ctx, t, _):
        out = ctx.outputs[0]
        return out * (t - _sum_kept(t * out, ctx.axis))


@unary_op
class LogSoftmax(Function):
    """out = x - logsumexp(x, axis); grad_x = grad - exp(out) * sum(grad, axis)"""

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        x = data(x)
        out = kernels.log_softmax(x, axis)
        if out is None:
            shift = np.maximum.reduce(x, axis=axis, keepdims=True) if x.size else None
            if shift is not None and _all_finite(shift):
                shifted = np.subtract(x, shift)
                log_total = np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
                out = np.asarray(np.subtract(shifted, log_total))
            else:
                out = x - _stable_logsumexp(x, axis)
        ctx._save_output(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        grad_x = kernels.log_softmax_backward(out, grad, ctx.axis)  # None for Tensors
        if grad_x is None:
            probs = np.exp(out) if type(out) is np.ndarray else exp(out)  # no op in array mode
            grad_x = grad - probs * _sum_kept(grad, ctx.axis)
        return grad_x, None

    @staticmethod
    def jvp(ctx, t, _):
        return t - _sum_kept(exp(ctx.outputs[0]) * t, ctx.axis)


@binary_op
class CrossEntropy(Function):
    """out = mean_n(logsumexp(x[n]) - x[n, target_n]); grad_x = (softmax(x) - onehot) * grad / N"""

    @staticmethod
    def forward(ctx, x, targets):
        ctx.save_for_backward(x)
        ctx.targets = targets
        x = data(x)
        taken = kernels.cross_entropy(x, targets)
        if taken is not None:
            loss, ctx.logsumexp = taken
            return loss
        ctx.logsumexp = _stable_logsumexp(x, (1,))
        losses = ctx.logsumexp[:, 0] - x[np.arange(len(targets)), targets]
        return np.add.reduce(losses) / len(targets)

    @staticmethod
    def _residual(ctx, x):
        """softmax(x) - onehot(targets)."""
        p, rows = _softmax(ctx, x, (1,)), np.arange(len(ctx.targets))
        if type(p) is np.ndarray:  # array mode: a new array of this rule's, written in place
            p[rows, ctx.targets] -= 1
            return p
        onehot = np.zeros(p.shape, p.dtype)
        onehot[rows, ctx.targets] = 1
        return p - constant(onehot)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_x = kernels.cross_entropy_backward(x, ctx.logsumexp, ctx.targets, grad)
        if grad_x is None:  # Tensors, or arrays the kernel does not take
            grad_x = CrossEntropy._residual(ctx, x) * (grad / x.shape[0])
        return grad_x, None

    @staticmethod
    def jvp(ctx, t, _):
        x = ctx.inputs[0]
        return sum(CrossEntropy._residual(ctx, x) * t) / np.asarray(x.shape[0], x.dtype)


@binary_op
class MseLoss(Function):
    """out = mean((x - y) ** 2); grad_x = grad * 2 (x - y) / n; grad_y = -grad_x"""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        diff = np.subtract(data(x), data(y))
        return np.vdot(diff, diff) / diff.size

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        grad_x = (x - y) * (grad * (2.0 / x.size))
        return (grad_x if need_x else None), (-grad_x if need_y else None)

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.inputs
        t = tx if ty is None else -ty if tx is None else tx - ty
        return mean((x - y) * t) * 2.0


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x), axis))``, computed stably."""
    return LogSumExp.apply(x, normalize_axis(axis, x.ndim, "logsumexp"), bool(keepdims))


def softmax(x, axis=-1):
    """Softmax along ``axis``."""
    return Softmax.apply(x, normalize_axis(axis, x.ndim, "softmax"))


def log_softmax(x, axis=-1):
    """Log of the softmax along ``axis``, computed stably."""
    return LogSoftmax.apply(x, normalize_axis(axis, x.ndim, "log_softmax"))


def cross_entropy(logits, targets):
    """Mean over the batch of ``-log softmax(logits)[target]``.

    ``logits`` has shape (N, C).  ``targets`` is either N class indices in [0, C) or an (N, C)
    array of class probabilities (never differentiated).  As torch's default (mean reduction).
    """
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, C), got {logits.shape}")
    n, c = logits.shape
    targets = np.asarray(data(targets))
    if targets.dtype.kind in "iu":
        if targets.shape != (n,):
            raise ValueError(
                f"cross_entropy: class-index targets must have shape ({n},), got {targets.shape}"
            )
        # Read as unsigned, a negative target is larger than any class: one reduction checks both.
        kind = targets.dtype.str
        as_unsigned = targets.view(kind.replace("i", "u")) if "i" in kind else targets
        if n and np.maximum.reduce(as_unsigned) >= c:
            bad = (targets < 0) | (targets >= c)
            raise IndexError(
                f"cross_entropy: target {targets[bad][0]} is out of range for {c} classes"
            )
        return CrossEntropy.apply(logits, targets)
    if targets.shape != (n, c):
        raise ValueError(
            f"cross_entropy: probability targets must have shape ({n}, {c}), got {targets.shape}"
        )
    logp = log_softmax(logits, axis=1)
    return -sum(logp * Tensor._make(targets)) / np.asarray(n, logp.dtype)


def mse_loss(input, target):
    """Mean over all elements of ``(input - target) ** 2``; shapes must match."""
    if data(input).shape != data(target).shape:
        raise ValueError(
            f"mse_loss: input shape {data(input).shape} and target shape {data(target).shape} "
            "differ"
        )
    return MseLoss.apply(input, target)
