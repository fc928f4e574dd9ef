"""recv and irecv: a tensor from another rank, as a new Tensor.

Collective: no; point to point. The rank ``source`` must post a matching ``send``/``isend``
(same dest and tag) on the same communicator.

Adjoint: send to ``source``. Today the received Tensor has ``requires_grad=False`` and no
``grad_fn``. In a distributed autograd context the autograd layer will give it a recv
function holding (source, context id, message id) as its ``grad_fn``; in backward that
function sends exactly one message to ``source`` on the gradient communicator: the gradient
of the received tensor, or a no-gradient marker when it is unreachable from the roots or its
gradient is undefined, so that the matching send function never waits in vain.
"""

import numpy as np
from mpi4py import MPI

from ...tensor import Tensor
from .. import comm as _comm
from .. import messages
from ..messages import Kind

__all__ = ["recv", "irecv", "RecvRequest"]


class RecvRequest:
    """A pending receive; ``wait()`` returns the received Tensor (the same one every call).

    The header, with any inline payload, is received as soon as it arrives (its receive is
    posted by ``irecv``); a payload too large to ride inline is received at ``wait()``, once
    the header has told its shape and dtype. See Note [inline payloads] in messages.py.
    """

    def __init__(self, comms, source, tag, op):
        self._comms, self._source, self._op = comms, source, op
        self._words = messages.empty_message()
        self._request = comms.data.Irecv(self._words, source, tag)
        self._tensor = None

    def wait(self):
        if self._tensor is None:
            self._request.Wait()
            self._tensor = Tensor._make(self._receive_payload())
        return self._tensor

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
            return messages.unpack_inline(header, self._words)
        array = np.empty(header.shape, dtype=header.dtype)
        payload = array.reshape(-1).view(np.uint8)
        self._comms.payload.Recv([payload, MPI.BYTE], self._source, header.payload_tag)
        return array


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
