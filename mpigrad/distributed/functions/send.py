"""send and isend: a tensor's data to another rank.

Collective: no; point to point. The rank ``dest`` must post a matching ``recv``/``irecv``
(same source and tag) on the same communicator.

Adjoint: recv from ``dest``. Today send records nothing (requires_grad does not travel). In
a distributed autograd context the autograd layer will record a send function under a fresh
message id; in backward it receives exactly one message for it from ``dest`` on the gradient
communicator (the gradient of the received tensor, or a no-gradient marker) and passes it to
the sent tensor's ``grad_fn``. Under the loss convention of ``mpigrad.distributed`` this is
the exact adjoint of the transfer.
"""

import numpy as np
from mpi4py import MPI

from ...tensor import Tensor
from .. import comm as _comm
from .. import messages
from ..messages import Kind

__all__ = ["send", "isend", "SendRequest"]


class SendRequest:
    """A pending send; ``wait()`` returns once the tensor's buffer may be reused."""

    def __init__(self, requests, buffers):
        self._requests = requests
        self._buffers = buffers  # kept alive until the sends complete

    def wait(self):
        if self._requests:
            MPI.Request.Waitall(self._requests)
            self._requests, self._buffers = [], ()

    def test(self):
        """True once complete (then ``wait()`` returns at once)."""
        if self._requests and MPI.Request.Testall(self._requests):
            self._requests, self._buffers = [], ()
        return not self._requests


def _as_array(tensor, op):
    """The ndarray to send: a Tensor's data, or tensor itself if it is an ndarray."""
    if isinstance(tensor, Tensor):
        return tensor.data
    if isinstance(tensor, (np.ndarray, np.generic)):
        return np.asarray(tensor)
    raise TypeError(f"{op}: expected a Tensor or a numpy array, got {type(tensor).__name__}")


def post_send(comms, array, dest, tag, kind=Kind.TENSOR, **header):
    """Start sending array's message to dest: header (with inline payload) on ``comms.data``
    under tag, and a large payload on ``comms.payload``. See Note [inline payloads]."""
    payload_tag = comms.next_payload_tag() if array.nbytes > messages.INLINE_LIMIT else -1
    words, payload = messages.pack(array, kind, payload_tag=payload_tag, **header)
    requests = [comms.data.Isend(words, dest, tag)]
    if payload is not None:
        requests.append(comms.payload.Isend([payload, MPI.BYTE], dest, payload_tag))
    return SendRequest(requests, (words, payload))


def isend(tensor, dest, tag=0):
    """Start sending tensor (a Tensor or ndarray) to rank dest; returns a ``SendRequest``.

    The data is not copied when C-contiguous: do not modify it before ``wait()``.
    """
    comms = _comm.get()
    dest = comms.check_peer(dest, "isend", "dest")
    return post_send(comms, _as_array(tensor, "isend"), dest, tag)


def send(tensor, dest, tag=0):
    """Send tensor (a Tensor or ndarray) to rank dest; returns when its buffer may be reused.

    Like MPI_Send, a large message may wait for the matching receive: to send to oneself or
    around a ring use ``isend`` or ``sendrecv``.
    """
    comms = _comm.get()
    dest = comms.check_peer(dest, "send", "dest")
    post_send(comms, _as_array(tensor, "send"), dest, tag).wait()
