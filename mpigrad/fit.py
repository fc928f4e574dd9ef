"""Gradients and tangents fitted to the tensor they belong to, with differentiable ops.

The engine sums a gradient back to its input's shape and casts it to the input's dtype (Note
[broadcasting is undone at the edge] in engine.py); ``Function.apply`` broadcasts a tangent to its
output's shape and casts it to the output's dtype; both make new Tensors over a gradient's or a
primal's data (``alias``, ``copy``).  Each is an op, so ``create_graph=True`` and nested dual
levels see it.  This module is how the layers below ``mpigrad.ops`` (engine, function) reach the
ops; the ops import ``Function``, so they are imported when first called, not at load.
"""

__all__ = ["gradient_to", "tangent_to", "alias", "copy"]


def gradient_to(grad, shape, dtype):
    """``grad`` (a Tensor, or an ndarray in array mode) summed over the axes along which ``shape``
    was broadcast to its shape, then cast to ``dtype``; ValueError where ``shape`` does not
    broadcast to ``grad``'s."""
    from .ops.elementwise import cast
    from .ops.reduce import sum_to

    if grad.shape != shape:
        grad = sum_to(grad, shape)
    if grad.dtype != dtype:
        grad = cast(grad, dtype)
    return grad


def tangent_to(tangent, shape, dtype):
    """``tangent`` (a Tensor) broadcast to ``shape``, then cast to ``dtype``."""
    from .ops.elementwise import cast
    from .ops.movement import broadcast_to

    if tangent.data.shape != shape:
        tangent = broadcast_to(tangent, shape)
    if tangent.data.dtype != dtype:
        tangent = cast(tangent, dtype)
    return tangent


def alias(x):
    """A new Tensor over ``x``'s data, differentiable (its gradient is the output's)."""
    from .ops import movement

    return movement.alias(x)


def copy(x):
    """A copy of ``x``'s data in a new Tensor, differentiable (as torch's ``clone``)."""
    from .ops.elementwise import cast

    return cast(x, x.data.dtype)
