"""scatter: rank ``src``'s list of tensors, one piece to each rank.

Collective: every rank, in the same order as every other collective, with the same ``src``;
``src`` passes a list of ``world_size`` tensors of one dtype and ndim (their shapes may differ),
the other ranks pass anything (None).

Adjoint: a ``gather`` of the gradients to ``src``: its tensor ``j`` gets rank ``j``'s gradient.
Forward mode: the tangents scattered.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["scatter", "Scatter"]


class Scatter(Function):
    """out = xs[this rank] of rank src; grad_xs[j] = rank j's grad (on src)"""

    @staticmethod
    def forward(ctx, call, anchor, *xs):
        ctx.call = call
        return collective.scatter(call, [x.data for x in xs])

    @staticmethod
    def backward(ctx, grad):
        from .gather import _gather

        pieces = _gather(grad, ctx.call.root, adjoint_of=ctx.call.seq)
        return (None, None, *(pieces or ()))

    @staticmethod
    def jvp(ctx, _, __, *ts):
        xs = ctx.inputs[2:]
        ts = collective.tangents(xs, ts)
        return _scatter(ts, ctx.inputs[0].root)


def scatter(xs: list[Tensor | np.ndarray] | None, src: int, timeout: float | None = None) -> Tensor:
    """This rank's piece of rank ``src``'s ``xs`` (a list of ``world_size`` tensors, shapes may
    differ; ignored on the other ranks, which may pass None): ``xs[j]`` goes to rank ``j``.
    ``DistTimeoutError`` after ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _scatter(xs, src, timeout)


def _scatter(xs, src, timeout=None, adjoint_of=-1):
    call = Call("scatter", timeout, adjoint_of)
    with call.checking():
        call.check_root(src, "src")
        xs = call.take_list(xs) if call.comms.rank == call.root else []
    call.agree(collective.ROOTED)
    return call.apply(Scatter, *xs)
