"""``Adam`` and ``AdamW``: one update; AdamW is Adam with decoupled weight decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``.  Per step ``t`` (from 1), with gradient ``g`` of parameter
    ``p``, learning rate ``lr``, ``betas = (b1, b2)`` and weight decay ``wd``::

        p = p * (1 - lr * wd)                 (if decoupled_weight_decay: AdamW)
        g = g + wd * p                        (otherwise)
        m = b1 * m + (1 - b1) * g             (state "exp_avg", from zeros)
        v = b2 * v + (1 - b2) * g * g         (state "exp_avg_sq", from zeros)
        v_max = max(v_max, v); use v_max as v (if amsgrad; state "max_exp_avg_sq")
        p = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

    ``t`` is the state's "step".  Each beta must lie in [0, 1), ``lr``, ``eps`` and ``wd`` be
    non-negative.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _problem(self, options: dict[str, Any]) -> str | None:
        if not 0.0 <= options["eps"]:
            return f"invalid epsilon value: {options['eps']}"
        betas = options["betas"]
        if len(betas) != 2:
            return f"betas must be a pair (beta1, beta2), got {betas}"
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                return f"invalid beta parameter at index {i}: {beta} (must lie in [0, 1))"
        return super()._problem(options)

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any]) -> None:
        param = p.data
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {
                "step": 0,
                "exp_avg": np.zeros_like(param),
                "exp_avg_sq": np.zeros_like(param),
            }
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        step = state["step"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        coupled = weight_decay != 0 and not group["decoupled_weight_decay"]
        scratch = self._scratch(param, 2 if coupled else 1)
        work = scratch[0]
        if coupled:
            grad = np.add(grad, np.multiply(param, weight_decay, out=scratch[1]), out=scratch[1])
        elif weight_decay != 0:
            param *= 1 - lr * weight_decay
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # b1 * m + (1 - b1) * g, as m + (1 - b1) * (g - m) (torch's lerp)
        exp_avg += np.multiply(np.subtract(grad, exp_avg, out=work), 1 - beta1, out=work)
        exp_avg_sq *= beta2
        exp_avg_sq += np.multiply(np.multiply(grad, grad, out=work), 1 - beta2, out=work)
        if group["amsgrad"]:
            exp_avg_sq = np.maximum(
                state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"]
            )
        denominator = np.sqrt(exp_avg_sq, out=work)
        denominator /= math.sqrt(1 - beta2**step)
        denominator += group["eps"]
        update = np.divide(exp_avg, denominator, out=work)
        update *= lr / (1 - beta1**step)
        param -= update


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: ``Adam`` with decoupled weight decay (the parameter
    shrinks by ``lr * weight_decay`` of itself each step; the moments never see the decay),
    1e-2 by default."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)
