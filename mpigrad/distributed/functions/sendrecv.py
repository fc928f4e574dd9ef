"""sendrecv: send a tensor to one rank and receive one from another, without deadlock.

Collective: no; point to point, but usually called by every rank of a ring or a pair:
``dest`` must post a receive matching (this rank, sendtag), and ``source`` a send matching
(this rank, recvtag). The send is started before the receive and completed after it, so a
ring of sendrecvs never deadlocks, whatever the message sizes.

Adjoint: a sendrecv with dest and source swapped (as in mpi4jax's sendrecv). Inside a
distributed autograd context it records a send function (to ``dest``) and a recv function (from
``source``): in backward the received tensor's gradient goes back to ``source`` and the sent
tensor's gradient comes from ``dest``.
"""

from .. import comm as _comm
from .recv import RecvRequest
from .send import _as_array, _record, post_send

__all__ = ["sendrecv"]


def sendrecv(tensor, dest, source, sendtag=0, recvtag=None):
    """Send tensor to dest and return the Tensor received from source.

    recvtag defaults to sendtag.
    """
    comms = _comm.get()
    dest = comms.check_peer(dest, "sendrecv", "dest")
    source = comms.check_peer(source, "sendrecv", "source")
    recvtag = sendtag if recvtag is None else recvtag
    array = _as_array(tensor, "sendrecv")
    receiving = RecvRequest(comms, source, recvtag, "sendrecv")
    sending = post_send(comms, array, dest, sendtag, **_record(tensor, dest))
    try:
        return receiving.wait()
    finally:
        sending.wait()
