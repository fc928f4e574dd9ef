"""send and isend: a tensor's data to another rank.

Collective: no; point to point. The rank ``dest`` must post a matching ``recv``/``irecv``
(same source and tag) on the same communicator, in the same context (or both outside any).

Adjoint: recv from ``dest``. Inside a distributed autograd context, sending a tensor that
requires grad records a send function (``SendBackward``) under a fresh message id; in backward it
receives exactly one message for it from ``dest`` on the gradient communicator (the gradient of
the received tensor, or a no-gradient marker) and passes it on to the sent tensor's ``grad_fn``.
Under the loss convention of ``mpigrad.distributed`` this is the exact adjoint of the transfer.

Tangents: a dual tensor's tangents at every open dual level, nested ones included, travel in
its message (no extra message, nothing when there are none; see Note [tangents on the wire] in
messages.py): the receiver's ``unpack_dual(y, level).tangent`` is the sender's tangent at the
level of the same depth (the k-th open level, outermost first), which is ``recv``'s rule for
levels.  A tangent that requires grad is recorded in a context as the primal is, with a send
function of its own, so reverse-over-forward crosses ranks too.

Everything is checked before anything is recorded or sent: a call that raises leaves the context
as it was.  A send to ``PROC_NULL`` does nothing and records nothing (its request is complete).
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
from mpi4py import MPI

from ... import dual
from ...grad_mode import is_grad_enabled
from ...graph import Node, gradient_edge
from ...tensor import Tensor
from .. import comm as _comm
from .. import context as _context
from .. import messages, transport
from ..transport import SendRequest

__all__ = ["send", "isend", "SendRequest", "SendBackward", "NoContextWarning"]


class NoContextWarning(UserWarning):
    """A tensor that requires grad was sent outside any distributed autograd context."""


class SendBackward(Node):
    """The root of this rank's graph for one sent tensor: its gradient arrives from ``dest``.

    The distributed engine supplies it from outside (``GraphTask.supply``); applying it passes
    the gradient on to the sent tensor's ``grad_fn``.
    """

    takes_arrays = True

    def __init__(self, tensor, dest, context_id, message_id):
        super().__init__()
        self.next_functions = (gradient_edge(tensor),)
        self.input_meta = ((tensor.data.shape, tensor.data.dtype),)
        self.dest, self.context_id, self.message_id = dest, context_id, message_id

    def apply(self, grads):
        return grads


class Outgoing:
    """A checked send, not yet recorded nor started: ``start()`` records it in the open context
    (if any) and posts it."""

    def __init__(self, comms, tensor, dest, tag, op):
        self.comms, self.tensor, self.op = comms, tensor, op
        self.dest = comms.check_peer(dest, op, "dest", null=True)
        self.tag = comms.check_tag(tag, op)
        if isinstance(tensor, Tensor):
            array = tensor.data
        elif isinstance(tensor, (np.ndarray, np.generic)):
            array = np.asarray(tensor)
        else:
            raise TypeError(
                f"{op}: expected a Tensor or a numpy array, got {type(tensor).__name__}"
            )
        messages.check_sendable(array)
        self.array = array
        dual_tensor = isinstance(tensor, Tensor) and tensor._fw
        self.tangents = _tangents(tensor, op, comms.rank) if dual_tensor else ()
        self.context = _context.current()
        if self.context is not None:
            self.context.check_open(op)

    def start(self):
        """Record the send (see the module docstring) and post it; a ``SendRequest``."""
        if self.dest == MPI.PROC_NULL:
            return SendRequest([], (), self.dest, self.tag)
        context, tensor = self.context, self.tensor
        tracked = isinstance(tensor, Tensor) and tensor.requires_grad and is_grad_enabled()
        recorded = [tensor] if tracked else []  # the arrays that require grad, in message order
        header = self._tangent_header(recorded) if self.tangents else {}
        if context is not None:
            header.update(context_id=context.context_id, requires_grad=tracked)
            for i, sent in enumerate(recorded):  # consecutive ids: Note [tangents on the wire]
                message_id = context.next_message_id()
                if i == 0:
                    header["message_id"] = message_id
                context.send_functions[message_id] = SendBackward(
                    sent, self.dest, context.context_id, message_id
                )
            context.sent_to[self.dest] += 1
        elif recorded:
            _warn_no_context(self.op)
        channel = self.comms.data_comm(context and context.context_id)
        request = transport.post(self.comms, channel, self.array, self.dest, self.tag, **header)
        if context is not None:
            request.context = weakref.ref(context)  # its wait reads the context's notices
        return request

    def _tangent_header(self, recorded):
        """The header's words for the tangents (see Note [tangents on the wire] in messages.py);
        appends those that require grad to ``recorded``."""
        grad, wire = is_grad_enabled(), []
        for parent, depth, tangent in self.tangents:
            requires_grad = grad and tangent.requires_grad
            wire.append((messages.Tangent(parent, depth, requires_grad), tangent.data))
            if requires_grad:
                recorded.append(tangent)
        return {"tangents": wire, "levels": len(dual.open_levels())}


def _tangents(tensor, op, rank):
    """The tangents ``tensor`` carries, as (parent, depth, tangent) in the order of Note
    [tangents on the wire]; ValueError if there are more than a message carries."""
    levels = dual.open_levels()
    found, index = [], 0
    carriers = [tensor]  # array i of the message is carriers[i]
    while index < len(carriers):
        fw = carriers[index]._fw
        if fw:
            for depth, level in enumerate(levels):
                tangent = fw.get(level)
                if tangent is not None:
                    found.append((index, depth, tangent))
                    carriers.append(tangent)
        index += 1
    if len(found) > messages.MAX_TANGENTS:
        raise ValueError(
            f"{op}: rank {rank}: the tensor carries {len(found)} tangents over {len(levels)} "
            f"nested dual levels; a message carries at most {messages.MAX_TANGENTS}"
        )
    return found


_warned = False


def _warn_no_context(op):
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"{op}: a tensor that requires grad was sent outside any distributed autograd "
            "context, so no gradient will flow back across this message. Send it inside "
            "`with dist_autograd.context() as context_id:` to record it (this warning is shown "
            "once per process)",
            NoContextWarning,
            stacklevel=4,
        )


def isend(tensor: Tensor | np.ndarray, dest: int, tag: int = 0) -> SendRequest:
    """Start sending tensor (a Tensor or ndarray) to rank dest; returns a ``SendRequest``.

    The data is not copied when C-contiguous: do not modify it before ``wait()``.
    """
    return Outgoing(_comm.get(), tensor, dest, tag, "isend").start()


def send(
    tensor: Tensor | np.ndarray, dest: int, tag: int = 0, timeout: float | None = None
) -> None:
    """Send tensor (a Tensor or ndarray) to rank dest; returns when its buffer may be reused.

    Like MPI_Send, a large message may wait for the matching receive: to send to oneself or
    around a ring use ``isend`` or ``sendrecv``.  ``DistTimeoutError`` after ``timeout`` seconds
    (default ``MPIGRAD_TIMEOUT``), the send still pending.
    """
    Outgoing(_comm.get(), tensor, dest, tag, "send").start().wait(timeout)
