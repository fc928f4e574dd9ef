"""reduce: the reduction of every rank's tensor, on rank ``dst`` only.

Collective: every rank, in the same order as every other collective, with tensors of one shape
and dtype, the same ``op`` and the same ``dst``.

Adjoint: a broadcast of the gradient from ``dst``, then each rank's part as for ``all_reduce``
(max and min: the ranks holding the extreme learn it from that broadcast too).  The other ranks
get None, so their local backward cannot reach this adjoint: reduce is differentiable in reverse
mode only inside a dist_autograd context, whose backward runs it on every rank (see Note
[collectives in a context] in engine.py); elsewhere its backward raises, naming all_reduce,
which is differentiable everywhere.  Forward mode works everywhere: the tangent on ``dst`` is
the reduction of the tangents, by the rules of ``all_reduce``.
"""

from __future__ import annotations

import numpy as np

from ...function import Function
from ...ops.movement import stack
from ...tensor import Tensor
from .. import collective
from ..collective import Call

__all__ = ["reduce", "Reduce"]


class Reduce(Function):
    """out = op over the ranks of x, on dst (an empty placeholder elsewhere)"""

    @staticmethod
    def forward(ctx, call, anchor, x):
        ctx.call, ctx.shape = call, x.shape
        out = collective.reduce(call, x.data)
        if call.op not in ("sum", "avg"):
            ctx.save_for_backward(x)
            ctx.extreme = out if call.comms.rank == call.root else np.empty(x.shape, x.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        from .all_reduce import _all_reduce, _others
        from .broadcast import _broadcast

        call = ctx.call
        rank, root, seq = call.comms.rank, call.root, call.seq
        collective.check_rooted_adjoint(call, "a broadcast", "all_reduce")
        if rank != root:  # its output is a placeholder: it has no gradient of its own
            grad = Tensor._make(np.zeros(ctx.shape, grad.dtype))
        if call.op in ("sum", "avg"):
            grad_x = _broadcast(grad, root, adjoint_of=seq)
            if call.op == "avg":
                grad_x = grad_x / np.asarray(call.comms.size, grad_x.dtype)
            return None, None, grad_x
        (x,) = ctx.saved_tensors
        if call.op == "prod":
            return None, None, _broadcast(grad, root, adjoint_of=seq) * _others(x, rank, seq)
        both = _broadcast(stack([grad, Tensor._make(ctx.extreme)]), root, adjoint_of=seq)
        hits = (x.data == both.data[1]).astype(x.dtype)
        count = np.maximum(_all_reduce(hits, "sum", adjoint_of=seq).data, 1)
        return None, None, both[0] * (hits / count)

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
        call.check_root(dst, "dst")
        call.op = collective.reduction(op)
        x = call.take(x)
        call.check_reducible()
    call.agree(collective.SAME)
    out = call.apply(Reduce, x)
    return out if call.comms.rank == call.root else None
