"""Distributed autograd contexts: the state of one ``with dist_autograd.context()`` block.

A context owns everything of its passes, so leaving it frees everything in one call: the send
functions (by message id), the recv functions, the collective functions, the gradients
accumulated for this rank's leaves, the pass in progress and the tally of tensors sent and
received in it.  Contexts do not nest.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator

from mpi4py import MPI

from ..engine import added
from . import comm as _comm
from . import transport, waiting
from .agreement import Agreement, equality_words, same_everywhere
from .errors import DistributedError
from .messages import Kind

__all__ = [
    "DistAutogradContext",
    "context",
    "current",
    "retrieve",
    "last_id",
    "align_ids",
    "leaving_message_length",
]


class DistAutogradContext:
    """Send, recv and collective functions, accumulated gradients and message tallies of one
    context, on this rank."""

    def __init__(self, context_id, size):
        self.context_id = context_id
        self.send_functions = {}  # message id -> SendBackward
        self.recv_functions = []  # RecvBackward, in the order the tensors arrived
        # The nodes of the collectives recorded in it, in the order of their calls (the same on
        # every rank), each with the (shape, dtype) of its first output; see Note [collectives
        # in a context] in engine.py.
        self.collectives = []
        # Gradients that require grad sent to / received from each rank by create_graph passes;
        # see Note [differentiable gradient messages] in engine.py.
        self.gradients_sent = [0] * size
        self.gradients_received = [0] * size
        self.gradients = {}  # leaf Tensor -> its accumulated gradient (a Tensor)
        self.graph_freed = False  # a backward without retain_graph ran
        self.running = None  # the pass in progress (mpigrad.distributed.engine)
        self.passes = 0  # backward passes started in this context
        self.sent_to = [0] * size  # tensors sent to each rank in this context
        self.received = 0  # tensors received in this context
        self.receiving = weakref.WeakSet()  # RecvRequests posted in it, not yet complete
        self.failures = {}  # rank -> (its stage, its failure text): Note [failing together]
        self.reported = False  # whether this rank has raised for the failures
        self.early_leavers = {}  # rank -> its leaving-agreement message, read before this rank left
        self._message_ids = itertools.count()

    def next_message_id(self):
        return next(self._message_ids)

    def accumulate(self, leaf, grad, create_graph=False):
        """Add ``grad`` to ``leaf``'s gradient in this context (the engine's leaf sink);
        differentiably under ``create_graph``."""
        self.gradients[leaf] = added(self.gradients.get(leaf), grad, create_graph)

    def stage(self):
        """Where this rank is among the context's backward passes: ``2 p - 1`` inside pass p
        (counted from 1), ``2 p`` after it.  A failure is told with its rank's stage, so that a
        pass that can still finish (the failed rank finished it) is not failed by it."""
        return 2 * self.passes - (self.running is not None)

    def failed(self, stage=None):
        """Whether a failure is known (at ``stage`` or before it, if given)."""
        return bool(self.failures) and any(
            stage is None or s <= stage for s, _ in self.failures.values()
        )

    def failure(self, where, error=DistributedError):
        """The error to raise at ``where`` on this rank for the failures (which it then has
        reported)."""
        self.reported = True
        ranks = sorted(self.failures)
        return error(
            f"{where} on rank {_comm.get().rank}: context {self.context_id} failed on "
            f"rank(s) {ranks}:\n" + "\n".join(self.failures[r][1] for r in ranks)
        )

    def fail(self, text):
        """This rank's part failed (the caller raises): record it and tell every other rank; no
        agreement follows."""
        comms = _comm.get()
        self.reported = True
        if comms.rank not in self.failures:
            stage, text = self.stage(), f"rank {comms.rank}: {text}"
            self.failures[comms.rank] = (stage, text)
            waiting.send_notice(
                comms, Kind.ERROR, text, comms.control_tag(self.context_id), self.context_id, stage
            )

    def check_open(self, what, stage=None):
        """Raise if the context has failed (it stays failed: leave it, enter a new one)."""
        if self.failed(stage):
            raise self.failure(what)

    def clear(self):
        self.send_functions.clear()
        self.recv_functions.clear()
        self.collectives.clear()
        self.gradients.clear()
        self.early_leavers.clear()
        self.running = None


# Note [context ids]
# ~~~~~~~~~~~~~~~~~~
# ``context()`` is collective: every rank enters its contexts in the same order, so a per-process
# counter gives every rank the same id with no communication. Messages carry the id, and a rank that
# receives a message of another context raises an error naming both. ``init`` starts the ranks'
# counters at the same value (the largest of them), so they agree again after a program whose ranks
# went out of step is re-initialized; an id is never used twice in a process, so no message of an
# earlier context can be taken for one of a later context.

_open = None  # the open context, or None
_next_id = itertools.count()
_last = -1  # the id of the last context entered


def align_ids(comm):
    """Start every rank's context ids at the same value (collective over ``comm``)."""
    global _next_id
    _next_id = itertools.count(comm.allreduce(_last + 1, op=MPI.MAX))


def last_id():
    """The id of the last context this rank entered (-1: none yet)."""
    return _last


