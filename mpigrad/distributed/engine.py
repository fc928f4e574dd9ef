"""The distributed backward pass (FAST mode, as torch.distributed.autograd's).

Collective: every rank of the communicator calls ``backward(context_id, roots)`` for the same
context, with its own roots (possibly none).  It returns on every rank once every rank has
finished, and raises on every rank if any part failed.

Each rank runs one ``GraphTask`` (the rank-local engine) from its roots plus all send functions of
the context, the latter as extra roots whose gradient arrives from outside.  A recv function that
runs sends its gradient, or a no-gradient marker, to the rank the tensor came from, keyed by
(context id, message id); a received gradient is matched to its send function by message id and
supplied to the task.  Recv functions the task cannot reach send their marker at once, so every
send function receives exactly one message and a sent tensor that no root uses blocks no one.

Note [ending a pass]: when a rank's part is done (every send function has its message and the
task has nothing ready), or has failed, it joins one non-blocking allreduce (SUM) on the control
communicator of: the number of messages it sent to each rank, whether it failed, its context id
and its square (equal ids iff size * sum(id**2) == sum(id)**2), and retain_graph.  While it
is pending the rank keeps receiving, so no rank's send waits on it; once it completes the rank
knows how many messages were sent to it in all, and receives until it has them all.  So every
message of a pass is received within the pass (nothing leaks into the next one), and every rank
learns the outcome.
A rank that fails sends an ERROR message with its text to every other rank first: ranks waiting
for its gradients wake up at once and stop, and every rank can name the failing rank in the error
it raises.

Note [pass tags]: each pass sends its gradient, marker and error messages under a tag of its own,
from a per-process counter that agrees across ranks because every rank runs the same passes in
the same order.  A pass that ends abnormally (a timeout) may leave messages behind; under their
old tag they can never be matched, nor counted, by a later pass, even on a communicator that
``init`` made again after ``destroy`` (MPI may recycle a freed communicator's identity).

Note [waiting]: MPICH's blocking calls spin a core.  A rank waiting here polls instead.  With a
core to itself it spins for up to 10 ms (measured: backing off after 50 us made a 1 MiB backward
4x slower, as the waiting rank overslept the message), then sleeps between polls.  When ranks
share cores (more ranks than cores on the node) it sleeps from the start, 20 us growing to 200 us
between polls, and up to 1 ms once it has waited 10 ms (the extra latency is then at most a
tenth of the wait): short waits stay responsive, long ones cost the working ranks next to
nothing (measured: 4 ranks on 2 cores, computing ranks ran at 1.00-1.03x their speed beside
idle ranks; 1.6-2.0x beside MPICH's spinning Recv).
"""

import functools
import os
import time

import numpy as np
from mpi4py import MPI

from ..engine import GraphTask, unit_seed
from ..graph import gradient_edge
from ..kernels import threads
from ..tensor import Tensor
from . import buffers, messages
from . import comm as _comm
from . import context as _context
from .functions.send import post_send
from .messages import Kind

__all__ = ["backward", "DistBackwardError", "BackwardTimeoutError", "TIMEOUT_ENV"]

TIMEOUT_ENV = "MPIGRAD_BACKWARD_TIMEOUT"
"""Environment variable: default ``timeout`` of ``backward`` in seconds (unset: no timeout)."""

_ID_MODULUS = 1_000_003  # a prime: context ids are compared modulo it (see _finish)
_SPIN_SECONDS = 10e-3  # with a core to itself; see Note [waiting]
_SLEEP_MIN, _SLEEP_MAX, _SLEEP_PATIENT = 20e-6, 200e-6, 1e-3
_PATIENT_AFTER = 10e-3  # waited this long, a rank may sleep up to _SLEEP_PATIENT between polls


