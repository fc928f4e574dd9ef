"""Distributed autograd contexts: the state of one ``with dist_autograd.context()`` block.

A context owns everything of its passes, so leaving it frees everything in one call: the send
functions (by message id), the recv functions, the gradients accumulated for this rank's leaves,
and the pass in progress.  Contexts do not nest.

Note [context ids]: ``context()`` is collective: every rank enters its contexts in the same
order, so a per-process counter gives every rank the same id with no communication.  Messages
carry the id, and a rank that receives a message of another context raises an error naming both.
"""

import contextlib
import itertools

from ..engine import added
from . import comm as _comm

__all__ = ["DistAutogradContext", "context", "current", "retrieve"]


class DistAutogradContext:
    """Send and recv functions and accumulated gradients of one context, on this rank."""

    def __init__(self, context_id):
        self.context_id = context_id
        self.send_functions = {}  # message id -> SendBackward
        self.recv_functions = []  # RecvBackward, in the order the tensors arrived
        self.gradients = {}  # leaf Tensor -> its accumulated gradient (a Tensor)
        self.graph_freed = False  # a backward without retain_graph ran
        self.running = None  # the pass in progress (mpigrad.distributed.engine)
        self._message_ids = itertools.count()

    def next_message_id(self):
        return next(self._message_ids)

    def accumulate(self, leaf, grad):
        """Add ``grad`` to ``leaf``'s gradient in this context (the engine's leaf sink)."""
        self.gradients[leaf] = added(self.gradients.get(leaf), grad)

    def clear(self):
        self.send_functions.clear()
        self.recv_functions.clear()
        self.gradients.clear()
        self.running = None


_open = None  # the open context, or None
_next_id = itertools.count()


@contextlib.contextmanager
def context():
    """Enter a distributed autograd context; yields its id, the same on every rank.

    Collective: every rank of the communicator enters it, in the same order (see Note [context
    ids]).  Leaving it frees its send and recv functions, saved tensors and gradients.
    """
    global _open
    comms = _comm.get()
    if _open is not None:
        raise RuntimeError(
            f"rank {comms.rank}: distributed autograd contexts do not nest; context "
            f"{_open.context_id} is already open"
        )
    ctx = DistAutogradContext(next(_next_id))
    _open = ctx
    try:
        yield ctx.context_id
    finally:
        ctx.clear()
        _open = None


def current():
    """The open context, or None."""
    return _open


def retrieve(context_id, what):
    """The open context if its id is ``context_id``; otherwise a RuntimeError naming both."""
    if _open is not None and _open.context_id == context_id:
        return _open
    now = "no context is open" if _open is None else f"the open context is {_open.context_id}"
    raise RuntimeError(
        f"{what}: unknown context id {context_id!r} on rank {_comm.get().rank} (it was exited "
        f"or never entered; {now})"
    )
