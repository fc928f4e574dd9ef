"""``Module``: the base of layers, holding parameters and submodules by attribute, as torch's.

A Tensor assigned to a Module attribute is a parameter; a Module assigned to one is a submodule.
Both are registered in the order of assignment, and the names that ``named_parameters`` and
``state_dict`` give are torch's: the attribute path joined by dots (``"0.weight"``,
``"encoder.fc.bias"``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ..tensor import Tensor

__all__ = ["Module", "IncompatibleKeys"]


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` left out, in the order found."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers.  Subclasses call ``super().__init__()`` first, assign their
    parameters (leaf Tensors, normally with ``requires_grad=True``) and submodules as
    attributes, and define ``forward``; calling the module calls ``forward``.

    A parameter is every Tensor assigned to an attribute, whether or not it requires grad (a
    frozen parameter is still saved and loaded); it must be a leaf.  Assigning anything else
    to the name of a parameter or submodule replaces it with a plain attribute.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # --- registration -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        registries = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if isinstance(value, (Tensor, Module)) and registries[0] is None:
            raise AttributeError(
                f"{type(self).__name__}: call Module.__init__() before assigning {name!r}"
            )
        if isinstance(value, Tensor) and value.grad_fn is not None:
            raise TypeError(
                f"{type(self).__name__}.{name}: a parameter must be a leaf tensor, this one has "
                f"grad_fn=<{value.grad_fn.name()}> (assign its .detach())"
            )
        keep = 0 if isinstance(value, Tensor) else 1 if isinstance(value, Module) else None
        for i, registry in enumerate(registries):
            if registry is not None and i != keep:
                registry.pop(name, None)
        if keep is None:
            object.__setattr__(self, name, value)
        else:
            self.__dict__.pop(name, None)
            registries[keep][name] = value  # a name assigned again keeps its place

    def __getattr__(self, name: str) -> Any:
        # Called only when ordinary lookup fails: parameters and submodules live in the registries.
        for registry in ("_parameters", "_modules"):
            found = self.__dict__.get(registry, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_modules"):
            if name in self.__dict__.get(registry, {}):
                del self.__dict__[registry][name]
                return
        object.__delattr__(self, name)

    # --- traversal ----------------------------------------------------------------------------
    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """This module (named ``prefix``) and every submodule below it, depth first in
        registration order.  A module reached twice is given once, under its first name,
        unless ``remove_duplicate`` is False."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if module in seen:
                continue
            if remove_duplicate:
                seen.add(module)
            yield name, module
            stack.extend(
                (f"{name}.{child}" if name else child, sub)
                for child, sub in reversed(module._modules.items())
            )

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, parameter) pairs: each module's own parameters in registration order,
        modules in the order of ``named_modules`` (only this one's if not ``recurse``).  A
        parameter shared by several modules is given once unless ``remove_duplicate`` is
        False."""
        modules = self.named_modules(prefix, remove_duplicate) if recurse else [(prefix, self)]
        seen = set()
        for module_name, module in modules:
            for name, param in module._parameters.items():
                if param in seen:
                    continue
                if remove_duplicate:
                    seen.add(param)
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Tensor]:
        """The parameters of ``named_parameters``, in its order: what an optimizer takes."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    # --- gradients and state ------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's ``.grad``: to None (the default, as torch), or, if not
        ``set_to_none``, to zeros written into its array, cut from any graph."""
        for param in self.parameters():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad = param.grad.detach().zero_()

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """A copy of every parameter's array under its dotted name, in the order of
        ``named_parameters`` (a shared parameter under each of its names)."""
        return OrderedDict(
            (name, param.data.copy())
            for name, param in self.named_parameters(remove_duplicate=False)
        )

    def load_state_dict(
        self, state_dict: Mapping[str, ArrayLike], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy arrays into the parameters of the same names, in place.

        Every key present in both must match its parameter's shape and dtype.  With ``strict``
        (the default), the keys must also be those of ``state_dict()``.  A failed check raises
        RuntimeError naming the first key at fault and loads nothing.  Returns the missing and
        unexpected keys (empty under ``strict``)."""
        cls = type(self).__name__
        params = dict(self.named_parameters(remove_duplicate=False))
        missing = [key for key in params if key not in state_dict]
        unexpected = [key for key in state_dict if key not in params]
        for kind, keys in (("missing", missing), ("unexpected", unexpected)):
            if strict and keys:
                raise RuntimeError(
                    f"load_state_dict of {cls}: {kind} key {keys[0]!r} "
                    f"({len(keys)} {kind} in all: {', '.join(map(repr, keys))})"
                )
        arrays = {}
        for key, param in params.items():
            if key not in state_dict:
                continue
            array = np.asarray(state_dict[key])
            for what, got, want in (
                ("shape", array.shape, param.shape),
                ("dtype", array.dtype, param.dtype),
            ):
                if got != want:
                    raise RuntimeError(
                        f"load_state_dict of {cls}: {key!r} has {what} {got} in the state_dict "
                        f"but {want} in the module"
                    )
            arrays[key] = array
        for key, array in arrays.items():
            param = params[key]
            if param.data.flags.writeable:
                np.copyto(param.data, array)
            else:
                param.data = array.copy()
        return IncompatibleKeys(missing, unexpected)

    # --- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """What goes between the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self) -> str:
        lines = [
            f"  ({name}): " + repr(module).replace("\n", "\n  ")
            for name, module in self._modules.items()
        ]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        head = f"{type(self).__name__}({self.extra_repr()}"
        return "\n".join([head, *lines, ")"])
