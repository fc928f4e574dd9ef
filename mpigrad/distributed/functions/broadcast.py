"""broadcast: the tensor of rank ``src``, on every rank.

Collective: every rank, in the same order as every other collective, with tensors of one shape
and dtype (the values of the ranks other than ``src`` are not read) and the same ``src``.

Adjoint: the gradients summed to ``src`` (a ``reduce``); the other ranks' tensors get none.
Forward mode: the tangent of ``src`` broadcast.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["broadcast", "Broadcast"]


class Broadcast(Function):
    """out = x on rank src, on every rank; grad_x = the sum of every rank's grad on src"""

    takes_arrays = True  # Note [collective rules on arrays] in collective.py

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call = call
        return collective.broadcast(call, x.data)

    @staticmethod
    def backward(ctx, grad):
        from .reduce import _reduce

        return None, None, _reduce(grad, ctx.call.root, "sum", adjoint_of=ctx.call.seq)

    @staticmethod
    def jvp(ctx, _, __, t):
        x = ctx.inputs[2]
        (t,) = collective.tangents([x], [t])
        return _broadcast(t, ctx.inputs[0].root)


def broadcast(x: Tensor | np.ndarray, src: int, timeout: float | None = None) -> Tensor:
    """Rank ``src``'s ``x``, on every rank (a new Tensor).  Every rank passes a tensor of the
    same shape and dtype.  ``DistTimeoutError`` after ``timeout`` seconds (default
    ``MPIGRAD_TIMEOUT``)."""
    return _broadcast(x, src, timeout)


def _broadcast(x, src, timeout=None, adjoint_of=-1):
    call = Call("broadcast", timeout, adjoint_of)
    with call.checking():
        call.check_root(src, "src")
        x = call.take(x)
    call.agree(collective.SAME)
    return call.apply(Broadcast, x)
