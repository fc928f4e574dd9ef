"""mpigrad.distributed: tensors between the ranks of an SPMD MPI program.

Point-to-point transfers (``send``, ``recv``, ``isend``, ``irecv``, ``sendrecv``) move numpy
payloads as raw MPI buffers; inside a ``mpigrad.distributed.autograd`` context they record send
and recv functions, and ``dist_autograd.backward`` differentiates through them. They travel on
communicators mpigrad duplicates from the user's (``init(comm=None)``, implicit on COMM_WORLD
at first use; see ``comm.py``), so its messages never meet the user's. The wire format is
in ``messages.py``.

Loss convention: the global objective is the sum of the roots passed to backward on all
ranks; under it send and recv are exact adjoints and allreduce(SUM)'s adjoint is
allreduce(SUM).

Importing this module imports mpi4py (and so initializes MPI); ``import mpigrad`` does not.
"""

from . import autograd
from .comm import destroy, get_rank, get_world_size, init, is_initialized
from .functions import RecvRequest, SendRequest, irecv, isend, recv, send, sendrecv

__all__ = [
    "autograd", "init", "destroy", "is_initialized", "get_rank", "get_world_size",
    "send", "recv", "isend", "irecv", "sendrecv", "SendRequest", "RecvRequest",
]
