"""Stencils: a K-point weighted sum along one axis (a PDE step's finite difference, a 1-D
convolution), computed in one compiled pass (``kernels.correlate``)."""

import numpy as np

from ..function import Function
from ..kernels import correlate, correlate_transposed
from ..tensor import Tensor
from ._util import data, normalize_axis, plus
from .movement import stack

__all__ = ["stencil"]


class Stencil(Function):
    """out[..., i, ...] = sum_k w[k] x[..., i + k, ...] along ``axis`` (m = n - K + 1 outputs);
    grad_x[j] = sum_k w[k] grad[j - k] (the transposed stencil); grad_w[k] = sum grad * x[k:k + m]
    """

    @staticmethod
    def forward(ctx, x, w, axis):
        ctx.axis = axis
        # x is needed only for the weights' gradient: a stencil of constants keeps no input alive.
        ctx.save_for_backward(w, x if _weights_need_grad(ctx) else None)
        return correlate(data(x), data(w), axis)

    @staticmethod
    def backward(ctx, grad):
        w, x = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        return (StencilTransposed.apply(grad, w, ctx.axis) if need_x else None,
                _weight_grad(grad, x, w.shape[0], ctx.axis) if need_w else None, None)

    @staticmethod
    def jvp(ctx, tx, tw, _):
        x, w, axis = ctx.inputs
        return plus(None if tx is None else Stencil.apply(tx, w, axis),
                    None if tw is None else Stencil.apply(x, tw, axis))


class StencilTransposed(Function):
    """out[..., j, ...] = sum_k w[k] g[..., j - k, ...] over 0 <= j - k < m (m + K - 1 outputs):
    Stencil's adjoint in x.  grad_g = Stencil of grad; grad_w[k] = sum g * grad[k:k + m]"""

    @staticmethod
    def forward(ctx, g, w, axis):
        ctx.axis = axis
        ctx.save_for_backward(w, g if _weights_need_grad(ctx) else None)
        return correlate_transposed(data(g), data(w), axis)

    @staticmethod
    def backward(ctx, grad):
        w, g = ctx.saved_tensors
        need_g, need_w = ctx.needs_input_grad[:2]
        return (Stencil.apply(grad, w, ctx.axis) if need_g else None,
                _weight_grad(g, grad, w.shape[0], ctx.axis) if need_w else None, None)

    @staticmethod
    def jvp(ctx, tg, tw, _):
        g, w, axis = ctx.inputs
        return plus(None if tg is None else StencilTransposed.apply(tg, w, axis),
                    None if tw is None else StencilTransposed.apply(g, tw, axis))


def _weights_need_grad(ctx):
    return len(ctx.needs_input_grad) > 1 and ctx.needs_input_grad[1]


def _weight_grad(g, x, K, axis):
    """``[sum(g * x[..., k:k + m, ...]) for k < K]`` along ``axis``, m = g's length there."""
    m = g.shape[axis]
    lead = (slice(None),) * axis
    return stack([(g * x[lead + (slice(k, k + m),)]).sum() for k in range(K)])


def stencil(x, weights, axis=-1):
    """The K-point stencil ``out[..., i, ...] = sum_k weights[k] * x[..., i + k, ...]`` along
    ``axis``, at the ``n - K + 1`` positions where it fits (no padding: concatenate halos or
    boundary values first).  ``weights`` is a 1-D Tensor (differentiable) or array-like of
    constants; a list or tuple takes ``x``'s floating dtype.  Example: one explicit heat step
    with its halos, ``stencil(cat([left, u, right]), [r, 1 - 2 * r, r])``.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim == 0:
        raise ValueError("stencil: x must have at least one dimension, got a 0-d tensor")
    (axis,) = normalize_axis(axis, x.ndim, "stencil")
    if not isinstance(weights, (Tensor, np.ndarray)):
        weights = np.asarray(weights, dtype=x.dtype if x.dtype.kind in "fc" else None)
    if weights.ndim != 1 or not 1 <= len(weights) <= x.shape[axis]:
        raise ValueError(
            f"stencil: weights must be 1-D with 1 to {x.shape[axis]} entries (the length of "
            f"axis {axis} of x, shape {x.shape}); got shape {weights.shape}"
        )
    for name, dtype in (("x", x.dtype), ("weights", weights.dtype)):
        if dtype.kind not in "iufc":
            raise TypeError(f"stencil: {name} must be numeric, got dtype {dtype}")
    return Stencil.apply(x, weights, axis)
