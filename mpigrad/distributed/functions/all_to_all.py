"""all_to_all: every rank sends ``xs[j]`` to rank ``j``, and gets one tensor from each rank.

Collective: every rank, in the same order as every other collective, with lists of
``world_size`` tensors of one dtype and ndim (shapes may differ, by rank and by destination).

Adjoint: an ``all_to_all`` of the gradients: the gradient of what rank ``j`` sent comes back to
it.  Forward mode: the tangents exchanged the same way.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["all_to_all", "AllToAll"]


class AllToAll(Function):
    """out[j] = xs[this rank] of rank j; grad_xs[j] = the grad of out[this rank] on rank j"""

    takes_arrays = True  # Note [collective rules on arrays] in collective.py

    @staticmethod
    def forward(ctx, call, anchor, *xs):
        ctx.call = call
        return tuple(collective.all_to_all(call, [x.data for x in xs]))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *_all_to_all(list(grads), adjoint_of=ctx.call.seq))

    @staticmethod
    def jvp(ctx, _, __, *ts):
        xs = ctx.inputs[2:]
        ts = collective.tangents(xs, ts)
        return tuple(_all_to_all(ts))


def all_to_all(xs: list[Tensor | np.ndarray], timeout: float | None = None) -> list[Tensor]:
    """Send ``xs[j]`` (a list of ``world_size`` tensors) to rank ``j``; returns the list whose
    entry ``j`` is what rank ``j`` sent this rank.  ``DistTimeoutError`` after ``timeout``
    seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _all_to_all(xs, timeout)


def _all_to_all(xs, timeout=None, adjoint_of=-1):
    call = Call("all_to_all", timeout, adjoint_of)
    with call.checking():
        xs = call.take_list(xs)
    call.agree(collective.RAGGED)
    return call.apply_listed(AllToAll, *xs)
