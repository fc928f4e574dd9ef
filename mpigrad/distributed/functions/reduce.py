"""reduce: the reduction of every rank's tensor, on rank ``dst`` only.

Collective: every rank, in the same order as every other collective, with tensors of one shape
and dtype, the same ``op`` and the same ``dst``.

Adjoint: a broadcast of the gradient from ``dst``, then each rank's part as for ``all_reduce``.
The other ranks get None, so their backward cannot reach this adjoint: reduce is differentiable
in reverse mode only inside a dist_autograd context (not yet: its backward raises, naming
all_reduce, which is differentiable everywhere).  Forward mode works everywhere: the tangent on
``dst`` is the reduction of the tangents, by the rules of ``all_reduce``.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["reduce", "Reduce"]


class Reduce(Function):
    """out = op over the ranks of x, on dst (an empty placeholder elsewhere)"""

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call = call
        return collective.reduce(call, x.data)

    @staticmethod
    def backward(ctx, grad):
        call = ctx.call
        raise RuntimeError(
            f"reduce: rank {call.comms.rank}: the gradient of reduce's result (collective call "
            f"{call.seq}) cannot flow back: the other ranks got None, so their backward never "
            f"reaches its adjoint (a broadcast from rank {call.root}). Use all_reduce, which is "
            "differentiable on every rank"
        )

    @staticmethod
    def jvp(ctx, _, __, t):
        from .all_reduce import _all_reduce, _others, _sum_and_count

        call, x = ctx.inputs[0], ctx.inputs[2]
        (t,) = collective.tangents([x], [t])
        if call.op in ("sum", "avg"):
            return _reduce(t, call.root, call.op)
        if call.op == "prod":
            tangent = _reduce(t * _others(x, call.comms.rank), call.root, "sum")
        else:  # every rank needs the extreme to know whether it holds it
            hits = (x.data == _all_reduce(x.data, call.op).data).astype(x.dtype)
            total, count = _sum_and_count(t * hits, hits)
            tangent = total / count if call.comms.rank == call.root else None
        return tangent


def reduce(
    x: Tensor | np.ndarray, dst: int, op: str = "sum", timeout: float | None = None
) -> Tensor | None:
    """The reduction of every rank's ``x`` by ``op`` (as for ``all_reduce``) on rank ``dst``;
    None on the other ranks.  ``DistTimeoutError`` after ``timeout`` seconds (default
    ``MPIGRAD_TIMEOUT``)."""
    return _reduce(x, dst, op, timeout)


def _reduce(x, dst, op, timeout=None, adjoint_of=-1):
    call = Call("reduce", timeout, adjoint_of)
    with call.checking():
        call.check_timeout()
        call.check_root(dst, "dst")
        call.op = collective.reduction(op)
        x = call.take(x)
        call.check_reducible()
    call.agree(collective.SAME)
    out = Reduce.apply(call, call.anchor, x)
    return out if call.comms.rank == call.root else None
