"""recv and irecv: a tensor from another rank, as a new Tensor.

Collective: no; point to point. The rank ``source`` must post a matching ``send``/``isend``
(same dest and tag) on the same communicator.

Adjoint: send to ``source``. Inside a distributed autograd context, a tensor sent with
requires_grad gets a recv function (``RecvBackward``) holding (source, context id, message id)
as its ``grad_fn``; in backward that function sends exactly one message to ``source`` on the
gradient communicator: the gradient of the received tensor, or a no-gradient marker when it is
unreachable from the roots or its gradient is undefined, so that the matching send function
never waits in vain.
"""

import numpy as np
from mpi4py import MPI

from ...grad_mode import is_grad_enabled
from ...graph import Node
from ...tensor import Tensor
from .. import buffers, messages
from .. import comm as _comm
from .. import context as _context
from ..messages import NO_CONTEXT, Kind

__all__ = ["recv", "irecv", "RecvRequest", "RecvBackward"]


class RecvBackward(Node):
    """The ``grad_fn`` of a received tensor: hands its gradient back to ``source``.

    Applied exactly once per backward pass (with None when no gradient reached it); the pass in
    progress of its context sends the gradient, or a no-gradient marker, keyed by
    (context id, message id).
    """

    takes_arrays = True

    def __init__(self, source, ctx, message_id):
        super().__init__()
        self.source, self.context, self.message_id = source, ctx, message_id

    def apply(self, grads):
        self.context.running.send_gradient(self, grads[0])
        return ()


def _context_name(context_id):
    return "outside any context" if context_id == NO_CONTEXT else f"in context {context_id}"


class RecvRequest:
    """A pending receive; ``wait()`` returns the received Tensor (the same one every call).

    The header, with any inline payload, is received as soon as it arrives (its receive is
    posted by ``irecv``); a payload too large to ride inline is received at ``wait()``, once
    the header has told its shape and dtype. See Note [inline payloads] in messages.py.
    """

    def __init__(self, comms, source, tag, op):
        self._comms, self._source, self._op = comms, source, op
        self._words = messages.empty_message()
        self._request = comms.data.Irecv([self._words, MPI.BYTE], source, tag)
        self._tensor = None

    def wait(self):
        if self._tensor is None:
            self._request.Wait()
            header, array = self._receive_payload()
            self._tensor = self._record(header, array)
        return self._tensor

    def _record(self, header, array):
        """The received Tensor; in a context, with a recv function when it requires grad."""
        ctx = _context.current()
        here = NO_CONTEXT if ctx is None else ctx.context_id
        if header.context_id != here:
            raise RuntimeError(
                f"{self._op}: rank {self._comms.rank} received a tensor from rank {self._source} "
                f"sent {_context_name(header.context_id)}, but this rank is "
                f"{_context_name(here)}: every rank must enter the same contexts in the same order"
            )
        if ctx is None or not header.requires_grad:
            return Tensor._make(array)
        node = RecvBackward(self._source, ctx, header.message_id)
        ctx.recv_functions.append(node)  # even unused, it owes the sender one message
        if is_grad_enabled() and array.dtype.kind == "f":
            return Tensor._make(array, node)
        return Tensor._make(array)

    def _receive_payload(self):
        try:
            header = messages.decode_header(self._words)
        except ValueError as e:
            raise ValueError(
                f"{self._op}: a malformed message from rank {self._source} at rank "
                f"{self._comms.rank}: {e}"
            ) from None
        if header.kind != Kind.TENSOR:
            raise ValueError(
                f"{self._op}: rank {self._comms.rank} expected a tensor from rank "
                f"{self._source}, got a {header.kind.name} message (context id "
                f"{header.context_id}, message id {header.message_id})"
            )
        if header.inline:
            return header, messages.unpack_inline(header, self._words)
        array = buffers.receive_buffer(header.shape, header.dtype)
        payload = array.reshape(-1).view(np.uint8)
        self._comms.payload.Recv([payload, MPI.BYTE], self._source, header.payload_tag)
        return header, array


def irecv(source, tag=0):
    """Start receiving a tensor from rank source; returns a ``RecvRequest``."""
    comms = _comm.get()
    source = comms.check_peer(source, "irecv", "source")
    return RecvRequest(comms, source, tag, "irecv")


def recv(source, tag=0):
    """Receive a tensor from rank source: a new Tensor with the sent shape and dtype."""
    comms = _comm.get()
    source = comms.check_peer(source, "recv", "source")
    return RecvRequest(comms, source, tag, "recv").wait()