@contextlib.contextmanager
def context(timeout: float | None = None) -> Iterator[int]:
    """Enter a distributed autograd context; yields its id, the same on every rank.

    Collective: every rank of the communicator enters it, in the same order, and leaves it (see
    Notes [context ids] and [leaving a context]).  Leaving frees its send and recv functions, saved
    tensors and gradients; it raises ``DistributedError`` on every rank if a tensor sent in it was
    never received, or if another rank's part failed.  ``timeout`` bounds the wait for the other
    ranks when leaving (default ``MPIGRAD_TIMEOUT``).
    """
    global _open, _last
    comms = _comm.get()
    if _open is not None:
        raise RuntimeError(
            f"rank {comms.rank}: distributed autograd contexts do not nest; context "
            f"{_open.context_id} is already open"
        )
    context = DistAutogradContext(next(_next_id), comms.size)
    _open, _last = context, context.context_id
    try:
        yield context.context_id
    except BaseException as exc:
        if not context.failures:
            context.fail(
                f"left context {context.context_id} by an exception: {type(exc).__name__}: {exc}"
            )
        raise
    else:
        _leave(comms, context, timeout)
    finally:
        _open = None
        context.clear()


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


# --- leaving ------------------------------------------------------------------------------------

# Note [leaving a context]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# Leaving a context is collective, as entering it is: the ranks agree (see Note [agreements] in
# agreement.py) on how many tensors each of them sent to each rank in the context and how many each
# received, on the context's id and on the number of backward passes each ran in it. A rank that was
# sent more than it received takes the rest from its context's data communicator (see Note [data
# communicators] in comm.py) to name them, and every rank raises ``DistributedError`` listing the
# tensors left unreceived: a message never received is reported where it was lost, not blamed on the
# next context. A rank that leaves by an exception does not agree: it tells the others (see Note
# [failing together] in waiting.py), who raise naming it.


def _leave(comms, context, timeout):
    waiting.read_notices(context)
    if context.failures:
        if context.reported:  # this rank has raised for them already
            return
        raise context.failure(waiting.LEAVING)
    size, cid = comms.size, context.context_id
    unmatched = _settle_receives(context)
    received = [0] * size
    received[comms.rank] = context.received
    agreement = Agreement(comms, comms.control, comms.control_tag(cid, agreement=True))
    agreement.early, context.early_leavers = context.early_leavers, {}
    vector = (
        context.sent_to
        + received
        + [len(unmatched)]
        + equality_words(context.passes)
        + equality_words(cid)
    )
    with waiting.Waiter(
        waiting.LEAVING, timeout, lambda: agreement.step, context=context
    ) as waiter:
        try:
            total = agreement.run(vector, [context.passes], waiter.pause)
        except BaseException as exc:
            agreement.cancel()
            if not context.reported:  # this rank gives up: the others must not wait for it
                context.fail(f"gave up leaving context {cid}: {type(exc).__name__}: {exc}")
            raise
        sent, got = total[:size], total[size : 2 * size]
        posted, passes, ids = total[2 * size], total[2 * size + 1 : 2 * size + 3], total[-2:]
        problems = []
        if not same_everywhere(ids, size):
            problems.append(f"the ranks left different contexts (this rank: context {cid})")
        if not same_everywhere(passes, size):
            problems.append(
                f"the ranks ran different numbers of backward passes in it (this "
                f"rank: {context.passes})"
            )
        lost = [r for r in range(size) if sent[r] != got[r]]
        if lost:
            details = (
                _take_unreceived(comms, context, sent[comms.rank], waiter)
                if comms.rank in lost
                else []
            )
            problems.append(
                "tensors sent in it were never received ("
                + ", ".join(f"rank {r} received {got[r]} of the {sent[r]} sent to it" for r in lost)
                + ")"
                + "".join(f"\n  {line}" for line in details)
            )
        if posted:
            problems.append(
                f"{posted} receive(s) posted in it were not waited for in it, and were cancelled"
                + "".join(f"\n  {line}" for line in unmatched)
            )
    if problems:
        raise DistributedError(f"rank {comms.rank}: leaving context {cid}: " + "; ".join(problems))


def leaving_message_length(size):
    """The int64 words of a rank's leaving-agreement message: ``_leave``'s vector (tallies to and
    from each rank, receives cancelled, equality words of passes and id) and its passes."""
    return 2 * size + 6


def _settle_receives(context):
    """Complete the receives posted in the context whose tensor has come, cancel the others so
    that no later tensor can land in them, and say which those were."""
    cancelled = []
    for request in list(context.receiving):
        if request.cancel():
            cancelled.append(
                f"rank {_comm.get().rank}: a receive from rank {request.source} "
                f"with tag {request.tag}"
            )
    context.receiving = weakref.WeakSet()
    return cancelled


def _take_unreceived(comms, context, expected, waiter):
    """Receive the tensors sent to this rank in the context that it never received, and say
    what they were: sender, tag, shape and dtype."""
    channel, status = comms.data_comm(context.context_id), MPI.Status()
    lines = []
    while context.received < expected:
        received = transport.poll(comms, channel, MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        if received is None:
            waiter.pause()
            continue
        header, array, source = received
        tag = status.Get_tag()
        if header.context_id != context.context_id:
            continue  # left by a failed context: see Note [data communicators]
        context.received += 1
        lines.append(
            f"rank {source} sent rank {comms.rank} a tensor of shape {array.shape} "
            f"and dtype {array.dtype} with tag {tag}, never received"
        )
    return lines
