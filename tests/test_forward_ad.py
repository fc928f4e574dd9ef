"""Forward mode: dual levels, make_dual/unpack_dual, nesting (forward-over-forward) and its mixes
with reverse mode (forward-over-reverse, reverse-over-forward)."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import forward_ad as fwad
from mpigrad.autograd import grad


def t(values):
    return mg.tensor(values, dtype=np.float64)


def jvp(f, x0, u):
    with fwad.dual_level():
        return fwad.unpack_dual(f(fwad.make_dual(t(x0), t(u)))).tangent


def second_derivative(f, x0, u, v):
    """f''(x0)[u, v] by forward-over-forward."""
    with fwad.dual_level() as outer, fwad.dual_level() as inner:
        x = fwad.make_dual(fwad.make_dual(t(x0), t(v), level=inner), t(u), level=outer)
        d1 = fwad.unpack_dual(f(x), level=outer).tangent
        return fwad.unpack_dual(d1, level=inner).tangent


X0 = np.array([0.3, -1.2, 2.0])
U = np.array([1.0, 0.5, -2.0])
V = np.array([-0.4, 1.5, 0.7])


# --- one level --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f, df",
    [(mg.sin, np.cos), (mg.exp, np.exp), (lambda x: x * x * x, lambda x: 3 * x**2)],
    ids=["sin", "exp", "cube"],
)
def test_jvp_of_elementwise_functions(f, df):
    np.testing.assert_allclose(jvp(f, X0, U).data, df(X0) * U, rtol=1e-12)


def test_jvp_of_a_reduction_and_matmul():
    a = np.arange(6.0).reshape(2, 3)
    tangent = jvp(lambda x: (mg.tensor(a) @ x).sum(), X0, U)
    np.testing.assert_allclose(tangent.item(), (a @ U).sum())


def test_make_dual_and_unpack_dual():
    with fwad.dual_level():
        p = t([1.0, 2.0])
        x = fwad.make_dual(p, t([3.0, 4.0]))
        np.testing.assert_array_equal(x.data, [1.0, 2.0])
        unpacked = fwad.unpack_dual(x)
        assert isinstance(unpacked, tuple) and isinstance(unpacked, fwad.UnpackedDualTensor)
        primal, tangent = unpacked
        assert unpacked.primal is primal and unpacked.tangent is tangent
        np.testing.assert_array_equal(primal.data, [1.0, 2.0])
        np.testing.assert_array_equal(tangent.data, [3.0, 4.0])
        assert fwad.unpack_dual(primal).tangent is None
        assert fwad.unpack_dual(p).tangent is None  # make_dual does not change its primal
        plain = fwad.unpack_dual(t([5.0]))
        assert plain.tangent is None
        np.testing.assert_array_equal(plain.primal.data, [5.0])
        # A tensor computed from constants only carries no tangent.
        assert fwad.unpack_dual(t([1.0]) * 2.0).tangent is None


def test_make_dual_errors():
    with pytest.raises(RuntimeError, match="needs an open dual level"):
        fwad.make_dual(t([1.0]), t([1.0]))
    with pytest.raises(RuntimeError, match="needs an open dual level"):
        fwad.unpack_dual(t([1.0]))
    with fwad.dual_level():
        with pytest.raises(ValueError, match="shape"):
            fwad.make_dual(t([1.0, 2.0]), t([1.0]))
        with pytest.raises(ValueError, match="dtype"):
            fwad.make_dual(t([1.0]), mg.tensor([1.0], dtype=np.float32))
        with pytest.raises(ValueError, match="floating point"):
            fwad.make_dual(mg.tensor([1]), mg.tensor([1]))


def test_enter_and_exit_dual_level_explicitly():
    level = fwad.enter_dual_level()
    try:
        x = fwad.make_dual(t([2.0]), t([1.0]), level=level)
        y = x * x
        np.testing.assert_array_equal(fwad.unpack_dual(y, level=level).tangent.data, [4.0])
    finally:
        fwad.exit_dual_level(level)
    with pytest.raises(RuntimeError, match="needs an open dual level"):
        fwad.make_dual(t([1.0]), t([1.0]))
    with pytest.raises(RuntimeError, match="not open"):
        with fwad.dual_level():
            fwad.unpack_dual(y, level=level)


def test_exiting_clears_the_levels_tangents():
    with fwad.dual_level() as level:
        x = fwad.make_dual(t([2.0]), t([1.0]))
        y = mg.sin(x)
        assert fwad.unpack_dual(y).tangent is not None
    with fwad.dual_level() as again:
        assert fwad.unpack_dual(x, level=again).tangent is None
        assert fwad.unpack_dual(y, level=again).tangent is None
        # ops on the old duals propagate nothing at the new level
        assert fwad.unpack_dual(y * x).tangent is None
    assert level != again


def test_levels_exit_innermost_first():
    outer = fwad.enter_dual_level()
    inner = fwad.enter_dual_level()
    try:
        with pytest.raises(RuntimeError, match="innermost-first"):
            fwad.exit_dual_level(outer)
    finally:
        fwad.exit_dual_level(inner)
        fwad.exit_dual_level(outer)
    with pytest.raises(RuntimeError, match="needs an open dual level"):
        fwad.make_dual(t([1.0]), t([1.0]))


def test_dual_level_closes_on_exception():
    with pytest.raises(KeyError):
        with fwad.dual_level():
            raise KeyError("x")
    with pytest.raises(RuntimeError, match="needs an open dual level"):
        fwad.make_dual(t([1.0]), t([1.0]))


def test_make_dual_is_differentiable_in_reverse_mode():
    p = mg.tensor([1.0, 2.0], requires_grad=True)
    with fwad.dual_level():
        x = fwad.make_dual(p, t([1.0, 1.0]))
        y = (x * x).sum()
    np.testing.assert_allclose(grad(y, p).data, [2.0, 4.0])


# --- nested levels ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f, d2f",
    [(mg.sin, lambda x: -np.sin(x)), (mg.exp, np.exp), (mg.tanh, None)],
    ids=["sin", "exp", "tanh"],
)
def test_forward_over_forward_second_derivative(f, d2f):
    if d2f is None:  # tanh'' = -2 tanh (1 - tanh**2)

        def d2f(x):
            return -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)

    got = second_derivative(f, X0, U, V)
    np.testing.assert_allclose(got.data, d2f(X0) * U * V, rtol=1e-12)


def test_forward_over_forward_mixed_partial_of_two_inputs():
    x0, y0 = 0.7, -1.3
    # f = sin(x * y): d2f/dxdy = cos(xy) - xy sin(xy)
    with fwad.dual_level() as outer, fwad.dual_level() as inner:
        x = fwad.make_dual(t(x0), t(1.0), level=outer)
        y = fwad.make_dual(t(y0), t(1.0), level=inner)
        dfdx = fwad.unpack_dual(mg.sin(x * y), level=outer).tangent
        np.testing.assert_allclose(dfdx.item(), y0 * np.cos(x0 * y0))
        mixed = fwad.unpack_dual(dfdx, level=inner).tangent
    np.testing.assert_allclose(mixed.item(), np.cos(x0 * y0) - x0 * y0 * np.sin(x0 * y0))


def test_third_derivative_with_three_levels():
    with fwad.dual_level() as a, fwad.dual_level() as b, fwad.dual_level() as c:
        x = fwad.make_dual(t(X0), t(np.ones(3)), level=c)
        x = fwad.make_dual(x, t(np.ones(3)), level=b)
        x = fwad.make_dual(x, t(np.ones(3)), level=a)
        d = fwad.unpack_dual(mg.sin(x), level=a).tangent
        d = fwad.unpack_dual(d, level=b).tangent
        d = fwad.unpack_dual(d, level=c).tangent
    np.testing.assert_allclose(d.data, -np.cos(X0), rtol=1e-12)


def test_no_perturbation_confusion():
    # d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1; confusing the two perturbations gives 2.
    with fwad.dual_level() as outer:
        x = fwad.make_dual(t(2.0), t(1.0), level=outer)
        with fwad.dual_level() as inner:
            y = fwad.make_dual(t(5.0), t(1.0), level=inner)
            dy = fwad.unpack_dual(x + y, level=inner).tangent
        result = fwad.unpack_dual(x * dy, level=outer).tangent
    assert result.item() == 1.0


def test_tangents_of_two_levels_are_kept_apart():
    with fwad.dual_level() as outer, fwad.dual_level() as inner:
        x = fwad.make_dual(t([1.0, 2.0]), t([10.0, 20.0]), level=outer)
        x = fwad.make_dual(x, t([3.0, 4.0]), level=inner)
        y = x * 2.0
        np.testing.assert_array_equal(fwad.unpack_dual(y, level=outer).tangent.data, [20.0, 40.0])
        np.testing.assert_array_equal(fwad.unpack_dual(y, level=inner).tangent.data, [6.0, 8.0])
        primal_outer = fwad.unpack_dual(y, level=outer).primal
        np.testing.assert_array_equal(
            fwad.unpack_dual(primal_outer, level=inner).tangent.data, [6.0, 8.0]
        )
        assert fwad.unpack_dual(primal_outer, level=outer).tangent is None


# --- forward and reverse together -------------------------------------------------------------


A = np.array([[2.0, 0.5, -1.0], [0.3, 1.0, 0.2], [0.0, -0.7, 3.0]])


def f_known(x):
    """0.5 x.A.x + sum(tanh(x)) + sum(exp(x))."""
    return 0.5 * (x @ (t(A) @ x)) + mg.tanh(x).sum() + mg.exp(x).sum()


def hvp_known(x0, v):
    th = np.tanh(x0)
    hessian = 0.5 * (A + A.T) + np.diag(-2 * th * (1 - th**2) + np.exp(x0))
    return hessian @ v


@pytest.mark.parametrize("create_graph", [False, True])
def test_forward_over_reverse_hessian_vector_product(create_graph):
    # x reaches f_known along several edges: the engine's sum of their gradients must carry
    # the tangents too.
    p = mg.tensor(X0, requires_grad=True)
    with fwad.dual_level():
        x = fwad.make_dual(p, t(V))
        (g,) = grad(f_known(x), [x], create_graph=create_graph)
        hv = fwad.unpack_dual(g).tangent
    assert hv is not None
    np.testing.assert_allclose(hv.data, hvp_known(X0, V), rtol=1e-12)


def test_forward_over_reverse_into_leaf_grad():
    p = mg.tensor(X0, requires_grad=True)
    with fwad.dual_level():
        x = fwad.make_dual(p, t(V))
        (x * x).sum().backward(retain_graph=True)  # p.grad = 2x, its tangent 2v
        (x * 3.0).sum().backward()  # accumulated: 2x + 3, tangent still 2v
        np.testing.assert_allclose(p.grad.data, 2 * X0 + 3.0)
        tangent = fwad.unpack_dual(p.grad).tangent
        assert tangent is not None
        np.testing.assert_allclose(tangent.data, 2 * V)
    with fwad.dual_level():
        assert fwad.unpack_dual(p.grad).tangent is None  # exiting the level cleared it


def test_reverse_over_forward_hessian_vector_product():
    p = mg.tensor(X0, requires_grad=True)
    with fwad.dual_level():
        x = fwad.make_dual(p, t(V))
        directional = fwad.unpack_dual(f_known(x)).tangent  # grad f . v, a graph in p
    np.testing.assert_allclose(directional.item(), jvp(f_known, X0, V).item(), rtol=1e-12)
    (hv,) = grad(directional, [p])
    np.testing.assert_allclose(hv.data, hvp_known(X0, V), rtol=1e-12)


def test_reverse_over_reverse_agrees():
    p = mg.tensor(X0, requires_grad=True)
    (g,) = grad(f_known(p), [p], create_graph=True)
    (hv,) = grad((g * t(V)).sum(), [p])
    np.testing.assert_allclose(hv.data, hvp_known(X0, V), rtol=1e-12)