@functools.cache
def _shared_cores():
    """Whether this node runs more ranks than this process has cores (see Note [waiting])."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return threads.local_ranks(os.environ) > cores


class DistBackwardError(RuntimeError):
    """A distributed backward failed on some rank; raised on every rank, naming the failures."""


class _PeerFailed(Exception):
    """Another rank's part failed: stop this rank's part (the error comes at the end)."""


class BackwardTimeoutError(TimeoutError):
    """``backward``'s timeout passed on this rank: raised at once, without the closing agreement
    (which could wait for the rank that stalls), listing what this rank still waits for."""


def backward(context_id, roots, retain_graph=False, timeout=None):
    """Run the distributed backward of ``roots`` (this rank's scalar roots) in ``context_id``.

    Gradients of this rank's leaves accumulate in the context (``get_gradients``).  Blocks until
    the whole distributed computation is done; raises ``DistBackwardError`` on every rank if any
    rank failed.  ``timeout`` (seconds; default ``MPIGRAD_BACKWARD_TIMEOUT``, read at the first
    backward of the process, else none):
    a rank still waiting for gradients after it raises, listing the message ids and peers it
    waits for, without waiting for the others to agree (the communicators are then in an unknown
    state: end the job, or ``destroy()`` and ``init()`` mpigrad's communicators).
    """
    if timeout is None:
        timeout = _default_timeout()
    _Pass(_comm.get(), context_id, roots, bool(retain_graph), timeout).run()


@functools.cache
def _default_timeout():
    """``MPIGRAD_BACKWARD_TIMEOUT`` in seconds, read once per process (None when unset)."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None


class _Backoff:
    """The pace of a polling loop; see Note [waiting]."""

    def __init__(self, shared_cores):
        self.shared_cores = shared_cores
        self.start = time.monotonic()
        self.sleep = _SLEEP_MIN

    def pause(self):
        """Return at once while spinning pays; otherwise sleep, a little longer each time."""
        waited = time.monotonic() - self.start
        if not self.shared_cores and waited < _SPIN_SECONDS:
            return
        time.sleep(self.sleep)
        cap = _SLEEP_MAX if waited < _PATIENT_AFTER else _SLEEP_PATIENT
        self.sleep = min(2 * self.sleep, cap)


class _Pass:
    """One distributed backward pass on this rank."""

    def __init__(self, comms, context_id, roots, retain_graph, timeout):
        self.comms, self.context_id, self.roots = comms, context_id, roots
        self.retain_graph = retain_graph
        self.tag = _comm.pass_tag()  # see Note [pass tags]
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.ctx = self.task = None
        self.waiting = {}  # message id -> send function still waiting for its gradient
        self.sent_to = [0] * comms.size
        self.received = 0
        self.requests = []  # our sends in flight (SendRequest: with their buffers)
        self.status = MPI.Status()
        self.failure = None  # this rank's own failure text
        self.errors = {}  # rank -> failure text, from ERROR messages
        self.shared_cores = _shared_cores()

    def run(self):
        try:
            self._start()
            while self.waiting or self.task.ready:
                self.task.execute()
                if self.waiting:
                    self._receive_one(block=True)
        except _PeerFailed:
            pass
        except BackwardTimeoutError as exc:  # tell every rank, then give up at once (no agreement)
            self.failure = f"TimeoutError: {exc}"
            self._broadcast_error()
            raise
        except Exception as exc:  # this rank's part failed: tell every rank, then agree
            self.failure = f"{type(exc).__name__}: {exc}"
            self._broadcast_error()
        finally:
            if self.ctx is not None:
                self.ctx.running = None
        self._finish()

    def _start(self):
        rank = self.comms.rank
        self.ctx = _context.retrieve(self.context_id, "dist_autograd.backward")
        if self.ctx.running is not None:
            raise RuntimeError(f"rank {rank}: a backward pass of this context is already running")
        if self.ctx.graph_freed:
            raise RuntimeError(
                f"rank {rank}: the graph of context {self.context_id} was freed by an earlier "
                "backward; pass retain_graph=True to that backward to run another"
            )
        roots = list(self.roots)
        for i, root in enumerate(roots):
            if not isinstance(root, Tensor):
                raise TypeError(f"rank {rank}: roots[{i}] is a {type(root).__name__}, not a Tensor")
            if root.size != 1:
                raise RuntimeError(f"rank {rank}: roots[{i}] has shape {root.shape}; roots must be "
                                   "scalars (the objective is the sum of all roots on all ranks)")
            if not root.requires_grad:
                raise RuntimeError(f"rank {rank}: roots[{i}] does not require grad")
        sends = list(self.ctx.send_functions.values())
        self.ctx.running = self
        self.waiting = {node.message_id: node for node in sends}
        self.task = GraphTask(
            [gradient_edge(r) for r in roots], [unit_seed(r.shape, r.dtype) for r in roots],
            extra_roots=sends, keep_graph=self.retain_graph, accumulate=self.ctx.accumulate,
            retain_grads=False,
        )
        for node in self.ctx.recv_functions:
            if node not in self.task.dependencies:  # no root reaches it: it owes its marker now
                self.send_gradient(node, None)

    # --- messages -------------------------------------------------------------------------
    def send_gradient(self, node, grad):
        """Send a recv function's gradient (None: the no-gradient marker) to its source."""
        if grad is None:
            self._post(Kind.NO_GRADIENT, node.source, np.zeros(0, np.uint8), node.message_id)
        else:
            grad = grad.data if isinstance(grad, Tensor) else np.asarray(grad)
            self._post(Kind.GRADIENT, node.source, grad, node.message_id)

    def _post(self, kind, dest, array, message_id=-1):
        request = post_send(self.comms, array, dest, self.tag, kind, channel=self.comms.gradient,
                            context_id=self.context_id, message_id=message_id)
        self.requests.append(request)
        self.sent_to[dest] += 1

    def _broadcast_error(self):
        text = np.frombuffer(f"rank {self.comms.rank}: {self.failure}".encode(), np.uint8)
        for dest in range(self.comms.size):
            if dest != self.comms.rank:
                self._post(Kind.ERROR, dest, text)

    def _receive_one(self, block):
        """Receive and handle one message; without ``block``, return False if none is there."""
        probe, tag, status = self.comms.gradient.improbe, self.tag, self.status
        message = probe(MPI.ANY_SOURCE, tag, status)
        if message is None:
            if not block:
                return False
            backoff = _Backoff(self.shared_cores)
            while message is None:
                self._check_deadline()
                backoff.pause()
                message = probe(MPI.ANY_SOURCE, tag, status)
        words = messages.empty_message()
        message.Recv([words, MPI.BYTE])
        source = status.Get_source()
        header = messages.decode_header(words)
        array = None
        if header.inline:
            array = messages.unpack_inline(header, words)
            array.flags.writeable = False  # read-only: a leaf sink keeps it without a view
        else:
            array = buffers.receive_buffer(header.shape, header.dtype)
            self.comms.payload.Recv([array.reshape(-1).view(np.uint8), MPI.BYTE], source,
                                    header.payload_tag)
        self.received += 1
        self._handle(header, array, source)
        return True

    def _handle(self, header, array, source):
        rank = self.comms.rank
        if header.kind == Kind.ERROR:
            self.errors[source] = array.tobytes().decode(errors="replace")
            if self.failure is None:
                raise _PeerFailed
            return
        if self.failure is not None or self.errors:
            return  # the pass has failed: drain what the others still send
        if header.context_id != self.context_id:
            raise RuntimeError(
                f"rank {rank} received a gradient from rank {source} for context "
                f"{header.context_id} while running backward for context {self.context_id}: "
                "every rank must call backward for the same context"
            )
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
        self.task.supply(node, array if header.kind == Kind.GRADIENT else None)

    def _check_deadline(self):
        if self.deadline is not None and time.monotonic() > self.deadline:
            waits = ", ".join(
                f"message id {mid} from rank {node.dest}"
                for mid, node in sorted(self.waiting.items())
            )
            raise BackwardTimeoutError(
                f"rank {self.comms.rank}: dist_autograd.backward in context {self.context_id} "
                f"timed out still waiting for: {waits or 'the other ranks to finish'}"
            )

    # --- the end of a pass ------------------------------------------------------------------
    def _finish(self):
        """See Note [ending a pass]."""
        comms = self.comms
        failed = self.failure is not None or bool(self.errors)
        cid = self.context_id
        h = cid % _ID_MODULUS  # small, so that its square sums in int64 on any number of ranks
        size = comms.size
        local = np.array(self.sent_to + [failed, h, h * h, self.retain_graph], np.int64)
        total = np.empty_like(local)
        pending = comms.control.Iallreduce(local, total, op=MPI.SUM)
        self._drain_until(pending.Test)
        total = total.tolist()
        if self.received < total[comms.rank]:
            self._drain_until(lambda: self.received >= total[comms.rank])
        failed_ranks, id_sum, id_squares, retained = total[size:]
        if self.requests:
            self._drain_until(lambda: all(r.test() for r in self.requests))
            self.requests = []
        problems = dict(self.errors)
        if self.failure is not None:
            problems[comms.rank] = f"rank {comms.rank}: {self.failure}"
        # The ids agree iff size * sum(id**2) == sum(id)**2 (Cauchy-Schwarz).  Every rank sees
        # the same sums, so all of them gather the ids here together.
        if size * id_squares != id_sum ** 2:
            ids = comms.control.allgather(cid)
            if not problems:
                problems[-1] = f"the ranks called backward for different contexts: ids {ids}"
        if not problems and retained not in (0, size):
            problems[-1] = f"the ranks disagree on retain_graph ({retained} of {size} set it)"
        if problems:
            failing = sorted(r for r in problems if r >= 0)
            raise DistBackwardError(
                f"distributed backward in context {self.context_id} failed"
                + (f" on rank(s) {failing}" if failing else "")
                + f" (raised on rank {comms.rank}):\n"
                + "\n".join(problems[r] for r in sorted(problems))
            )
        if failed_ranks:
            raise DistBackwardError(f"distributed backward in context {self.context_id} failed")
        if not self.retain_graph:
            self.ctx.graph_freed = True

    def _drain_until(self, done):
        """Receive (and handle or drop) messages until ``done()``, polling as in Note [waiting]."""
        if done():
            return
        backoff = _Backoff(self.shared_cores)
        while not done():
            self._check_deadline()
            try:
                got = self._receive_one(block=False)
            except _PeerFailed:
                got = True
            except Exception as exc:  # a bad message at the end: it fails the pass
                if self.failure is None:
                    self.failure = f"{type(exc).__name__}: {exc}"
                got = True
            if got:
                backoff.sleep = _SLEEP_MIN
            else:
                backoff.pause()
