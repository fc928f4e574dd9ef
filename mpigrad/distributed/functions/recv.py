"""recv and irecv: a tensor from another rank, as a new Tensor.

Collective: no; point to point. The rank ``source`` must post a matching ``send``/``isend``
(same dest and tag) on the same communicator, in the same context (or both outside any).  A
receive from ``PROC_NULL`` completes at once with None and records nothing.

Adjoint: send to ``source``. Inside a distributed autograd context, a tensor sent with
requires_grad gets a recv function (``RecvBackward``) holding (source, context id, message id)
as its ``grad_fn``; in backward that function sends exactly one message to ``source`` on the
gradient communicator: the gradient of the received tensor, or a no-gradient marker when it is
unreachable from the roots or its gradient is undefined, so that the matching send function
never waits in vain.

Tangents: the received tensor carries the sender's tangents, at every dual level they were sent
at, nested ones included (see Note [tangents on the wire] in messages.py).  Levels are matched by
nesting depth: the sender's k-th open level (outermost first) is the receiver's k-th open level.
A tensor that carries tangents may only be received with as many dual levels open as the sender
had: otherwise the receive raises, naming both ranks and both counts (the message is consumed; a
tangent is never dropped in silence).  A tensor sent without tangents is a constant at every
level.  In a context, each tangent sent with requires_grad gets a recv function of its own, as the
primal does.
"""

from __future__ import annotations

import weakref

from mpi4py import MPI

from ... import dual
from ...grad_mode import is_grad_enabled
from ...graph import Node
from ...tensor import Tensor
from .. import comm as _comm
from .. import context as _context
from .. import transport, waiting
from ..errors import DistributedError
from ..messages import NO_CONTEXT, Kind

__all__ = ["recv", "irecv", "RecvRequest", "RecvBackward"]


class RecvBackward(Node):
    """The ``grad_fn`` of a received tensor: hands its gradient back to ``source``.

    Applied exactly once per distributed backward pass (with None when no gradient reached it);
    the pass in progress of its context sends the gradient, or a no-gradient marker, keyed by
    (context id, message id).  It holds its context weakly (the context owns it), as PyTorch's
    ``RecvRpcBackward`` does, and refuses any other backward, naming the context and the ranks.
    """

    takes_arrays = True

    def __init__(self, source, context, message_id, rank):
        super().__init__()
        self.source, self.context_id, self.message_id = source, context.context_id, message_id
        self.rank = rank
        self._context = weakref.ref(context)

    def before_pass(self):
        """Refuse a backward pass other than its context's distributed one."""
        self._running()

    def apply(self, grads):
        self._running().send_gradient(self, grads[0])
        return ()

    def _running(self):
        """The distributed pass of its context now running; RuntimeError if there is none."""
        context = self._context()
        if context is None or _context.current() is not context:
            raise RuntimeError(
                f"rank {self.rank}: this graph crosses ranks: it holds a tensor received from rank "
                f"{self.source} in context {self.context_id}, which has been left: gradients "
                "cross ranks only in the dist_autograd.backward of the context the tensor was "
                "received in"
            )
        if context.running is None:
            raise RuntimeError(
                f"rank {self.rank}: this graph crosses ranks: it holds a tensor received from rank "
                f"{self.source} in context {self.context_id}, and no dist_autograd.backward of it "
                f"is running: call dist_autograd.backward({self.context_id}, roots) on every rank "
                "instead of a local backward"
            )
        return context.running


def _context_name(context_id):
    return "outside any context" if context_id == NO_CONTEXT else f"in context {context_id}"


