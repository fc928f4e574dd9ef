"""Elementwise activations as modules, each calling the mpigrad op of the same name."""

from __future__ import annotations

from .. import ops
from ..tensor import Tensor
from .module import Module

__all__ = ["ReLU", "Tanh", "Sigmoid"]


class ReLU(Module):
    """``max(x, 0)`` elementwise (``mpigrad.relu``)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    """``tanh(x)`` elementwise (``mpigrad.tanh``)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise (``mpigrad.sigmoid``)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)
