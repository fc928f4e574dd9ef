"""mpigrad.distributed: tensors between the ranks of an SPMD MPI program.

Point-to-point transfers (``send``, ``recv``, ``isend``, ``irecv``, ``sendrecv``) move numpy
payloads as raw MPI buffers; inside a ``mpigrad.distributed.autograd`` context they record send
and recv functions, and ``dist_autograd.backward`` differentiates through them. They travel on
communicators mpigrad duplicates from the user's (``init(comm=None)``, implicit on COMM_WORLD
at first use; see ``comm.py``), so its messages never meet the user's. The wire format is
in ``messages.py``.

Nothing waits forever: every blocking call takes ``timeout=`` (default ``MPIGRAD_TIMEOUT``, 1800
s), a call that stalls says on stderr what it waits for (``MPIGRAD_STALL_WARNING``, 60 s), a
failure on one rank is raised on every rank that depends on it, and an uncaught exception on
any rank ends the whole job (see ``waiting.py`` and ``shutdown.py``).

Loss convention: the global objective is the sum of the roots passed to backward on all
ranks; under it send and recv are exact adjoints and allreduce(SUM)'s adjoint is
allreduce(SUM).

Importing this module imports mpi4py (and so initializes MPI); ``import mpigrad`` does not.
"""

from . import autograd, settings
from .comm import destroy, get_rank, get_world_size, init, is_initialized
from .errors import DistBackwardError, DistributedError, DistTimeoutError
from .functions import RecvRequest, SendRequest, irecv, isend, recv, send, sendrecv
from .functions.send import NoContextWarning

__all__ = [
    "autograd", "settings", "init", "destroy", "is_initialized", "get_rank", "get_world_size",
    "send", "recv", "isend", "irecv", "sendrecv", "SendRequest", "RecvRequest",
    "DistributedError", "DistBackwardError", "DistTimeoutError", "NoContextWarning",
]