class RecvRequest:
    """A pending receive; ``wait()`` returns the received Tensor (the same one every call).

    The header, with any inline payload, is received as soon as it arrives (its receive is
    posted by ``irecv``); a payload too large to ride inline is received at ``wait()``, once
    the header has told its shape and dtype. See Note [inline payloads] in messages.py.  A receive
    posted in a context must be waited for in it: leaving the context completes it if its tensor
    has arrived, and cancels it otherwise.
    """

    def __init__(self, comms, source, tag, op):
        self._comms, self.source, self.tag, self._op = comms, source, tag, op
        context = _context.current()
        self._context_id = NO_CONTEXT if context is None else context.context_id
        self._context = None if context is None else weakref.ref(context)
        self._channel = comms.data_comm(context and context.context_id)
        self._tensor = None
        self._header = None  # once it has come
        self._void = None  # why the receive was cancelled
        self._post()
        comms.receiving.add(self)
        if context is not None:
            context.receiving.add(self)

    def _post(self):
        self._receive = transport.Receive(self._comms, self._channel, self.source, self.tag)

    def wait(self, timeout: float | None = None) -> Tensor:
        """The received Tensor.  ``DistTimeoutError`` after ``timeout`` seconds (default
        ``MPIGRAD_TIMEOUT``): the receive is then cancelled, and a tensor sent later stays for a
        later receive."""
        if self._tensor is None:
            if self._void is not None:
                raise RuntimeError(
                    f"{self._op}: rank {self._comms.rank}: this receive from rank "
                    f"{self.source} (tag {self.tag}) {self._void}"
                )
            context = self._context and self._context()
            reported = context is not None and context.reported
            try:
                waiting.wait_for(
                    self._arrived,
                    self._op,
                    timeout,
                    self._describe,
                    context=context,
                    peers=[self.source],
                    check=self._look_elsewhere,
                )
            except BaseException:
                if self.cancel("was cancelled after an error while it waited"):
                    raise
                # The tensor came after all, and the error is dropped: a failure of the context
                # it reported is not reported yet (leaving the context raises it).
                if context is not None:
                    context.reported = reported
            else:
                self._finish()
        return self._tensor

    def cancel(
        self, why: str = "was cancelled: its context was left before it was waited for"
    ) -> bool:
        """Complete the receive if its tensor has come, else cancel it; True if cancelled."""
        if self._tensor is None and self._void is None:
            if self._header is None and self._receive.cancel():  # it came after all
                self._read_header()
            if self._header is not None:
                self._finish()
            else:  # cancelled, or a message of a failed context took it: see _read_header
                self._void = why
                self._settled()
        return self._void is not None

    def _settled(self):
        """The receive is complete or void: nothing need settle it any more."""
        self._comms.receiving.discard(self)
        context = self._context and self._context()
        if context is not None:
            context.receiving.discard(self)

    def _describe(self):
        return (
            f"a tensor from rank {self.source} with tag {self.tag} "
            f"({_context_name(self._context_id)})"
        )

    def _arrived(self):
        """Whether the header has come; one left by a failed context is dropped and the receive
        posted again."""
        if self._header is None:
            if not self._receive.test():
                return False
            self._read_header()
            if self._header is None:
                self._post()
                return False
        return True

    def _read_header(self):
        """Read the header that has come; drop its message if a failed earlier context left it
        (see Note [data communicators])."""
        try:
            header = transport.header_of(self._comms, self._receive.words, self.source)
        except ValueError as e:
            raise ValueError(f"{self._op}: {e}") from None
        if header.kind != Kind.TENSOR:
            raise ValueError(
                f"{self._op}: rank {self._comms.rank} expected a tensor from rank "
                f"{self.source}, got a {header.kind.name} message (context id "
                f"{header.context_id}, message id {header.message_id})"
            )
        if header.context_id < self._context_id:
            transport.payload_of(self._comms, header, self._receive.words, self.source)
        else:
            self._header = header

    def _finish(self):
        """Receive the payload and record the tensor (the header has come)."""
        header, words = self._header, self._receive.words
        if header.tangents:
            arrays = transport.arrays_of(self._comms, header, words, self.source)
        else:
            arrays = (transport.payload_of(self._comms, header, words, self.source),)
        self._settled()
        context = self._context and self._context()
        if context is not None:
            context.received += 1
        if header.tangents and header.levels != len(dual.open_levels()):
            self._void = "failed: its tensor carried tangents at other dual levels"
            raise DistributedError(
                f"{self._op}: rank {self._comms.rank} received a tensor carrying forward-mode "
                f"tangents from rank {self.source} (tag {self.tag}), which had "
                f"{header.levels} dual level(s) open, but rank {self._comms.rank} has "
                f"{len(dual.open_levels())}: levels are matched by nesting depth, so the two "
                "ranks must have the same number of dual levels open"
            )
        self._tensor = _record(context, header, arrays, self.source, self._comms.rank)

    def _look_elsewhere(self):
        """Raise if the tensor this receive waits for was sent in another context (or outside
        any): it travels on another communicator (Note [data communicators]) and would never
        match."""
        comms, status = self._comms, MPI.Status()
        for channel in (comms.data_free, *comms.data):
            if channel is self._channel:
                continue
            received = transport.poll(comms, channel, self.source, self.tag, status)
            if received is None:
                continue
            header = received[0]
            if header.context_id == NO_CONTEXT or header.context_id > _context.last_id():
                raise DistributedError(
                    f"{self._op}: rank {comms.rank} received a tensor from rank {self.source} "
                    f"(tag {self.tag}) sent {_context_name(header.context_id)}, but this rank "
                    f"is {_context_name(self._context_id)}: every rank must enter the same "
                    "contexts in the same order"
                )


