"""barrier: returns once every rank has called it.

Collective: every rank, in the same order as every other collective.

Adjoint: none (it moves no tensor).
"""

from __future__ import annotations

from .. import collective
from ..collective import Call

__all__ = ["barrier"]


def barrier(timeout: float | None = None) -> None:
    """Return once every rank has called barrier; ``DistTimeoutError`` after ``timeout``
    seconds (default ``MPIGRAD_TIMEOUT``)."""
    call = Call("barrier", timeout)
    with call.checking():  # the timeout is barrier's only argument
        pass
    call.agree(collective.NONE)
