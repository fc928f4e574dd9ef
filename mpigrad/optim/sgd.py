"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``.  Per step, with gradient ``g`` of
    parameter ``p``, learning rate ``lr``, momentum ``mu``, dampening ``tau`` and weight decay
    ``wd``::

        g = g + wd * p                            (if wd != 0)
        b = g on the first step,                  (if mu != 0; state "momentum_buffer")
            mu * b + (1 - tau) * g after it
        g = g + mu * b if nesterov else b         (if mu != 0)
        p = p - lr * g

    ``nesterov`` needs a positive momentum and zero dampening.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    def _problem(self, options: dict[str, Any]) -> str | None:
        momentum = options["momentum"]
        if not 0.0 <= momentum:
            return f"invalid momentum value: {momentum}"
        if options["nesterov"] and (momentum <= 0 or options["dampening"] != 0):
            return "Nesterov momentum requires a momentum and zero dampening"
        return super()._problem(options)

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any]) -> None:
        param = p.data
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        scratch = self._scratch(param, 1 if weight_decay == 0 else 2)
        if weight_decay != 0:
            grad = np.add(grad, np.multiply(param, weight_decay, out=scratch[1]), out=scratch[1])
        if momentum != 0:
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {}
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.copy()
            else:
                buffer *= momentum
                if group["dampening"] != 0:
                    buffer += np.multiply(grad, 1 - group["dampening"], out=scratch[0])
                else:
                    buffer += grad
            if group["nesterov"]:
                grad = np.add(grad, np.multiply(buffer, momentum, out=scratch[0]), out=scratch[0])
            else:
                grad = buffer
        param -= np.multiply(grad, group["lr"], out=scratch[0])
