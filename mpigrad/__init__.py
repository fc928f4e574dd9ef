"""mpigrad: reverse- and forward-mode automatic differentiation for MPI programs.

``import mpigrad`` gives the rank-local engine (a torch.autograd-like API over numpy arrays); it
does not import mpi4py or initialize MPI.
"""

from . import autograd, memory, nn, ops, optim  # memory: how freed memory is kept, on import
from .factories import *  # noqa: F403
from .factories import __all__ as _factories
from .function import Function
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .ops import *  # noqa: F403
from .ops import __all__ as _ops
from .tensor import Tensor

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "Function",
    "autograd",
    "ops",
    "nn",
    "optim",
    "memory",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    *_factories,
    *_ops,
]
