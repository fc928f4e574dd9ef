"""The op table: at least one derivative case for every name in ``mpigrad.ops.__all__``.

A case is a function of Tensors (plus data: masks, indices) and a generator of its float64 inputs.
Inputs stay away from kinks and singularities so that central differences are valid: logs, roots
and divisors are positive; abs, relu and clamp inputs are away from 0 and the bounds; the values
compared by max, min, maximum and minimum are at least 0.1 apart.

``order`` is the highest derivative order ``check_grads`` verifies (it checks every lower order on
the way).  Ops that are piecewise linear stop at 2: their higher derivatives are zero almost
everywhere and say nothing new.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mpigrad as mg
from mpigrad import Tensor

__all__ = [
    "OpCase",
    "CASES",
    "normal",
    "positive",
    "apart",
    "distinct",
    "spaced_pair",
    "outside",
]


@dataclass(frozen=True)
class OpCase:
    name: str  # the registry name in mpigrad.ops.__all__
    label: str  # what sets this case apart from others of the same op
    fn: Callable[..., Tensor]
    inputs: Callable[[np.random.Generator], list]
    order: int = 3
    tolerances: dict[str, Any] = field(default_factory=dict)  # eps, rtol, atol for check_grads

    @property
    def id(self):
        return f"{self.name}-{self.label}"


# --- input generators: each takes a numpy Generator and returns float64 data ---------------------


def normal(rng, *shape):
    return Tensor(rng.standard_normal(shape))


def positive(rng, *shape):
    return Tensor(rng.uniform(0.5, 2.0, shape))


def apart(rng, *shape, gap=0.3):
    """Values at least ``gap`` away from 0, of either sign (for abs and relu)."""
    return Tensor(rng.choice([-1.0, 1.0], shape) * rng.uniform(gap, 2.0, shape))


def distinct(rng, *shape):
    """Values pairwise at least 0.1 apart (for max and min: no ties in any reduction)."""
    n = int(np.prod(shape, dtype=int))
    values = (rng.permutation(n) - n / 2) * 0.25 + rng.uniform(-0.05, 0.05, n)
    return Tensor(values.reshape(shape))


def spaced_pair(rng, shape_x, shape_y):
    """Two arrays whose elements differ by at least 0.1 wherever they are compared after
    broadcasting (x on the grid 0.2 k + 0.05, y on 0.2 k - 0.05)."""
    x = rng.integers(-5, 6, shape_x) * 0.2 + 0.05
    y = rng.integers(-5, 6, shape_y) * 0.2 - 0.05
    return Tensor(x), Tensor(y)


def outside(rng, lo, hi, *shape):
    """Values below ``lo``, between the bounds or above ``hi``, each at least 0.2 from them."""
    zone = rng.integers(0, 3, shape)
    below = rng.uniform(lo - 2.0, lo - 0.2, shape)
    inside = rng.uniform(lo + 0.2, hi - 0.2, shape)
    above = rng.uniform(hi + 0.2, hi + 2.0, shape)
    return Tensor(np.choose(zone, [below, inside, above]))


def _cat_weighted(pieces, axis):
    """Pieces of a split put back with distinct weights, so that a swapped piece is noticed."""
    return mg.cat([p * (i + 1.0) for i, p in enumerate(pieces)], axis)


MASK = np.array([[True, False, True, True], [False, False, True, False], [True, True, False, True]])


def _case(name, label, fn, inputs, order=3, **tolerances):
    return OpCase(name, label, fn, inputs, order, tolerances)


CASES = [
    # --- elementwise: arithmetic, with broadcasting and Python scalars -------------------------
    _case("add", "broadcast", mg.add, lambda r: [normal(r, 3, 1, 4), normal(r, 2, 4)]),
    _case("add", "operator-scalar", lambda x: 2.5 + x + 1.0, lambda r: [normal(r, 3)]),
    _case("sub", "broadcast", mg.sub, lambda r: [normal(r, 2, 3), normal(r, 3)]),
    _case(
        "sub",
        "operator-reflected",
        lambda x, y: 1.5 - x - y,
        lambda r: [normal(r, 4), normal(r, 1)],
    ),
    _case("mul", "broadcast", mg.mul, lambda r: [normal(r, 2, 1), normal(r, 1, 3)]),
    _case("mul", "same-input", lambda x: x * x * 3.0, lambda r: [normal(r, 5)]),
    _case("div", "broadcast", mg.div, lambda r: [normal(r, 2, 3), positive(r, 3)]),
    _case("div", "reflected", lambda x: 2.0 / x, lambda r: [positive(r, 4)]),
    _case("pow", "tensor-exponent", mg.pow, lambda r: [positive(r, 2, 3), normal(r, 3)]),
    _case("pow", "int-exponent", lambda x: x**3, lambda r: [normal(r, 4)]),
    _case("pow", "scalar-base", lambda x: 2.0**x, lambda r: [normal(r, 4)]),
    _case("neg", "operator", lambda x: -x, lambda r: [normal(r, 2, 3)]),
    # --- elementwise: smooth unary ------------------------------------------------------------
    _case("exp", "", mg.exp, lambda r: [normal(r, 2, 3)]),
    _case("log", "", mg.log, lambda r: [positive(r, 2, 3)]),
    _case("sqrt", "", mg.sqrt, lambda r: [positive(r, 2, 3)]),
    _case("sin", "", mg.sin, lambda r: [normal(r, 2, 3)]),
    _case("cos", "", mg.cos, lambda r: [normal(r, 2, 3)]),
    _case("tanh", "", mg.tanh, lambda r: [normal(r, 2, 3)]),
    _case("sigmoid", "", mg.sigmoid, lambda r: [normal(r, 2, 3)]),
    # --- elementwise: piecewise (inputs away from the kinks) ----------------------------------
    _case("abs", "", mg.abs, lambda r: [apart(r, 2, 3)], order=2),
    _case("abs", "operator-composed", lambda x: abs(x) * x, lambda r: [apart(r, 5)], order=3),
    _case("relu", "", mg.relu, lambda r: [apart(r, 2, 3)], order=2),
    _case(
        "maximum", "broadcast", mg.maximum, lambda r: list(spaced_pair(r, (3, 4), (4,))), order=2
    ),
    _case("maximum", "scalar", lambda x: mg.maximum(x, 0.0) * x, lambda r: [apart(r, 6)]),
    _case(
        "minimum", "broadcast", mg.minimum, lambda r: list(spaced_pair(r, (3, 1), (1, 4))), order=2
    ),
    _case("where", "mask-broadcast", mg.where, lambda r: [MASK, normal(r, 3, 4), normal(r, 4)]),
    _case(
        "where",
        "bool-tensor-scalar",
        lambda c, x: mg.where(c, x * x, 0.0),
        lambda r: [Tensor(MASK), normal(r, 3, 4)],
    ),
    _case(
        "clamp",
        "scalar-bounds",
        lambda x: mg.clamp(x, -0.5, 0.5),
        lambda r: [outside(r, -0.5, 0.5, 4, 5)],
        order=2,
    ),
    _case(
        "clamp",
        "min-only",
        lambda x: mg.clamp(x, min=-0.5) * x,
        lambda r: [outside(r, -0.5, 0.5, 6)],
    ),
    _case(
        "clamp",
        "tensor-bounds",
        lambda x, lo, hi: mg.clamp(x, lo, hi),
        lambda r: [outside(r, -0.5, 0.5, 2, 3), Tensor(np.full(3, -0.5)), Tensor(0.5)],
        order=2,
    ),
    # float32 in the middle: central differences see float32 rounding, hence the wide tolerance.
    _case(
        "astype",
        "float32-roundtrip",
        lambda x: mg.astype(mg.astype(x, np.float32), np.float64),
        lambda r: [normal(r, 3, 2)],
        eps=1e-2,
        rtol=1e-4,
        atol=1e-4,
    ),
    _case(
        "astype",
        "float32-smooth",
        lambda x: mg.exp(x.astype(np.float32)).astype(np.float64),
        lambda r: [normal(r, 4)],
        eps=1e-2,
        rtol=2e-3,
        atol=2e-3,
    ),
    # --- reductions ---------------------------------------------------------------------------
    _case("sum", "all", mg.sum, lambda r: [normal(r, 2, 3)]),
    _case(
        "sum",
        "axis-keepdims",
        lambda x: mg.sum(x * x, axis=(0, 2), keepdims=True),
        lambda r: [normal(r, 2, 3, 4)],
    ),
    _case("mean", "negative-axis", lambda x: mg.mean(x * x, axis=-1), lambda r: [normal(r, 3, 4)]),
    _case("mean", "all-keepdims", lambda x: mg.mean(x, keepdims=True), lambda r: [normal(r, 3, 4)]),
    _case("max", "axis", lambda x: mg.max(x, axis=1), lambda r: [distinct(r, 3, 4)], order=2),
    _case("max", "all-squared", lambda x: mg.max(x * x), lambda r: [positive(r, 5)]),
    _case(
        "min",
        "axes-keepdims",
        lambda x: mg.min(x, axis=(0, 2), keepdims=True),
        lambda r: [distinct(r, 2, 3, 2)],
        order=2,
    ),
    _case(
        "sum_to",
        "broadcast-axes",
        lambda x: mg.sum_to(x * x, (3, 1)),
        lambda r: [normal(r, 2, 3, 4)],
    ),
    _case("sum_to", "to-scalar", lambda x: mg.sum_to(x, ()), lambda r: [normal(r, 2, 3)]),
    # --- movement -----------------------------------------------------------------------------
    _case(
        "reshape", "minus-one", lambda x: mg.reshape(x * x, (3, -1)), lambda r: [normal(r, 2, 3, 2)]
    ),
    _case("reshape", "varargs", lambda x: x.reshape(6), lambda r: [normal(r, 2, 3)]),
    _case("permute", "", lambda x: mg.permute(x * x, 2, 0, 1), lambda r: [normal(r, 2, 3, 4)]),
    _case("permute", "dot-T", lambda x: x.T * x.T, lambda r: [normal(r, 2, 3, 4)]),
    _case("transpose", "", lambda x: mg.transpose(x * x, 0, -1), lambda r: [normal(r, 2, 3, 4)]),
    _case(
        "broadcast_to", "", lambda x: mg.broadcast_to(x * x, (2, 3, 4)), lambda r: [normal(r, 3, 1)]
    ),
    _case("squeeze", "", lambda x: mg.squeeze(x * x), lambda r: [normal(r, 1, 3, 1)]),
    _case("squeeze", "axis", lambda x: mg.squeeze(x, 0), lambda r: [normal(r, 1, 3)]),
    _case("unsqueeze", "", lambda x: mg.unsqueeze(x * x, -1), lambda r: [normal(r, 2, 3)]),
    _case(
        "getitem",
        "slices",
        lambda x: mg.getitem(x * x, (slice(None, None, -1), 1)),
        lambda r: [normal(r, 4, 3)],
    ),
    _case(
        "getitem", "repeated-ints", lambda x: (x * x)[[0, 0, 2, -1]], lambda r: [normal(r, 4, 2)]
    ),
    _case(
        "getitem",
        "int-tensor",
        lambda x, i: x[i] * x[i],
        lambda r: [normal(r, 5), Tensor(np.array([[4, 0], [0, 1]]))],
    ),
    _case("getitem", "bool-mask", lambda x: (x * x)[MASK], lambda r: [normal(r, 3, 4)]),
    _case(
        "getitem", "mixed", lambda x: x[1:, [0, 2, 2], None] * x[0, 0], lambda r: [normal(r, 3, 4)]
    ),
    _case(
        "index_select",
        "axis0",
        lambda x: mg.index_select(x * x, 0, np.array([2, 0, 2])),
        lambda r: [normal(r, 3, 4)],
    ),
    _case(
        "index_select",
        "axis1",
        lambda x, i: mg.index_select(x * x, 1, i),
        lambda r: [normal(r, 3, 4), Tensor(np.array([3, 1, 1]))],
    ),
    _case(
        "cat",
        "",
        lambda x, y: mg.cat([x * y, y, x], axis=1),
        lambda r: [normal(r, 2, 3), normal(r, 2, 3)],
    ),
    _case(
        "cat",
        "negative-axis",
        lambda x, y: mg.cat([x, y * y], -1),
        lambda r: [normal(r, 2, 1), normal(r, 2, 3)],
    ),
    _case(
        "stack",
        "",
        lambda x, y: mg.stack([x * y, y], axis=1),
        lambda r: [normal(r, 2, 3), normal(r, 2, 3)],
    ),
    _case(
        "split",
        "int-size",
        lambda x: _cat_weighted(mg.split(x * x, 2, axis=1), 1),
        lambda r: [normal(r, 2, 5)],
    ),
    _case(
        "split",
        "sections",
        lambda x: _cat_weighted(mg.split(x * x, [1, 3, 0], axis=0), 0),
        lambda r: [normal(r, 4, 2)],
    ),
    _case(
        "pad",
        "pairs-value",
        lambda x: mg.pad(x * x, ((1, 0), (2, 1)), value=1.5),
        lambda r: [normal(r, 2, 3)],
    ),
    _case("pad", "int", lambda x: mg.pad(x * x, 2), lambda r: [normal(r, 3)]),
    _case(
        "pad",
        "one-pair",
        lambda x: mg.pad(x, (0, 2), value=-1.0) ** 2,
        lambda r: [normal(r, 2, 1, 2)],
    ),
    _case("alias", "", lambda x: mg.alias(x * x), lambda r: [normal(r, 2, 3)]),
    # --- linalg -------------------------------------------------------------------------------
    _case("matmul", "2d", mg.matmul, lambda r: [normal(r, 2, 3), normal(r, 3, 4)]),
    _case(
        "matmul",
        "batched-broadcast",
        lambda x, y: x @ y,
        lambda r: [normal(r, 2, 1, 3, 4), normal(r, 5, 4, 2)],
    ),
    _case("matmul", "vector-matrix", lambda x, y: x @ y, lambda r: [normal(r, 3), normal(r, 3, 2)]),
    _case("matmul", "matrix-vector", lambda x, y: x @ y, lambda r: [normal(r, 2, 3), normal(r, 3)]),
    _case("matmul", "vector-vector", lambda x, y: x @ y, lambda r: [normal(r, 3), normal(r, 3)]),
    _case(
        "matmul", "vector-batch", lambda x, y: x @ y, lambda r: [normal(r, 3), normal(r, 2, 3, 4)]
    ),
    _case(
        "matmul",
        "reflected-ndarray",
        lambda x: np.arange(4.0).reshape(2, 2) @ x @ x.T,
        lambda r: [normal(r, 2, 3)],
    ),
    _case(
        "linear", "2d-bias", mg.linear, lambda r: [normal(r, 4, 3), normal(r, 2, 3), normal(r, 2)]
    ),
    _case("linear", "batched", mg.linear, lambda r: [normal(r, 2, 4, 3), normal(r, 5, 3)]),
    _case("linear", "vector", mg.linear, lambda r: [normal(r, 3), normal(r, 2, 3)]),
    # --- nn -----------------------------------------------------------------------------------
    _case("softmax", "last-axis", mg.softmax, lambda r: [normal(r, 3, 4)]),
    _case("softmax", "axis0", lambda x: mg.softmax(x, axis=0), lambda r: [normal(r, 3, 4)]),
    _case("log_softmax", "", mg.log_softmax, lambda r: [normal(r, 3, 4)]),
    _case(
        "log_softmax", "axis1-of-3", lambda x: mg.log_softmax(x, 1), lambda r: [normal(r, 2, 3, 2)]
    ),
    _case("logsumexp", "all", mg.logsumexp, lambda r: [normal(r, 3, 4)]),
    _case(
        "logsumexp",
        "axis-keepdims",
        lambda x: mg.logsumexp(x, axis=(0, 2), keepdims=True),
        lambda r: [normal(r, 2, 3, 2)],
    ),
    _case(
        "cross_entropy",
        "int-targets",
        lambda x: mg.cross_entropy(x, np.array([2, 0, 3])),
        lambda r: [normal(r, 3, 4)],
    ),
    # Probability targets are data (an ndarray here, so check_grads does not differentiate them).
    _case(
        "cross_entropy",
        "prob-targets",
        mg.cross_entropy,
        lambda r: [normal(r, 3, 4), r.dirichlet(np.ones(4), 3)],
    ),
    _case("mse_loss", "", mg.mse_loss, lambda r: [normal(r, 3, 4), normal(r, 3, 4)]),
    # --- stencil --------------------------------------------------------------------------------
    _case(
        "stencil",
        "heat-constant-weights",
        lambda x: mg.stencil(x, [0.4, 0.2, 0.4]),
        lambda r: [normal(r, 7)],
    ),
    _case("stencil", "weights-too", mg.stencil, lambda r: [normal(r, 6), normal(r, 3)]),
    _case(
        "stencil",
        "axis0-of-2d",
        lambda x, w: mg.stencil(x, w, axis=0),
        lambda r: [normal(r, 5, 2), normal(r, 2)],
    ),
    _case(
        "stencil",
        "middle-axis-of-3d",
        lambda x, w: mg.stencil(x, w, axis=-2),
        lambda r: [normal(r, 2, 4, 3), normal(r, 4)],
    ),
    _case(
        "stencil",
        "one-weight",
        lambda x, w: mg.stencil(x, w),
        lambda r: [normal(r, 3, 4), normal(r, 1)],
    ),
]
