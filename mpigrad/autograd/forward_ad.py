"""Forward-mode AD with nested dual levels (torch allows one level; mpigrad nests them).

Inside ``with dual_level():`` a tensor made by ``make_dual(primal, tangent)`` carries ``tangent``
at that level, and every op computes its output's tangent (the Jacobian-vector product).
A tangent is a Tensor and carries the tangents of the other levels, so forward-over-forward gives
second derivatives, whatever order the levels are unpacked in, and a function that uses a dual
level of its own can be differentiated from an enclosing one (Note [nested tangents] in
mpigrad/dual.py)::

    with dual_level() as outer, dual_level() as inner:
        x = make_dual(make_dual(x0, v, level=inner), u, level=outer)
        d1 = unpack_dual(f(x), level=outer).tangent       # f'(x0) u
        d2 = unpack_dual(d1, level=inner).tangent         # f''(x0) u v

Levels are exited innermost-first; exiting a level removes its tangents from every tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

from numpy.typing import ArrayLike

from .. import dual
from ..function import strip_level
from ..ops.movement import alias
from ..tensor import Tensor, is_differentiable

__all__ = [
    "enter_dual_level",
    "exit_dual_level",
    "dual_level",
    "make_dual",
    "unpack_dual",
    "UnpackedDualTensor",
]


class UnpackedDualTensor(NamedTuple):
    primal: Tensor
    tangent: Tensor | None


def enter_dual_level() -> int:
    """Open a new (inner) dual level and return its id."""
    return dual.enter()


def exit_dual_level(level: int | None = None) -> None:
    """Close ``level`` (default: the innermost); it must be the innermost open level."""
    dual.exit(dual.resolve(level, "exit_dual_level") if level is None else level)


@contextlib.contextmanager
def dual_level() -> Iterator[int]:
    """A dual level for the ``with`` block; yields its id."""
    level = dual.enter()
    try:
        yield level
    finally:
        dual.exit(level)


def make_dual(primal: Tensor, tangent: Tensor | ArrayLike, level: int | None = None) -> Tensor:
    """A tensor equal to ``primal`` (differentiable w.r.t. it) carrying ``tangent`` at ``level``
    (default: the innermost open level).  It keeps primal's tangents at other levels."""
    level = dual.resolve(level, "make_dual")
    if not isinstance(primal, Tensor):
        raise TypeError(f"make_dual: primal must be a Tensor, got {type(primal).__name__}")
    tangent = tangent if isinstance(tangent, Tensor) else Tensor(tangent)
    if not is_differentiable(primal.dtype):
        raise ValueError(f"make_dual: primal must be floating point, got dtype {primal.dtype}")
    if tangent.shape != primal.shape:
        raise ValueError(
            f"make_dual: tangent shape {tangent.shape} does not match primal shape {primal.shape}"
        )
    if tangent.dtype != primal.dtype:
        raise ValueError(
            f"make_dual: tangent dtype {tangent.dtype} does not match primal dtype {primal.dtype}"
        )
    out = strip_level(primal, level)
    if out is primal:  # nothing to strip: a plain alias (it keeps primal's tangents)
        out = alias(primal)
    dual.set_tangent(out, level, tangent)
    return out


def unpack_dual(tensor: Tensor, level: int | None = None) -> UnpackedDualTensor:
    """``(primal, tangent)`` of ``tensor`` at ``level`` (default: innermost); tangent may be None.

    The primal is a view without the tangent at ``level`` but with those of other levels."""
    level = dual.resolve(level, "unpack_dual")
    fw = tensor._fw or {}
    if level not in fw:
        return UnpackedDualTensor(tensor, None)
    return UnpackedDualTensor(strip_level(tensor, level), fw[level])
