"""send and isend: a tensor's data to another rank.

Collective: no; point to point. The rank ``dest`` must post a matching ``recv``/``irecv``
(same source and tag) on the same communicator.

Adjoint: recv from ``dest``. Inside a distributed autograd context, sending a tensor that
requires grad records a send function (``SendBackward``) under a fresh message id; in backward it
receives exactly one message for it from ``dest`` on the gradient communicator (the gradient of
the received tensor, or a no-gradient marker) and passes it on to the sent tensor's ``grad_fn``.
Under the loss convention of ``mpigrad.distributed`` this is the exact adjoint of the transfer.
"""

import numpy as np
from mpi4py import MPI

from ...grad_mode import is_grad_enabled
from ...graph import Node, gradient_edge
from ...tensor import Tensor
from .. import comm as _comm
from .. import context as _context
from .. import messages
from ..messages import Kind

__all__ = ["send", "isend", "SendRequest", "SendBackward"]


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


def _record(tensor, dest):
    """The header fields for sending ``tensor``: in a context, and recorded when it requires
    grad (see Note [context ids] in context.py)."""
    ctx = _context.current()
    if ctx is None:
        return {}
    if not (isinstance(tensor, Tensor) and tensor.requires_grad and is_grad_enabled()):
        return {"context_id": ctx.context_id}
    message_id = ctx.next_message_id()
    ctx.send_functions[message_id] = SendBackward(tensor, dest, ctx.context_id, message_id)
    return {"context_id": ctx.context_id, "message_id": message_id, "requires_grad": True}


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


def post_send(comms, array, dest, tag, kind=Kind.TENSOR, channel=None, **header):
    """Start sending array's message to dest: header (with inline payload) on ``channel``
    (default ``comms.data``) under tag, and a large payload on ``comms.payload``.
    See Note [inline payloads]."""
    payload_tag = comms.next_payload_tag() if array.nbytes > messages.INLINE_LIMIT else -1
    words, payload = messages.pack(array, kind, payload_tag=payload_tag, **header)
    requests = [(channel or comms.data).Isend([words, MPI.BYTE], dest, tag)]
    if payload is not None:
        requests.append(comms.payload.Isend([payload, MPI.BYTE], dest, payload_tag))
    return SendRequest(requests, (words, payload))


def isend(tensor, dest, tag=0):
    """Start sending tensor (a Tensor or ndarray) to rank dest; returns a ``SendRequest``.

    The data is not copied when C-contiguous: do not modify it before ``wait()``.
    """
    comms = _comm.get()
    dest = comms.check_peer(dest, "isend", "dest")
    array = _as_array(tensor, "isend")
    return post_send(comms, array, dest, tag, **_record(tensor, dest))


def send(tensor, dest, tag=0):
    """Send tensor (a Tensor or ndarray) to rank dest; returns when its buffer may be reused.

    Like MPI_Send, a large message may wait for the matching receive: to send to oneself or
    around a ring use ``isend`` or ``sendrecv``.
    """
    comms = _comm.get()
    dest = comms.check_peer(dest, "send", "dest")
    array = _as_array(tensor, "send")
    post_send(comms, array, dest, tag, **_record(tensor, dest)).wait()
