"""mpigrad.distributed: tensors between the ranks of an SPMD MPI program.

Point-to-point transfers (``send``, ``recv``, ``isend``, ``irecv``, ``sendrecv``) move numpy
payloads as raw MPI buffers; inside a ``mpigrad.distributed.autograd`` context they record send
and recv functions, and ``dist_autograd.backward`` differentiates through them.  ``PROC_NULL``
as their peer stands for none, as in MPI: a send to it does nothing and records nothing, a
receive from it returns None, and ``sendrecv`` from it returns zeros shaped like its tensor.

Collectives (``all_reduce``, ``broadcast``, ``reduce``, ``all_gather``, ``gather``, ``scatter``,
``reduce_scatter``, ``all_to_all``, ``barrier``) are differentiable in reverse and forward mode.
Inside a dist_autograd context, mixed with send and recv, ``dist_autograd.backward`` runs their
adjoints in the reverse of the call order on every rank, a collective whose output no root
reaches contributing zeros (see Note [collectives in a context] in ``engine.py``); there
``reduce`` and ``gather`` are differentiable too, and ``create_graph=True`` records the pass
for a second one (Hessian-vector products).  Outside a context ``loss.backward()`` and
``mpigrad.autograd.grad`` on every rank run the adjoints, provided every rank's backward
reaches the same collectives in the same order (calls that do not match raise on every rank;
see Note [agreed collectives] in ``collective.py``); ``reduce`` and ``gather`` give the other
ranks None, so outside a context their backward cannot take part and raises (use
``all_reduce`` and ``all_gather``).

Everything travels on communicators mpigrad duplicates from the user's (``init(comm=None)``,
implicit on COMM_WORLD at first use; see ``comm.py``), so its messages never meet the user's.
The wire format is in ``messages.py``.

Nothing waits forever: every blocking call takes ``timeout=`` (default ``MPIGRAD_TIMEOUT``, 1800
s), a call that stalls says on stderr what it waits for (``MPIGRAD_STALL_WARNING``, 60 s), a
failure on one rank is raised on every rank that depends on it, and an uncaught exception on
any rank ends the whole job (see ``waiting.py`` and ``shutdown.py``).

Loss convention: the global objective is the sum of the roots passed to backward on all
ranks.  Under it send and recv are exact adjoints, and each collective's module says its
adjoint: ``all_reduce`` sum -> ``all_reduce`` sum of the gradients, avg -> the same over the
size, max and min -> to the ranks holding the extreme, split evenly among ties, prod -> times the
product of the other ranks' values; ``broadcast`` -> sum-reduce to ``src``; ``reduce`` ->
broadcast from ``dst``; ``all_gather`` <-> ``reduce_scatter`` sum; ``gather`` <-> ``scatter``;
``all_to_all`` -> ``all_to_all``.  A loss that every rank holds and that should count once
(a replicated loss, e.g. the result of an all_reduce) is divided by the world size before
backward, or taken on one rank only (zero on the others).

Importing this module imports mpi4py (and so initializes MPI); ``import mpigrad`` does not.
"""

from mpi4py import MPI

from . import autograd, settings
from .comm import destroy, get_rank, get_world_size, init, is_initialized
from .data_parallel import DistributedDataParallel
from .errors import DistBackwardError, DistributedError, DistTimeoutError
from .functions import (
    RecvRequest,
    SendRequest,
    all_gather,
    all_reduce,
    all_to_all,
    barrier,
    broadcast,
    gather,
    irecv,
    isend,
    recv,
    reduce,
    reduce_scatter,
    scatter,
    send,
    sendrecv,
)
from .functions.send import NoContextWarning

PROC_NULL: int = MPI.PROC_NULL  # no peer: see the module docstring

__all__ = [
    "autograd",
    "settings",
    "init",
    "destroy",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "send",
    "recv",
    "isend",
    "irecv",
    "sendrecv",
    "SendRequest",
    "RecvRequest",
    "PROC_NULL",
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
    "barrier",
    "DistributedDataParallel",
    "DistributedError",
    "DistBackwardError",
    "DistTimeoutError",
    "NoContextWarning",
]
