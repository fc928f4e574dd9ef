"""Checking derivatives against central finite differences, for ops and users' Functions.

``check_grads(fn, args)`` compares, in float64, fn's reverse mode (vector-Jacobian products) and
forward mode (Jacobian-vector products) with central differences along random directions; with
``order=2`` or 3 it also checks the derivatives of the derivatives (through ``create_graph=True``
and nested dual levels).  It raises ``AssertionError`` naming the mode and the order of the
derivative that disagrees (order 2: the derivative of the vjp, and so on).
"""

import numpy as np

from .autograd import forward_ad
from .autograd.api import grad
from .tensor import Tensor

__all__ = ["check_grads", "numerical_jvp"]


def numerical_jvp(fn, args, directions, eps=1e-6):
    """Central difference of ``fn`` at ``args`` along ``directions`` (None for fixed args)."""

    def at(sign):
        moved = [
            a if d is None else Tensor(a.data + sign * eps * d) for a, d in zip(args, directions)
        ]
        return np.asarray(fn(*moved).data, dtype=np.float64)

    return (at(1) - at(-1)) / (2 * eps)


def check_grads(fn, args, modes=("rev", "fwd"), order=1, eps=1e-6, rtol=1e-5, atol=1e-6, seed=0):
    """Assert that fn's derivatives w.r.t. its floating-point Tensor ``args`` match finite
    differences.  ``fn`` takes the args and returns a Tensor; other args are passed unchanged."""
    _check(fn, args, modes, order, eps, rtol, atol, seed, 1)


def _check(fn, args, modes, order, eps, rtol, atol, seed, depth):
    """check_grads of the derivatives of order ``depth`` (fn is then a vjp of order depth - 1)
    up to those of order ``depth + order - 1``."""
    rng = np.random.default_rng(seed)
    args = list(args)
    free = [isinstance(a, Tensor) and a.dtype.kind == "f" for a in args]
    if not any(free):
        raise ValueError("check_grads: no floating-point Tensor argument to differentiate")
    for a, f in zip(args, free):
        if f and a.dtype != np.float64:
            raise ValueError(f"check_grads: use float64 inputs, got {a.dtype}")
    primals = [Tensor(a.data, requires_grad=True) if f else a for a, f in zip(args, free)]
    directions = [rng.standard_normal(a.shape) if f else None for a, f in zip(args, free)]
    expected = numerical_jvp(fn, primals, directions, eps)
    out = fn(*primals)
    if "rev" in modes:
        _check_rev(fn, primals, free, directions, expected, out, rng, rtol, atol, depth)
    if "fwd" in modes:
        _check_fwd(fn, primals, free, directions, expected, rtol, atol, depth)
    if order > 1:
        cotangent = Tensor(rng.standard_normal(out.shape))

        def vjp(*xs):
            # Finite differences call this with plain tensors: make them leaves to differentiate.
            xs = [
                x if not f or x.requires_grad else Tensor(x.data, requires_grad=True)
                for x, f in zip(xs, free)
            ]
            inputs = [x for x, f in zip(xs, free) if f]
            grads = _vjp(fn(*xs), inputs, cotangent, create_graph=True)
            total = None
            for g, w in zip(grads, rng_weights(inputs, seed)):
                if g is not None:
                    term = (g * w).sum()
                    total = term if total is None else total + term
            return total if total is not None else Tensor(np.zeros(()))

        _check(vjp, args, modes, order - 1, eps, rtol, atol, seed + 1, depth + 1)


def rng_weights(inputs, seed):
    rng = np.random.default_rng(seed + 1000)
    return [Tensor(rng.standard_normal(x.shape)) for x in inputs]


def _vjp(result, inputs, cotangent, create_graph=False):
    if not result.requires_grad:  # constant in the inputs (a derivative of a polynomial)
        return [None] * len(inputs)
    return grad(result, inputs, cotangent, create_graph=create_graph, allow_unused=True)


def _check_rev(fn, primals, free, directions, expected, out, rng, rtol, atol, depth):
    cotangent = rng.standard_normal(out.shape)
    inputs = [a for a, f in zip(primals, free) if f]
    grads = _vjp(fn(*primals), inputs, Tensor(cotangent))
    got = sum(
        float(np.sum(g.data * d))
        for g, d in zip(grads, [d for d in directions if d is not None])
        if g is not None
    )
    want = float(np.sum(cotangent * expected))
    if not np.isclose(got, want, rtol=rtol, atol=atol * max(1.0, np.abs(cotangent).sum())):
        raise AssertionError(
            f"reverse mode, derivative of order {depth}: <vjp, u> = {got!r} but finite "
            f"differences give {want!r}"
        )


def _check_fwd(fn, primals, free, directions, expected, rtol, atol, depth):
    with forward_ad.dual_level():
        duals = [
            forward_ad.make_dual(a, Tensor(d)) if f else a
            for a, f, d in zip(primals, free, directions)
        ]
        tangent = forward_ad.unpack_dual(fn(*duals)).tangent
    got = np.zeros_like(expected) if tangent is None else np.asarray(tangent.data)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
        raise AssertionError(
            f"forward mode, derivative of order {depth}: jvp = {got!r} but finite differences "
            f"give {expected!r}"
        )
