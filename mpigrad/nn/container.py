"""``Sequential``: modules applied one after the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """``Sequential(a, b, c)(x)`` is ``c(b(a(x)))``.  The modules are submodules named
    ``"0"``, ``"1"``, ... (so parameters are named ``"0.weight"`` as in torch); the container
    supports ``len``, iteration and indexing by position (negative counts from the end)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(
                    f"Sequential: argument {i} is a {type(module).__name__}, not a Module"
                )
            setattr(self, str(i), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        modules = list(self._modules.values())
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"Sequential index {index} out of range for {len(modules)} modules")
        return modules[index]

    def forward(self, x: Any) -> Any:
        for module in self:
            x = module(x)
        return x
