"""Layers with torch's names: ``Module`` (parameters and submodules by attribute, ``state_dict``),
``Linear``, ``Sequential`` and the activations ``ReLU``, ``Tanh``, ``Sigmoid``.  Parameters are
plain leaf Tensors; the ops these layers call live in ``mpigrad.ops`` (``mpigrad.ops.nn`` holds
the loss and softmax ops)."""

from .activation import ReLU, Sigmoid, Tanh
from .container import Sequential
from .linear import Linear
from .module import IncompatibleKeys, Module

__all__ = ["Module", "IncompatibleKeys", "Linear", "Sequential", "ReLU", "Tanh", "Sigmoid"]
