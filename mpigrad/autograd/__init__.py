"""torch.autograd's API on one rank: backward, grad, Function, forward_ad and the grad mode."""

from ..engine import BackwardError, queue_callback
from ..function import Function, FunctionCtx
from ..grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from . import forward_ad
from .api import backward, grad

__all__ = [
    "backward",
    "grad",
    "Function",
    "FunctionCtx",
    "BackwardError",
    "queue_callback",
    "forward_ad",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
]
