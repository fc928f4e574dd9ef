"""Matrix products."""

import numpy as np

from ..function import Function, binary_op, multilinear
from ..tensor import Tensor
from ._util import data
from .movement import Permute, unsqueeze

__all__ = ["matmul", "linear"]


def _mT(x):
    """``x`` with its last two axes swapped: a view of an ndarray (array mode), else ``Permute``."""
    if type(x) is np.ndarray:
        return x.swapaxes(-1, -2)
    axes = list(range(x.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return Permute.apply(x, tuple(axes))


@binary_op
@multilinear()
class MatMul(Function):
    """out = x @ y (numpy semantics, batched and 1-D); grad_x = grad @ y^T; grad_y = x^T @ grad"""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return np.matmul(data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        if x.ndim == 2 and y.ndim == 2:
            return (
                grad @ _mT(y) if need_x else None,
                _mT(x) @ grad if need_y else None,
            )
        # Lift 1-D operands to matrices so one formula covers every case; the engine sums
        # broadcast batch axes back (see Note [broadcasting is undone at the edge]).
        x2 = unsqueeze(x, 0) if x.ndim == 1 else x
        y2 = unsqueeze(y, -1) if y.ndim == 1 else y
        g2 = grad.reshape(_lifted_shape(grad.shape, x.ndim, y.ndim))
        grad_x = grad_y = None
        if need_x:
            grad_x = g2 @ _mT(y2)
            if x.ndim == 1:
                grad_x = grad_x[..., 0, :]
        if need_y:
            grad_y = _mT(x2) @ g2
            if y.ndim == 1:
                grad_y = grad_y[..., 0]
        return grad_x, grad_y


def _lifted_shape(shape, x_ndim, y_ndim):
    shape = list(shape)
    if x_ndim == 1:
        shape.insert(len(shape) - (0 if y_ndim == 1 else 1), 1)
    if y_ndim == 1:
        shape.append(1)
    return tuple(shape)


def matmul(x, y):
    """``x @ y`` with numpy's rules: batched over leading axes, 1-D operands as vectors."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    y = y if isinstance(y, Tensor) else Tensor(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"matmul: both operands need at least one dimension, got shapes {x.shape} and {y.shape}"
        )
    return MatMul.apply(x, y)


@binary_op
@multilinear()
class Linear(Function):
    """out = x @ w^T over the last axis of x (w: (out, in)); grad_x = grad @ w;
    grad_w = grad^T @ x over every leading axis, computed as one product so that it comes out
    in w's own (row-major) layout, as a transposed view of x^T @ grad would not"""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return np.matmul(data(x), data(w).T)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        grad_w = None
        if need_w:
            rows = grad.reshape(-1, w.shape[0])
            grad_w = _mT(rows) @ x.reshape(-1, w.shape[1])
        return grad @ w if need_x else None, grad_w


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` over the last axis of ``x`` (torch's ``nn.functional.linear``):
    ``x`` of shape ``(..., in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)`` or None; the
    result has shape ``(..., out)``.  ``weight``'s gradient has its row-major layout."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    weight = weight if isinstance(weight, Tensor) else Tensor(weight)
    if x.ndim == 0 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            "linear: expected x of shape (..., in) and weight of shape (out, in), got x of shape "
            f"{x.shape} and weight of shape {weight.shape}"
        )
    if bias is not None and np.shape(bias) != weight.shape[:1]:
        raise ValueError(
            f"linear: expected bias of shape {weight.shape[:1]}, got shape {np.shape(bias)}"
        )
    out = Linear.apply(x, weight)
    return out if bias is None else out + bias
