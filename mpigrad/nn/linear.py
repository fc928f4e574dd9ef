"""``Linear``: an affine map of the last dimension, with torch's shapes and initialisation."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..ops.linalg import linear
from ..tensor import Tensor
from .module import Module

__all__ = ["Linear"]


class Linear(Module):
    """``y = x @ weight.T + bias`` over the last dimension of ``x``.

    ``weight`` has shape ``(out_features, in_features)`` and ``bias`` ``(out_features,)`` (or
    is None without ``bias``), both of ``dtype`` and requiring grad.  Both are drawn as torch
    draws them, uniform on ``[-1/sqrt(in_features), 1/sqrt(in_features))`` (for the weight that
    is Kaiming-uniform with ``a = sqrt(5)``), from ``generator``: a numpy Generator or a seed
    (None: fresh entropy).  The weight is drawn first, so a seed gives the same layer each time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
        generator: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"Linear: {name} must be a positive integer, got {n!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(generator)
        bound = 1 / math.sqrt(in_features)

        def uniform(*shape):
            return Tensor(
                rng.uniform(-bound, bound, shape).astype(dtype, copy=False), requires_grad=True
            )

        self.weight = uniform(out_features, in_features)
        self.bias = uniform(out_features) if bias else None

    def forward(self, x: Tensor | ArrayLike) -> Tensor:
        shape = np.shape(x)
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: the input's last dimension must be in_features={self.in_features}, "
                f"got an input of shape {shape}"
            )
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
