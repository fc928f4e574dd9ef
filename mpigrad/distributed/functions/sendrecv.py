"""sendrecv: send a tensor to one rank and receive one from another, without deadlock.

Collective: no; point to point, but usually called by every rank of a ring or a pair:
``dest`` must post a receive matching (this rank, sendtag), and ``source`` a send matching
(this rank, recvtag). The send is started before the receive and completed after it, so a
ring of sendrecvs never deadlocks, whatever the message sizes.

Adjoint: a sendrecv with dest and source swapped (as in mpi4jax's sendrecv). Inside a
distributed autograd context it records a send function (to ``dest``) and a recv function (from
``source``): in backward the received tensor's gradient goes back to ``source`` and the sent
tensor's gradient comes from ``dest``.

Tangents: those of the sent tensor travel with it, as for ``send`` and ``recv`` (levels matched
by nesting depth; the received tensor carries the sender's tangents).

``PROC_NULL`` as ``dest`` sends nothing, and as ``source`` receives zeros shaped like the sent
tensor (a constant: no tangent, no gradient), so that a non-periodic halo exchange needs no case
of its own at the ends.
"""

from __future__ import annotations

import numpy as np

from ...tensor import Tensor
from .. import comm as _comm
from .. import transport
from .recv import receive
from .send import Outgoing

__all__ = ["sendrecv"]


def sendrecv(
    tensor: Tensor | np.ndarray,
    dest: int,
    source: int,
    sendtag: int = 0,
    recvtag: int | None = None,
    timeout: float | None = None,
) -> Tensor:
    """Send tensor to dest and return the Tensor received from source (zeros shaped like
    tensor when source is ``PROC_NULL``).

    recvtag defaults to sendtag.  ``DistTimeoutError`` when the receive, or then the send, waits
    longer than ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``).
    """
    comms = _comm.get()
    outgoing = Outgoing(comms, tensor, dest, sendtag, "sendrecv")  # checks everything first
    receiving = receive(comms, source, sendtag if recvtag is None else recvtag, "sendrecv")
    sending = outgoing.start()
    try:
        received = receiving.wait(timeout)
    except BaseException:
        transport.keep_until_sent(sending)
        raise
    sending.wait(timeout)
    if received is None:  # from PROC_NULL
        return Tensor._make(np.zeros(outgoing.array.shape, outgoing.array.dtype))
    return received
