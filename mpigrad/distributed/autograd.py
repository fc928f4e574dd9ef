"""Distributed autograd, as ``torch.distributed.autograd``: contexts, backward, gradients.

::

    with dist_autograd.context() as context_id:     # collective: the same id on every rank
        ...                                        # send / recv record send and recv functions
        dist_autograd.backward(context_id, roots)  # every rank, its own scalar roots
        grads = dist_autograd.get_gradients(context_id)   # {leaf: gradient} of this rank

The objective is the sum of all roots on all ranks (see ``mpigrad.distributed``).
"""

from .context import context, retrieve
from .engine import TIMEOUT_ENV, BackwardTimeoutError, DistBackwardError, backward

__all__ = [
    "context", "backward", "get_gradients", "DistBackwardError", "BackwardTimeoutError",
    "TIMEOUT_ENV",
]


def get_gradients(context_id):
    """``{leaf Tensor: gradient Tensor}`` accumulated for this rank's leaves in the context."""
    return dict(retrieve(context_id, "dist_autograd.get_gradients").gradients)