def _record(context, header, arrays, source, rank):
    """The received Tensor, with its tangents; in a context, with a recv function for each of
    them that requires grad (see Note [tangents on the wire] in messages.py)."""
    message_id = header.message_id
    tensor = _tensor(context, header.requires_grad, arrays[0], source, message_id, rank)
    if header.tangents:
        message_id += header.requires_grad
        levels, tensors = dual.open_levels(), [tensor]
        for (parent, depth, requires_grad), array in zip(header.tangents, arrays[1:]):
            tangent = _tensor(context, requires_grad, array, source, message_id, rank)
            message_id += requires_grad
            dual.set_tangent(tensors[parent], levels[depth], tangent)
            tensors.append(tangent)
    return tensor


def _tensor(context, requires_grad, array, source, message_id, rank):
    """One received array as a Tensor; in a context, with a recv function when it was sent with
    requires_grad."""
    if context is None or not requires_grad:
        return Tensor._make(array)
    node = RecvBackward(source, context, message_id, rank)
    context.recv_functions.append(node)  # even unused, it owes the sender one message
    if is_grad_enabled() and array.dtype.kind == "f":
        return Tensor._make(array, node)
    return Tensor._make(array)


class NullRecvRequest(RecvRequest):
    """A receive from ``PROC_NULL``: complete, its ``wait()`` returns None."""

    def __init__(self, source, tag):
        self.source, self.tag = source, tag

    def wait(self, timeout: float | None = None) -> None:
        return None

    def cancel(self, why: str = "") -> bool:
        return False


def receive(comms, source, tag, op):
    """A ``RecvRequest`` for ``op`` (checks its source, which may be ``PROC_NULL``, and tag)."""
    source = comms.check_peer(source, op, "source", null=True)
    tag = comms.check_tag(tag, op)
    if source == MPI.PROC_NULL:
        return NullRecvRequest(source, tag)
    return RecvRequest(comms, source, tag, op)


def irecv(source: int, tag: int = 0) -> RecvRequest:
    """Start receiving a tensor from rank source; returns a ``RecvRequest`` (whose ``wait()``
    returns None when source is ``PROC_NULL``)."""
    return receive(_comm.get(), source, tag, "irecv")


def recv(source: int, tag: int = 0, timeout: float | None = None) -> Tensor | None:
    """Receive a tensor from rank source: a new Tensor with the sent shape and dtype (None when
    source is ``PROC_NULL``).

    Blocks until it arrives; ``DistTimeoutError`` after ``timeout`` seconds (default
    ``MPIGRAD_TIMEOUT``)."""
    return receive(_comm.get(), source, tag, "recv").wait(timeout)
