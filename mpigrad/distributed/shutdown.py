"""What happens when a rank's program ends, once ``mpigrad.distributed`` is initialized.

- An uncaught exception on any rank ends the whole job: mpigrad's ``sys.excepthook`` prints the
  traceback, each line marked ``[rank r]``, then calls ``MPI.COMM_WORLD.Abort(1)``, and the
  launcher ends every rank.  Without it the failed rank would block in ``MPI_Finalize`` while the
  others wait for it.  ``MPIGRAD_ABORT_ON_EXCEPTION=0`` keeps Python's own hook (then, as under
  plain MPI, the job may hang); launching with ``python -m mpi4py`` aborts as well.
- A rank whose program ends normally tells every other rank (an EXIT notice, see Note [failing
  together] in waiting.py), so a rank still waiting for it raises instead of waiting forever.
"""

import atexit
import sys
import time
import traceback

from mpi4py import MPI

from . import comm as _comm
from . import settings
from .messages import Kind

__all__ = ["install"]

_SEND_SECONDS = 1.0  # what the exit notices get to leave; the process exits anyway after it
_installed = False


def install():
    """Register the exit notice and, unless ``MPIGRAD_ABORT_ON_EXCEPTION=0``, the aborting
    excepthook; once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_notify_exit)
    if settings.abort_on_exception():
        sys.excepthook = _aborting_hook(sys.excepthook)


def _aborting_hook(previous):
    def hook(kind, value, tb):
        if MPI.Is_finalized():
            return previous(kind, value, tb)
        rank = MPI.COMM_WORLD.Get_rank()
        text = "".join(traceback.format_exception(kind, value, tb)) + (
            f"mpigrad: uncaught exception on rank {rank}: aborting the job (set "
            f"{settings.ABORT_ON_EXCEPTION}=0 to keep Python's handling)"
        )
        # One write: another rank's abort may end this process at any moment.
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.splitlines()))
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)

    return hook


def _notify_exit():
    """The EXIT notice: sent before MPI_Finalize (mpi4py finalizes after atexit handlers)."""
    if not _comm.is_initialized() or MPI.Is_finalized():
        return
    from . import transport, waiting

    comms = _comm.get()
    waiting.send_notice(comms, Kind.EXIT, "it exited", comms.exit_tag)
    deadline = time.monotonic() + _SEND_SECONDS
    while not transport.settle() and time.monotonic() < deadline:
        time.sleep(1e-3)
