"""The distributed backward pass (FAST mode, as torch.distributed.autograd's).

Collective: every rank of the communicator calls ``backward(context_id, roots)`` for the same
context, with its own roots (possibly none).  It returns on every rank once every rank has
finished, and raises on every rank if any part failed.

Each rank runs one ``GraphTask`` (the rank-local engine) from its roots plus all send functions and
collective functions of the context, the latter as extra roots whose gradient arrives from outside
(see Note [collectives in a context]).  A recv function that
runs sends its gradient, or a no-gradient marker, to the rank the tensor came from, keyed by
(context id, message id); a received gradient is matched to its send function by message id and
supplied to the task.  Recv functions the task cannot reach send their marker at once, so every
send function receives exactly one message and a sent tensor that no root uses blocks no one.
The task sums the gradients that meet at a node in a fixed order whatever order they arrived in,
so the gradients are the same bits on every run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from ..engine import BackwardError, GraphTask, unit_seed
from ..graph import gradient_edge
from ..tensor import Tensor
from . import comm as _comm
from . import context as _context
from . import transport, waiting
from .agreement import Agreement, equality_words, same_everywhere
from .errors import BackwardTimeoutError, DistBackwardError, DistributedError, DistTimeoutError
from .functions.recv import RecvBackward
from .functions.send import SendBackward
from .messages import Kind

__all__ = ["backward", "DistBackwardError", "BackwardTimeoutError"]

_OP = waiting.BACKWARD


def backward(
    context_id: int,
    roots: Sequence[Tensor],
    retain_graph: bool | None = None,
    create_graph: bool = False,
    timeout: float | None = None,
) -> None:
    """Run the distributed backward of ``roots`` in ``context_id``.

    ``roots`` is this rank's scalar root Tensor, or a sequence of them (possibly empty).
    Gradients of this rank's leaves accumulate in the context (``get_gradients``).  Blocks until
    the whole distributed computation is done; raises ``DistBackwardError`` on every rank if any
    rank failed.  ``timeout`` (seconds; default ``MPIGRAD_TIMEOUT``): a rank still waiting after
    it raises ``BackwardTimeoutError``, listing the message ids and peers it waits for and what
    the other ranks are doing, and every other rank raises ``DistBackwardError`` naming it.
    A failed pass fails its context: leave it and enter a new one.

    ``create_graph``: the pass is recorded, its messages and collectives included (see Note
    [differentiable gradient messages]), so the gradients carry a graph and a later backward of
    the same context differentiates through this one (a Hessian-vector product).  Every rank
    passes the same ``retain_graph`` (default: ``create_graph``) and ``create_graph``.
    """
    retain_graph = create_graph if retain_graph is None else retain_graph
    _Pass(_comm.get(), context_id, roots, bool(retain_graph), bool(create_graph), timeout).run()


def _root_list(roots, rank):
    """``roots`` as a list of scalar Tensors that require grad; errors name the problem."""
    if isinstance(roots, Tensor):
        roots = [roots]
    elif isinstance(roots, (list, tuple)):
        roots = list(roots)
    else:
        raise TypeError(
            f"rank {rank}: roots must be a Tensor or a list or tuple of Tensors, "
            f"got {type(roots).__name__}"
        )
    for i, root in enumerate(roots):
        if not isinstance(root, Tensor):
            raise TypeError(f"rank {rank}: roots[{i}] is a {type(root).__name__}, not a Tensor")
        if root.size != 1:
            raise RuntimeError(
                f"rank {rank}: roots[{i}] has shape {root.shape}; roots must be "
                "scalars (the objective is the sum of all roots on all ranks)"
            )
        if not root.requires_grad:
            raise RuntimeError(f"rank {rank}: roots[{i}] does not require grad")
    return roots


class _Pass:
    """One distributed backward pass on this rank."""

    def __init__(self, comms, context_id, roots, retain_graph, create_graph, timeout):
        self.comms, self.context_id, self.roots = comms, context_id, roots
        self.retain_graph, self.create_graph, self.timeout = retain_graph, create_graph, timeout
        self.context = self.task = self.waiter = None
        self.agreement = None  # made while this rank first waits, or at the end: _agreement
        self.spins = 0
        self.waiting = {}  # message id -> send function still waiting for its gradient
        self.turns = []  # the collective functions still to run, the last to run first
        self.turn = None  # the collective function whose turn it is
        self.sent_to = [0] * comms.size
        self.received = 0
        self.requests = []  # our sends in flight, not yet kept until sent (see _pause)
        self.status = MPI.Status()

    def run(self):
        self.context = context = _context.retrieve(self.context_id, _OP)
        rank = self.comms.rank
        if context.running is not None:
            raise RuntimeError(
                f"rank {rank}: a backward pass of context {self.context_id} is already running"
            )
        index = context.passes
        context.passes += 1
        self.index = index
        self.tag = self.comms.gradient_tag(self.context_id, index)  # Note [pass tags] in comm.py
        self.started = time.monotonic()
        context.running = self
        try:
            self._run()
        except BaseException:  # the pass is abandoned: see Note [failing together]
            if self.agreement is not None:
                self.agreement.cancel()
            self._keep_requests()  # they may never be received
            raise
        finally:
            context.running = None
            if self.waiter is not None:
                self.waiter.close()
        if not self.retain_graph:
            context.graph_freed = True

    def _run(self):
        """The pass, raising what every rank raises on a failure (Note [failing together])."""
        context = self.context
        try:
            # Notices are read once this rank waits: a failure it does not know of yet stops the
            # pass's agreement, so the pass waits, and reads it then.
            context.check_open(_OP, context.stage())
            self._build_task(self._validated_roots())
            self._send_unreachable_markers()
            self._execute()
            self._finish()
        except Exception as exc:
            self._raise(exc)

    def _raise(self, exc):
        """Raise what every rank raises for ``exc`` (Note [failing together]).  A node that
        raised a DistributedError (an adjoint collective that learned of a failure, or timed
        out) raises it, not the engine's BackwardError around it."""
        context = self.context
        if isinstance(exc, BackwardError) and isinstance(exc.__cause__, DistributedError):
            exc = exc.__cause__
        if isinstance(exc, DistTimeoutError):
            context.fail(f"gave up: {exc}")
            raise BackwardTimeoutError(str(exc)) from None
        if isinstance(exc, DistributedError):  # another rank failed: the context has failed
            raise DistBackwardError(str(exc)) from None
        context.fail(f"{type(exc).__name__}: {exc}")  # this rank's part failed
        raise context.failure(_OP, DistBackwardError) from exc

    # Note [collectives in a context]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    # A collective called in a context on tensors that require grad records its node in the
    # context (``Call.apply``), in the order of the calls, which is the same on every rank.  The
    # pass runs their adjoints in the reverse of that order on every rank: each collective node
    # is an extra root of the task, held back by one input that the pass supplies when its turn
    # comes, and its turn comes once the node before it (called after it in forward) has run.
    # The turn supplies zeros, unless the node has all its gradients already: so a node that no
    # root reaches, or that gets no gradient, still runs its adjoint, contributing zeros, and no
    # rank waits for one that will never join it.  That order cannot deadlock: in forward, every
    # node downstream of a collective's output was made after the collective completed, so its
    # gradient depends on nodes made later on every rank, the later collectives included, never
    # on an earlier collective.  But a rank whose turn has come may wait in an adjoint for a rank
    # that first needs a gradient from it, made by nodes that are ready beside the collective
    # node: so while an adjoint collective waits (``Call._wait``), the pass goes on receiving
    # gradients and running the nodes that become ready (``progressing``), as if the collective
    # were non-blocking.  Those nodes are never collective nodes, whose turn comes later.
    def _execute(self):
        """Run the task to its end: the nodes as they become ready, the gradients received as
        they come, the collective nodes in their turns (Note [collectives in a context])."""
        task = self.task
        self._next_turn()
        while True:
            task.execute()
            if self.turn is not None and task.dependencies[self.turn] == 0:  # it has run
                self._next_turn()
            elif self.waiting:
                self._receive(block=True)
            elif self.turn is None:
                return
            else:
                raise RuntimeError(
                    f"rank {self.comms.rank}: the node of {self.turn.call.describe()} can never "
                    "run: its gradient waits for nothing this pass will deliver"
                )

    def _next_turn(self):
        """Give the next collective node its turn (see Note [collectives in a context])."""
        if not self.turns:
            self.turn = None
            return
        node, shape, dtype = self.turns.pop()
        self.turn = node
        task = self.task
        complete = task.dependencies[node] == 1 and node in task.buffers
        task.supply(node, None if complete else np.zeros(shape, dtype))

    def progressing(self, test):
        """``test`` (of an adjoint collective's request), made to keep the pass going while it
        is false: see Note [collectives in a context]."""
        task = self.task

        def progress():
            while self.waiting and self._receive(block=False):
                pass
            if task.ready:
                task.execute()
            return test()

        return progress

    # --- the start of a pass: roots, the task, the markers of unreachable recv functions ---------
    def _validated_roots(self):
        """This rank's roots as a list, checked: the context's graph must still be there, and
        each root be a scalar Tensor that requires grad."""
        rank = self.comms.rank
        if self.context.graph_freed:
            raise RuntimeError(
                f"rank {rank}: the graph of context {self.context_id} was freed by an earlier "
                "backward; pass retain_graph=True to that backward to run another"
            )
        return _root_list(self.roots, rank)

    def _build_task(self, roots):
        """The local engine's task from ``roots`` (each seeded with 1), the context's send
        functions (extra roots, supplied as their gradients arrive), which it waits for, and its
        collective functions (extra roots supplied in their turns)."""
        context, create_graph = self.context, self.create_graph
        sends = list(context.send_functions.values())
        self.waiting = {node.message_id: node for node in sends}
        self.turns = list(context.collectives)
        self.task = GraphTask(
            [gradient_edge(r) for r in roots],
            [unit_seed(r.shape, r.dtype) for r in roots],
            extra_roots=sends + [node for node, _, _ in self.turns],
            keep_graph=self.retain_graph,
            create_graph=create_graph,
            accumulate=(
                (lambda leaf, grad: context.accumulate(leaf, grad, True))
                if create_graph
                else context.accumulate
            ),
            ordered=True,
        )

    def _send_unreachable_markers(self):
        """Send the no-gradient marker of every recv function the task cannot reach: it will
        never run, and its sender's send function waits for one message."""
        for node in self.context.recv_functions:
            if node not in self.task.dependencies:
                self.send_gradient(node, None)

    # --- messages -------------------------------------------------------------------------

    # Note [differentiable gradient messages]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    # Under create_graph a gradient that requires grad travels as a tensor sent in the context
    # does: the sender records a send function for it and the receiver a recv function, so a
    # later pass sends the gradient of that gradient back.  Their message id must be known to
    # both without a word of its own on the wire: the k-th such gradient that rank s sends to
    # rank d in a context gets ``derived_id(k, d, size)``, a negative id that no tensor sent in
    # the context has.  Both count them (``gradients_sent``, ``gradients_received``): MPI keeps
    # the order of the messages from one rank to another on one communicator and tag, and the
    # passes of a context run one after another.
    def send_gradient(self, node, grad):
        """Send a recv function's gradient (None: the no-gradient marker) to its source."""
        if grad is None:
            self._post(Kind.NO_GRADIENT, node.source, np.zeros(0, np.uint8), node.message_id)
            return
        recorded = False
        if isinstance(grad, Tensor):
            if grad._fw:
                raise RuntimeError(
                    f"the gradient for message id {node.message_id} (from rank {node.source}) "
                    "carries forward-mode tangents, and mpigrad.distributed does not send "
                    "tangents yet: leave the dual level before dist_autograd.backward"
                )
            recorded = self.create_graph and grad.requires_grad
            if recorded:
                self._record_send(grad, node.source)
            grad = grad.data
        self._post(Kind.GRADIENT, node.source, np.asarray(grad), node.message_id, recorded)

    def _record_send(self, grad, dest):
        """Record a send function for ``grad``, a gradient sent to ``dest`` that requires grad
        (Note [differentiable gradient messages])."""
        context = self.context
        k = context.gradients_sent[dest]
        context.gradients_sent[dest] = k + 1
        message_id = derived_id(k, dest, self.comms.size)
        context.send_functions[message_id] = SendBackward(grad, dest, self.context_id, message_id)

    def _received_gradient(self, array, source):
        """A gradient from ``source`` that requires grad, as a Tensor whose ``grad_fn`` is a
        new recv function (Note [differentiable gradient messages])."""
        context, comms = self.context, self.comms
        k = context.gradients_received[source]
        context.gradients_received[source] = k + 1
        node = RecvBackward(source, context, derived_id(k, comms.rank, comms.size), comms.rank)
        context.recv_functions.append(node)
        return Tensor._make(array, node)

    def _post(self, kind, dest, array, message_id, requires_grad=False):
        self.requests.append(
            transport.post(
                self.comms,
                self.comms.gradient,
                array,
                dest,
                self.tag,
                kind,
                context_id=self.context_id,
                message_id=message_id,
                requires_grad=requires_grad,
            )
        )
        self.sent_to[dest] += 1

    def _receive(self, block):
        """Receive and handle one message; without ``block``, return False if none is there."""
        comms, tag, status = self.comms, self.tag, self.status
        received = transport.poll(comms, comms.gradient, MPI.ANY_SOURCE, tag, status)
        while received is None:
            if not block:
                return False
            self._pause()
            received = transport.poll(comms, comms.gradient, MPI.ANY_SOURCE, tag, status)
        header, array, source = received
        if self.waiter is not None:
            self.waiter.reset_pace()
        self._handle(header, array, source)
        return True

    def _pause(self):
        """Wait a little for a message; the time this rank waits anyway also readies the end of
        the pass: its agreement, with its receives posted, and its sends kept until sent."""
        if self.agreement is None:
            self._agreement()
        if self.requests:
            self._keep_requests()
        if self.waiter is None:
            self.spins += 1
            if self.spins < waiting.FREE_POLLS:  # a short wait needs no Waiter
                return
            self.waiter = waiting.Waiter(
                _OP,
                self.timeout,
                self._describe,
                context=self.context,
                summarize=self._summarize,
                check=self._read_leavers,
                started=self.started,
                stage=self.context.stage(),
                state=self._state,
            )
        self.waiter.pause()

    def _handle(self, header, array, source):
        rank = self.comms.rank
        if header.context_id != self.context_id:
            raise RuntimeError(
                f"rank {rank} received a gradient from rank {source} for context "
                f"{header.context_id} while running backward for context {self.context_id}: "
                "every rank must call backward for the same context"
            )
        self.received += 1
        node = self.waiting.pop(header.message_id, None)
        if node is None:
            raise RuntimeError(
                f"rank {rank} received a gradient from rank {source} for message id "
                f"{header.message_id} in context {self.context_id}, but has no send function "
                "waiting for it (the ranks' sends and receives do not match)"
            )
        if node.dest != source:
            raise RuntimeError(
                f"rank {rank}: the gradient for message id {header.message_id} came from rank "
                f"{source}, but that tensor was sent to rank {node.dest}"
            )
        if header.kind is Kind.NO_GRADIENT:
            self.task.supply(node, None)
        elif header.requires_grad:
            self.task.supply(node, self._received_gradient(array, source))
        else:
            self.task.supply(node, array)

    def _read_leavers(self):
        """Read the leaving-agreement messages of this context that have come: a rank that sent
        one has left the context (its last word is its number of passes); if it ran fewer passes,
        it never ran this one.  The messages are kept for this rank's own leaving."""
        comms, status = self.comms, MPI.Status()
        tag = comms.control_tag(self.context_id, agreement=True)
        length = _context.leaving_message_length(comms.size)
        while (probed := comms.control.improbe(MPI.ANY_SOURCE, tag, status)) is not None:
            source = status.Get_source()
            message = transport.take(comms, comms.control, probed, np.empty(length, np.int64))
            self.context.early_leavers[source] = message
            if message[-1] < self.context.passes:
                raise RuntimeError(
                    f"rank {source} left context {self.context_id} after {message[-1]} backward "
                    f"pass(es), without calling this one (pass {self.context.passes})"
                )

    # --- what this rank waits for -------------------------------------------------------------
    def _state(self):
        return "agreeing" if self.agreement is not None and self.agreement.started else "running"

    def _describe(self):
        if self.agreement is None or not self.agreement.started:
            return ", ".join(
                f"message id {mid} from rank {node.dest}"
                for mid, node in sorted(self.waiting.items())
            )
        return (
            f"the other ranks to finish (this rank's part is done; waiting for "
            f"{self.agreement.step})"
        )

    def _summarize(self, answers, ranks):
        """Which ranks are elsewhere, which are in this pass and what they wait for, and which are
        not waiting in mpigrad: not yet in this pass, or computing their part of it."""
        elsewhere, silent, inside, done = [], [], [], []
        for r in ranks:
            reply = answers.get(r)
            if reply is None or reply.get("op") is None:
                silent.append(r)
            elif (
                reply["op"] != _OP
                or reply["context"] != self.context_id
                or reply["passes"] != self.context.passes
            ):
                elsewhere.append(r)
            elif reply["state"] == "agreeing":
                done.append(r)
            else:
                inside.append(f"rank {r} (waiting for {reply['waiting']})")
        parts = []
        if elsewhere:
            parts.append(
                f"ranks that have not entered this backward: {elsewhere} ("
                + waiting.describe_answers(answers, elsewhere)
                + ")"
            )
        if silent:
            parts.append(
                f"ranks not waiting in mpigrad (they have not entered this backward, or "
                f"are computing their part of it): {silent}"
            )
        if inside:
            parts.append("ranks in it that have not finished their part: " + ", ".join(inside))
        if done:
            parts.append(f"ranks that have finished their part: {done}")
        return "; ".join(parts)

    # --- the end of a pass ------------------------------------------------------------------

    # Note [ending a pass]
    # ~~~~~~~~~~~~~~~~~~~~
    # When a rank's part is done (every send function has its message, every collective node
    # has run and the task has nothing ready) it joins an agreement (see Note [agreements] in
    # agreement.py) on: the number of messages it sent to each rank, the ``equality_words`` of
    # its context id (their totals pass ``same_everywhere`` if every rank ran the same context;
    # the ids are compared modulo a prime, so ids a multiple of it apart would pass too),
    # retain_graph and create_graph.  Once it has the total it knows how many messages were sent
    # to it in all, and receives until it has them all.  So every message of a pass is received
    # within the pass.  A rank whose part fails (an exception, its timeout) does not agree: it
    # tells every rank and raises at once, and so does every rank that learns of it (see Note
    # [failing together] in waiting.py): the context has failed.
    def _agreement(self):
        """The pass's agreement (Note [ending a pass]), its receives posted; made once."""
        comms = self.comms
        tag = comms.gradient_tag(self.context_id, self.index, agreement=True)
        self.agreement = agreement = Agreement(comms, comms.gradient, tag)
        agreement.post_receives(comms.size + 4)  # the length of _finish's vector
        return agreement

    def _keep_requests(self):
        """Hand this rank's sends in flight over to ``transport.keep_until_sent``."""
        for request in self.requests:
            transport.keep_until_sent(request)
        self.requests = []

    def _finish(self):
        """The agreement that ends the pass; see Note [ending a pass]."""
        comms, size = self.comms, self.comms.size
        agreement = self.agreement or self._agreement()
        vector = (
            self.sent_to + equality_words(self.context_id) + [self.retain_graph, self.create_graph]
        )
        total = agreement.run(vector, (), self._pause)
        while self.received < total[comms.rank]:
            self._receive(block=True)
        ids, retained, created = total[size : size + 2], total[size + 2], total[size + 3]
        self._keep_requests()
        if not same_everywhere(ids, size):
            raise DistBackwardError(
                f"rank {comms.rank}: the ranks called {_OP} for different contexts (this rank: "
                f"context {self.context_id})"
            )
        for name, count in (("retain_graph", retained), ("create_graph", created)):
            if count not in (0, size):
                raise DistBackwardError(
                    f"rank {comms.rank}: the ranks disagree on {name} ({count} of {size} set it)"
                )


def derived_id(k, dest, size):
    """The message id of the k-th gradient that requires grad sent to rank ``dest`` in a
    context (see Note [differentiable gradient messages])."""
    return -2 - (k * size + dest)
