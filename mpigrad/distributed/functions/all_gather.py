"""all_gather: every rank's tensor, on every rank, as a list by rank.

Collective: every rank, in the same order as every other collective, with tensors of one dtype
and ndim; their shapes may differ (uneven shards).

Adjoint: a ``reduce_scatter`` sum of the gradients of the list: rank ``j``'s tensor gets the sum
over the ranks of the gradient of their entry ``j``.  Forward mode: the tangents gathered.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["all_gather", "AllGather"]


class AllGather(Function):
    """out[j] = x on rank j; grad_x = the sum over the ranks of grad[this rank]"""

    takes_arrays = True  # Note [collective rules on arrays] in collective.py

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call = call
        return tuple(collective.all_gather(call, x.data))

    @staticmethod
    def backward(ctx, *grads):
        from .reduce_scatter import _reduce_scatter

        return None, None, _reduce_scatter(list(grads), "sum", adjoint_of=ctx.call.seq)

    @staticmethod
    def jvp(ctx, _, __, t):
        x = ctx.inputs[2]
        (t,) = collective.tangents([x], [t])
        return tuple(_all_gather(t))


def all_gather(x: Tensor | np.ndarray, timeout: float | None = None) -> list[Tensor]:
    """Every rank's ``x``: a list of ``world_size`` Tensors, rank ``j``'s at index ``j``.  The
    ranks' shapes may differ (dtype and ndim may not).  ``DistTimeoutError`` after ``timeout``
    seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _all_gather(x, timeout)


def _all_gather(x, timeout=None, adjoint_of=-1):
    call = Call("all_gather", timeout, adjoint_of)
    with call.checking():
        x = call.take(x)
    call.agree(collective.RAGGED)
    return call.apply_listed(AllGather, x)
