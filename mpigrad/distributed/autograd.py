"""Distributed autograd, as ``torch.distributed.autograd``: contexts, backward, gradients.

::

    with dist_autograd.context() as context_id:     # collective: the same id on every rank
        ...                                        # send / recv record send and recv functions
        dist_autograd.backward(context_id, roots)  # every rank, its own scalar roots
        grads = dist_autograd.get_gradients(context_id)   # {leaf: gradient} of this rank

The objective is the sum of all roots on all ranks (see ``mpigrad.distributed``).
"""

from __future__ import annotations

from ..tensor import Tensor
from .context import context, retrieve
from .engine import backward
from .errors import BackwardTimeoutError, DistBackwardError

__all__ = ["context", "backward", "get_gradients", "DistBackwardError", "BackwardTimeoutError"]


def get_gradients(context_id: int) -> dict[Tensor, Tensor]:
    """``{leaf Tensor: gradient Tensor}`` accumulated for this rank's leaves in the context.

    The gradients are the caller's: writable, sharing memory with nothing else."""
    return dict(retrieve(context_id, "dist_autograd.get_gradients").gradients)
