"""Optimizers with torch.optim's names, options and numerics, stepping numpy arrays in place.

::

    opt = mg.optim.SGD(params, lr=0.1, momentum=0.9)   # or [{"params": ..., "lr": ...}, ...]
    opt.zero_grad()
    loss.backward()
    opt.step()                                         # or opt.step(context_id): gradients
                                                       # from dist_autograd.get_gradients
"""

from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
