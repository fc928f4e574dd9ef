"""reduce_scatter: rank ``j`` gets the reduction of every rank's ``xs[j]``.

Collective: every rank, in the same order as every other collective, with lists of
``world_size`` tensors of one dtype whose shapes match across the ranks, and the same ``op``.

Adjoint: sum -> an ``all_gather`` of the gradients (every rank's ``xs[j]`` gets rank ``j``'s
gradient); avg -> the same divided by the size.  max, min and prod are an ``all_to_all`` of the
pieces followed by the local max, min or product over the ranks, and differentiate as those do
(ties split the gradient evenly, as for ``all_reduce``).  Forward mode follows the same rules.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...ops.movement import stack
from ...ops.reduce import max as max_
from ...ops.reduce import min as min_
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["reduce_scatter", "ReduceScatter"]


class ReduceScatter(Function):
    """out = the sum (or average) over the ranks of xs[this rank]; grad_xs = all_gather(grad)"""

    takes_arrays = True  # Note [collective rules on arrays] in collective.py

    @staticmethod
    def forward(ctx, call, anchor, *xs):
        ctx.call = call
        return collective.reduce_scatter(call, [x.data for x in xs])

    @staticmethod
    def backward(ctx, grad):
        from .all_gather import _all_gather

        pieces = _all_gather(grad, adjoint_of=ctx.call.seq)
        if ctx.call.op == "avg":
            pieces = [p / np.asarray(ctx.call.comms.size, p.dtype) for p in pieces]
        return (None, None, *pieces)

    @staticmethod
    def jvp(ctx, _, __, *ts):
        xs = ctx.inputs[2:]
        ts = collective.tangents(xs, ts)
        return _reduce_scatter(ts, ctx.inputs[0].op)


def reduce_scatter(
    xs: list[Tensor | np.ndarray], op: str = "sum", timeout: float | None = None
) -> Tensor:
    """The reduction by ``op`` (as for ``all_reduce``) of every rank's ``xs[r]``, on rank
    ``r``: ``xs`` is a list of ``world_size`` tensors whose shapes match across the ranks.
    ``DistTimeoutError`` after ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _reduce_scatter(xs, op, timeout)


def _reduce_scatter(xs, op, timeout=None, adjoint_of=-1):
    from .all_to_all import _all_to_all

    call = Call("reduce_scatter", timeout, adjoint_of)
    with call.checking():
        call.op = collective.reduction(op)
        xs = call.take_list(xs)
        call.check_reducible()
    call.agree(collective.SAME)
    if call.op in ("sum", "avg"):
        return call.apply(ReduceScatter, *xs)
    pieces = _all_to_all(xs, timeout, adjoint_of)
    if call.op == "prod":
        product = pieces[0]
        for piece in pieces[1:]:
            product = product * piece
        return product
    return (max_ if call.op == "max" else min_)(stack(pieces), axis=0)
