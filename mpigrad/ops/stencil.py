"""Stencils: a K-point weighted sum along one axis (a PDE step's finite difference, a 1-D
convolution), computed in one compiled pass (``kernels.correlate``)."""

import numpy as np

from ..function import Function, multilinear, variadic_op
from ..kernels import correlate, correlate_transposed
from ..tensor import Tensor
from ._util import data, normalize_axis
from .movement import stack

__all__ = ["stencil"]


@variadic_op
@multilinear(fixed=(2,))
class Stencil(Function):
    """out[..., i, ...] = sum_k w[k] a[..., i + k, ...] along ``axis`` (n - K + 1 outputs);
    grad_a[j] = sum_k w[k] grad[j - k] (``StencilTransposed``); grad_w[k] = sum grad * a[k:k + m]

    Both stencils are linear in ``a`` and in ``w``: each one's adjoint in ``a`` is the other
    (``transposed``), and one formula gives both gradients in ``w`` (``_weight_grad``).
    """

    kernel = staticmethod(correlate)
    transposed = None  # StencilTransposed, set below

    @classmethod
    def forward(cls, ctx, a, w, axis):
        ctx.axis = axis
        # a is needed only for the weights' gradient: a stencil of constants keeps no input alive.
        ctx.save_for_backward(w, a if _weights_need_grad(ctx) else None)
        return cls.kernel(data(a), data(w), axis)

    @classmethod
    def backward(cls, ctx, grad):
        w, a = ctx.saved_tensors
        need_a, need_w = ctx.needs_input_grad[:2]
        return (
            cls.transposed.apply(grad, w, ctx.axis) if need_a else None,
            _weight_grad(grad, a, w.shape[0], ctx.axis) if need_w else None,
            None,
        )


@variadic_op
class StencilTransposed(Stencil):
    """out[..., j, ...] = sum_k w[k] a[..., j - k, ...] over 0 <= j - k < m (m + K - 1 outputs):
    Stencil's adjoint in a, whose own adjoint is Stencil; grad_w[k] = sum a * grad[k:k + m]"""

    kernel = staticmethod(correlate_transposed)
    transposed = Stencil


Stencil.transposed = StencilTransposed


def _weights_need_grad(ctx):
    return len(ctx.needs_input_grad) > 1 and ctx.needs_input_grad[1]


def _weight_grad(grad, a, K, axis):
    """``[sum(short * long[..., k:k + m, ...]) for k < K]`` along ``axis``, where ``short`` is the
    shorter of ``grad`` and ``a`` there (length m): a stencil's gradient in its weights, either
    way round."""
    short, long = (grad, a) if grad.shape[axis] <= a.shape[axis] else (a, grad)
    m = short.shape[axis]
    lead = (slice(None),) * axis
    return stack([(short * long[lead + (slice(k, k + m),)]).sum() for k in range(K)])


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
