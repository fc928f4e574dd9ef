"""gather: every rank's tensor, on rank ``dst`` only, as a list by rank.

Collective: every rank, in the same order as every other collective, with tensors of one dtype
and ndim (shapes may differ) and the same ``dst``.

Adjoint: a ``scatter`` of the gradients of the list from ``dst``.  The other ranks get None, so
their local backward cannot reach this adjoint: gather is differentiable in reverse mode only
inside a dist_autograd context, whose backward runs it on every rank (see Note [collectives in
a context] in engine.py); elsewhere its backward raises, naming all_gather, which is
differentiable everywhere.  Forward mode works everywhere: the tangents gathered to ``dst``.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["gather", "Gather"]


class Gather(Function):
    """out[j] = x on rank j, on dst (an empty placeholder elsewhere)"""

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call = call
        pieces = collective.gather(call, x.data)
        return np.empty((0,), x.dtype) if pieces is None else tuple(pieces)

    @staticmethod
    def backward(ctx, *grads):
        from .scatter import _scatter

        call = ctx.call
        collective.check_rooted_adjoint(call, "a scatter", "all_gather")
        pieces = list(grads) if call.comms.rank == call.root else None
        return None, None, _scatter(pieces, call.root, adjoint_of=call.seq)

    @staticmethod
    def jvp(ctx, _, __, t):
        x = ctx.inputs[2]
        (t,) = collective.tangents([x], [t])
        pieces = _gather(t, ctx.inputs[0].root)
        return None if pieces is None else tuple(pieces)


def gather(x: Tensor | np.ndarray, dst: int, timeout: float | None = None) -> list[Tensor] | None:
    """Every rank's ``x`` on rank ``dst``: a list of ``world_size`` Tensors, rank ``j``'s at
    index ``j`` (shapes may differ); None on the other ranks.  ``DistTimeoutError`` after
    ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _gather(x, dst, timeout)


def _gather(x, dst, timeout=None, adjoint_of=-1):
    call = Call("gather", timeout, adjoint_of)
    with call.checking():
        call.check_root(dst, "dst")
        x = call.take(x)
    call.agree(collective.RAGGED)
    out = call.apply_listed(Gather, x)
    return out if call.comms.rank == call.root else None
