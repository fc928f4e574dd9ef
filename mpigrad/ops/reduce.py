"""Reductions: sum, mean, max, min over ``axis`` (int, tuple or None) with ``keepdims``; and
``sum_to``, which the engine uses to undo broadcasting."""

import math

import numpy as np

from ..function import Function, linear, unary_op
from ._util import constant, data, keepdims_shape, normalize_axis
from .movement import broadcast_to, broadcast_view

__all__ = ["sum", "mean", "max", "min", "sum_to"]


@unary_op
@linear(fixed=(1, 2))
class Sum(Function):
    """out = sum(x, axes); grad_x = grad broadcast back to x's shape"""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        x = data(x)
        ctx.shape, ctx.size, ctx.axes = x.shape, x.size, axes
        return np.add.reduce(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return _unreduced(grad, ctx), None, None


@unary_op
@linear(fixed=(1, 2))
class Mean(Function):
    """out = sum(x, axes) / n (n: the number of elements summed); grad_x = grad / n broadcast
    back to x's shape"""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        x = data(x)
        ctx.shape, ctx.size, ctx.axes = x.shape, x.size, axes
        ctx.count = x.size if axes is None else math.prod([x.shape[a] for a in axes])
        return np.add.reduce(x, axis=axes, keepdims=keepdims) / ctx.count

    @staticmethod
    def backward(ctx, grad):
        return _unreduced(grad / ctx.count, ctx), None, None


class _Extreme(Function):
    """out = max or min(x, axes); grad_x = grad split evenly among the elements that attain it"""

    reduce = None

    @classmethod
    def forward(cls, ctx, x, axes, keepdims):
        ctx.save_for_backward(x)
        ctx.axes = axes
        return cls.reduce(data(x), axis=axes, keepdims=keepdims)

    @classmethod
    def _weights(cls, x, axes):
        hits = data(x) == cls.reduce(data(x), axis=axes, keepdims=True)
        return constant(hits / np.add.reduce(hits, axis=axes, keepdims=True, dtype=x.dtype))

    @classmethod
    def backward(cls, ctx, grad):
        (x,) = ctx.saved_tensors
        grad = grad.reshape(keepdims_shape(x.shape, ctx.axes))
        return grad * cls._weights(x, ctx.axes), None, None

    @classmethod
    def jvp(cls, ctx, t, *_):
        return Sum.apply(t * cls._weights(ctx.inputs[0], ctx.axes), ctx.axes, ctx.inputs[2])


@unary_op
class Max(_Extreme):
    reduce = staticmethod(np.maximum.reduce)


@unary_op
class Min(_Extreme):
    reduce = staticmethod(np.minimum.reduce)


@unary_op
@linear(fixed=(1,))
class SumTo(Function):
    """out = x summed over its broadcast axes to ``shape``; grad_x = broadcast_to(grad, x.shape)"""

    @staticmethod
    def forward(ctx, x, shape):
        x = data(x)
        ctx.shape, ctx.size = x.shape, x.size
        lead = x.ndim - len(shape)
        if lead < 0:
            raise ValueError(f"cannot sum shape {x.shape} to shape {shape}")
        axes = list(range(lead))
        for i, n in enumerate(shape):
            m = x.shape[lead + i]
            if n == 1 and m != 1:
                axes.append(lead + i)
            elif n != m:
                raise ValueError(f"cannot sum shape {x.shape} to shape {shape}")
        out = np.add.reduce(x, axis=tuple(axes), keepdims=True) if axes else x
        return out.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return _spread(grad, ctx.shape, ctx.size), None


def _unreduced(grad, ctx):
    """The gradient of a sum over ``ctx.axes`` (None: all) of an input of ``ctx.shape`` and
    ``ctx.size``: ``grad`` with the summed axes restored (length 1), broadcast back to the
    input's shape."""
    if grad.ndim != len(ctx.shape) and grad.size != ctx.size:
        grad = grad.reshape(keepdims_shape(ctx.shape, ctx.axes))
    return _spread(grad, ctx.shape, ctx.size)


def _spread(grad, shape, size):
    """``broadcast_to(grad, shape)``, where ``size`` is the size of ``shape``: a view of
    ``grad`` (a writable one where no element repeats); an array (array mode) is viewed
    directly, as there is no op to record."""
    if grad.size == size:  # nothing to repeat: a reshape
        return grad if grad.shape == shape else grad.reshape(shape)
    return broadcast_view(grad, shape) if type(grad) is np.ndarray else broadcast_to(grad, shape)


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (None: all)."""
    return Sum.apply(x, normalize_axis(axis, x.ndim, "sum"), bool(keepdims))


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all)."""
    return Mean.apply(x, normalize_axis(axis, x.ndim, "mean"), bool(keepdims))


def max(x, axis=None, keepdims=False):
    """Largest values over ``axis`` (values only, as numpy's ``max``); ties share the gradient."""
    return Max.apply(x, normalize_axis(axis, x.ndim, "max"), bool(keepdims))


def min(x, axis=None, keepdims=False):
    """Smallest values over ``axis`` (values only); ties share the gradient."""
    return Min.apply(x, normalize_axis(axis, x.ndim, "min"), bool(keepdims))


def sum_to(x, shape):
    """Sum ``x`` over the axes along which ``shape`` was broadcast to ``x.shape``."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumTo.apply(x, shape)
