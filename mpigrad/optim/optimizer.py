"""``Optimizer``: parameter groups, per-parameter state, ``step``, ``zero_grad``, state dicts.

The layout is torch.optim's.  ``param_groups`` is a list of dicts, each with ``"params"`` (a list
of leaf Tensors) and every option of the optimizer (the constructor's values fill what a group
leaves out).  ``state`` maps a parameter to a dict of its buffers (numpy arrays) and counters,
made on the parameter's first step.  ``state_dict()`` names parameters by their index in the
order the groups list them.

Updates write into ``p.data`` in place, outside autograd (as torch steps under ``no_grad``):
the parameter keeps its array, so views of it and arrays that reference it see the new values.
A step allocates only on a parameter's first step (its state, and scratch arrays shared by the
parameters of one shape and dtype).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..tensor import Tensor, is_differentiable

__all__ = ["Optimizer"]


class Optimizer:
    """Base of the optimizers: a subclass gives its options' defaults, ``_problem`` (what is
    wrong with a set of options) and ``_update`` (one parameter's step)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(
                f"{name}: params should be an iterable of Tensors or dicts, but got a Tensor "
                "(pass [tensor])"
            )
        problem = self._problem(defaults)
        if problem:
            raise ValueError(f"{name}: {problem}")
        self.defaults = defaults
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._scratch_arrays: dict[tuple, list[np.ndarray]] = {}
        groups = _as_list(params, name)
        if not groups:
            raise ValueError(f"{name} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Append a group: ``{"params": tensors, option: value, ...}``; options it leaves out
        take the constructor's values.  Every parameter must be a writable floating-point leaf
        Tensor that no group lists yet."""
        name = type(self).__name__
        where = f"{name}: parameter group {len(self.param_groups)}"
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(param_group)}")
        if "params" not in param_group:
            raise ValueError(f"{where} has no 'params'")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        params = _as_list(params, where)
        listed = {id(p) for group in self.param_groups for p in group["params"]}
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(
                    f"{where}: can't optimize a non-leaf Tensor (grad_fn={p.grad_fn.name()})"
                )
            if not is_differentiable(p.dtype):
                raise ValueError(
                    f"{where}: can only optimize floating-point Tensors, got {p.dtype}"
                )
            if not p.data.flags.writeable:
                raise ValueError(f"{where}: a parameter's array is read-only (steps write into it)")
            if id(p) in listed:
                raise ValueError(f"{where}: some parameters appear more than once in the groups")
            listed.add(id(p))
        group = {**self.defaults, **param_group, "params": params}
        problem = self._problem(group)
        if problem:
            raise ValueError(f"{where}: {problem}")
        self.param_groups.append(group)

    def _problem(self, options: dict[str, Any]) -> str | None:
        """What is wrong with ``options`` (a group's or the defaults), or None."""
        if not 0.0 <= options["lr"]:
            return f"invalid learning rate: {options['lr']}"
        if not 0.0 <= options["weight_decay"]:
            return f"invalid weight_decay value: {options['weight_decay']}"
        return None

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any]) -> None:
        """Step ``p.data`` in place with ``grad`` (an array of its shape) and ``group``'s
        options, keeping ``self.state[p]``."""
        raise NotImplementedError

    def _scratch(self, like: np.ndarray, count: int) -> list[np.ndarray]:
        """``count`` arrays of ``like``'s shape and dtype to compute in, shared by every
        parameter of that shape and dtype (their contents do not survive an update)."""
        key = (like.shape, like.dtype)
        arrays = self._scratch_arrays.get(key)
        if arrays is None:
            arrays = self._scratch_arrays[key] = []
        while len(arrays) < count:
            arrays.append(np.empty_like(like))
        return arrays

    def _index(self, p: Tensor) -> int:
        """``p``'s index across the groups, as ``state_dict`` names it."""
        params = [q for group in self.param_groups for q in group["params"]]
        return next(i for i, q in enumerate(params) if q is p)

    def step(self, context_id: int | None = None) -> None:
        """Update every parameter that has a gradient, in place; one without is left alone.

        The gradients are the parameters' ``.grad``; with ``context_id``, those
        ``mpigrad.distributed.autograd.get_gradients(context_id)`` gives instead (as torch's
        ``DistributedOptimizer.step(context_id)``), and ``.grad`` is not read.
        """
        grads = None
        if context_id is not None:
            from ..distributed.autograd import get_gradients

            grads = get_gradients(context_id)
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad if grads is None else grads.get(p)
                if grad is None:
                    continue
                if grad.shape != p.shape:
                    raise ValueError(
                        f"{type(self).__name__}.step: parameter {self._index(p)} has shape "
                        f"{p.shape} but its gradient {grad.shape}"
                    )
                self._update(p, grad.data, group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the parameters' ``.grad``: to None, or (``set_to_none=False``) to zeros.

        Zeros are written into the gradient's array where that is writable (the engine leaves a
        leaf's ``.grad`` writable; see Note [gradient ownership] in engine.py), else a fresh
        array replaces it; so does one for a gradient recorded under ``create_graph``, whose
        array that graph may hold.
        """
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif grad.requires_grad:
                    p.grad = Tensor._make(np.zeros_like(grad.data))
                else:
                    grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: value}}, "param_groups": [{option: value, "params":
        [index, ...]}]}``, parameters named by their index across the groups in order.  Arrays
        are copies: later steps do not change a saved state dict."""
        params = [p for group in self.param_groups for p in group["params"]]
        state = {
            i: {key: _copy(value) for key, value in self.state[p].items()}
            for i, p in enumerate(params)
            if p in self.state
        }
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            options = {key: value for key, value in group.items() if key != "params"}
            groups.append({**options, "params": list(range(start, start + count))})
            start += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the options and state of ``state_dict`` (from ``state_dict()`` of an optimizer
        whose groups hold as many parameters each).  Arrays are copied, cast to their
        parameter's dtype; the parameters themselves stay this optimizer's."""
        name = f"{type(self).__name__}.load_state_dict"
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the state dict has {len(saved_groups)} parameter groups, this "
                f"optimizer {len(self.param_groups)}"
            )
        by_index = {}
        for n, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}: parameter group {n} has {len(saved['params'])} parameters in "
                    f"the state dict, {len(group['params'])} in this optimizer"
                )
            by_index.update(zip(saved["params"], group["params"]))
        groups = []
        for n, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            options = {key: value for key, value in saved.items() if key != "params"}
            problem = self._problem({**self.defaults, **options})
            if problem:
                raise ValueError(f"{name}: parameter group {n}: {problem}")
            groups.append({**self.defaults, **options, "params": group["params"]})
        state = {}
        for i, saved_state in state_dict["state"].items():
            if i not in by_index:
                raise ValueError(f"{name}: the state dict has state for parameter {i}, no group")
            p = by_index[i]
            state[p] = {}
            for key, value in saved_state.items():
                if isinstance(value, np.ndarray):
                    if value.shape != p.shape:
                        raise ValueError(
                            f"{name}: state {key!r} of parameter {i} has shape {value.shape}, "
                            f"the parameter {p.shape}"
                        )
                    value = np.array(value, dtype=p.dtype)
                state[p][key] = value
        self.param_groups = groups
        self.state = state


def _as_list(params, where):
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where}: parameters must come in an ordered collection (a list), not a set: a "
            "set's order changes between runs, and state dicts name parameters by position"
        )
    return list(params)


def _copy(value):
    return value.copy() if isinstance(value, np.ndarray) else value
