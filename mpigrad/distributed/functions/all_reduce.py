"""all_reduce: the reduction of every rank's tensor, on every rank.

Collective: every rank, in the same order as every other collective, with tensors of one shape
and dtype and the same ``op``.

Adjoint (under the loss convention of ``mpigrad.distributed``): sum -> an all_reduce sum of the
gradients; avg -> the same divided by the size; max and min -> that sum goes to the ranks that
hold the extreme value, split evenly among ties (as ``torch.amax``); prod -> that sum times the
product of the other ranks' values (an all_gather of the values, so zeros need no division).
Forward mode follows the same rules: the winners' tangents averaged among ties, the product rule.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...ops.movement import stack
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["all_reduce", "AllReduce"]


class AllReduce(Function):
    """out = op over the ranks of x; see the module docstring for grad_x and the tangent"""

    takes_arrays = True  # Note [collective rules on arrays] in collective.py

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call = call
        if call.op == "prod":
            ctx.save_for_backward(x)
        out = collective.all_reduce(call, x.data)
        if call.op in ("max", "min"):
            ctx.hits = (x.data == out).astype(out.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        call = ctx.call
        if call.op in ("sum", "avg"):
            return None, None, _all_reduce(grad, call.op, adjoint_of=call.seq)
        if call.op == "prod":
            (x,) = ctx.saved_tensors
            others = _others(x, call.comms.rank, call.seq)
            return None, None, _all_reduce(grad, "sum", adjoint_of=call.seq) * others
        total, count = _sum_and_count(grad, ctx.hits, call.seq)
        return None, None, total * (ctx.hits / count)

    @staticmethod
    def jvp(ctx, _, __, t):
        call, x = ctx.inputs[0], ctx.inputs[2]
        (t,) = collective.tangents([x], [t])
        if call.op in ("sum", "avg"):
            return _all_reduce(t, call.op)
        if call.op == "prod":
            return _all_reduce(t * _others(x, call.comms.rank), "sum")
        hits = (x.data == ctx.outputs[0].data).astype(x.dtype)
        total, count = _sum_and_count(t * hits, hits)
        return total / count


def _sum_and_count(t, hits, adjoint_of=-1):
    """The sums over the ranks of ``t`` and of ``hits`` (1 where a rank holds the extreme: the
    number of ranks holding it, made at least 1), in one all_reduce."""
    both = _all_reduce(stack([t, hits]), "sum", adjoint_of=adjoint_of)
    return both[0], np.maximum(np.asarray(both)[1], 1)


def _others(x, rank, adjoint_of=-1):
    """The product of the other ranks' values of ``x`` (this is rank ``rank``)."""
    from .all_gather import _all_gather

    product = None
    for r, piece in enumerate(_all_gather(x, adjoint_of=adjoint_of)):
        if r != rank:
            product = piece if product is None else product * piece
    return np.ones(x.shape, x.dtype) if product is None else product


def all_reduce(x: Tensor | np.ndarray, op: str = "sum", timeout: float | None = None) -> Tensor:
    """The reduction of every rank's ``x`` by ``op`` ("sum", "avg", "max", "min", "prod", or
    MPI.SUM, MPI.MAX, MPI.MIN, MPI.PROD), on every rank.  ``DistTimeoutError`` after
    ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``)."""
    return _all_reduce(x, op, timeout)


def _all_reduce(x, op, timeout=None, adjoint_of=-1):
    call = Call("all_reduce", timeout, adjoint_of)
    with call.checking():
        call.op = collective.reduction(op)
        x = call.take(x)
        call.check_reducible()
    call.agree(collective.SAME)
    return call.apply(AllReduce, x)
