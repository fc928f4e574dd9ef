"""The errors of ``mpigrad.distributed``.

Every message names this rank; an error caused by another rank also names that rank and what it
reported (see Note [failing together] in waiting.py).
"""

__all__ = ["DistributedError", "DistBackwardError", "DistTimeoutError", "BackwardTimeoutError"]


class DistributedError(RuntimeError):
    """A distributed call failed here because of another rank (it failed, gave up or exited), or
    because the ranks disagree (different contexts, messages left unreceived)."""


class DistBackwardError(DistributedError):
    """A distributed backward failed on some rank; raised on every rank, naming the failures."""


class DistTimeoutError(TimeoutError):
    """A blocking call of ``mpigrad.distributed`` waited longer than its ``timeout``; the message
    lists what it still waited for and what the other ranks reported."""


class BackwardTimeoutError(DistTimeoutError):
    """``dist_autograd.backward``'s timeout passed on this rank.  The other ranks are told at
    once and raise ``DistBackwardError`` naming this rank."""
