"""User-defined ops: ``mpigrad.autograd.Function`` with forward, backward and jvp, and the ctx."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import BackwardError, forward_ad, grad
from mpigrad.testing import check_grads


def leaf(values):
    return mg.tensor(values, dtype=np.float64, requires_grad=True)


class MyExp(mg.Function):
    """out = exp(x); grad_x = grad * out; tangent = t * out"""

    @staticmethod
    def forward(ctx, x):
        out = mg.tensor(np.exp(x.data))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out

    @staticmethod
    def jvp(ctx, t):
        (out,) = ctx.outputs
        return t * out


class MySinScaled(mg.Function):
    """out = k * sin(x * y); k is a float.  Rules written with mpigrad ops (differentiable)."""

    @staticmethod
    def forward(ctx, x, y, k):
        ctx.save_for_backward(x, y)
        ctx.k = k
        return k * np.sin(x.data * y.data)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        c = ctx.k * mg.cos(x * y) * g
        return c * y, c * x, None

    @staticmethod
    def jvp(ctx, tx, ty, tk):
        assert tk is None
        x, y, k = ctx.inputs
        c = k * mg.cos(x * y)
        out = None
        if tx is not None:
            out = c * y * tx
        if ty is not None:
            out = c * x * ty if out is None else out + c * x * ty
        return out


def test_function_is_exported_twice():
    assert mg.Function is mg.autograd.Function


def test_custom_function_forward_backward_and_node():
    x = leaf([0.0, 1.0])
    y = MyExp.apply(x)
    assert isinstance(y, mg.Tensor) and y.requires_grad
    assert y.grad_fn.name() == "MyExpBackward"
    assert y.grad_fn.next_functions[0][0].variable is x
    np.testing.assert_allclose(y.data, np.exp([0.0, 1.0]))
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, np.exp([0.0, 1.0]))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_check_grads_on_custom_functions(order):
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal(3))
    y = mg.tensor(rng.standard_normal(3))
    check_grads(MyExp.apply, [x], order=order)
    check_grads(lambda a, b: MySinScaled.apply(a, b, 1.5), [x, y], order=order)


def test_check_grads_catches_wrong_rules():
    class WrongBackward(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data**2

        @staticmethod
        def backward(ctx, g):
            return g * 3.0

        @staticmethod
        def jvp(ctx, t):
            return 2.0 * ctx.inputs[0] * t

    class WrongJvp(mg.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.data**2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2.0 * x * g

        @staticmethod
        def jvp(ctx, t):
            return t

    x = mg.tensor([0.3, -0.7])
    with pytest.raises(AssertionError, match="reverse mode"):
        check_grads(WrongBackward.apply, [x])
    check_grads(WrongBackward.apply, [x], modes=("fwd",))
    with pytest.raises(AssertionError, match="forward mode"):
        check_grads(WrongJvp.apply, [x])
    check_grads(WrongJvp.apply, [x], modes=("rev",))


def test_check_grads_names_the_order_that_disagrees():
    class NumpyBackward(mg.Function):
        """A right first derivative, computed in numpy: not differentiable again."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.data**3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return mg.tensor(3.0 * x.data**2) * g

    x = mg.tensor([0.3, -0.7])
    check_grads(NumpyBackward.apply, [x], modes=("rev",))
    with pytest.raises(AssertionError, match="reverse mode, derivative of order 2: "):
        check_grads(NumpyBackward.apply, [x], modes=("rev",), order=2)


def test_save_for_backward_and_saved_tensors():
    seen = {}

    class Mul3(mg.Function):
        @staticmethod
        def forward(ctx, x, y):
            out = mg.tensor(x.data * y.data)
            ctx.save_for_backward(x, y, out)
            return out

        @staticmethod
        def backward(ctx, g):
            x, y, out = ctx.saved_tensors
            seen["saved"] = (x.data.copy(), y.data.copy(), out.data.copy())
            return g * y, g * x

    x, y = leaf([2.0, 3.0]), leaf([5.0, 7.0])
    Mul3.apply(x, y).sum().backward()
    np.testing.assert_array_equal(seen["saved"][0], [2.0, 3.0])
    np.testing.assert_array_equal(seen["saved"][1], [5.0, 7.0])
    np.testing.assert_array_equal(seen["saved"][2], [10.0, 21.0])
    np.testing.assert_array_equal(x.grad.data, [5.0, 7.0])
    np.testing.assert_array_equal(y.grad.data, [2.0, 3.0])


def test_needs_input_grad():
    seen = []

    class Affine(mg.Function):
        @staticmethod
        def forward(ctx, x, w, b, scale):
            ctx.save_for_backward(x, w)
            return scale * (x.data * w.data + b.data)

        @staticmethod
        def backward(ctx, g):
            seen.append(ctx.needs_input_grad)
            x, w = ctx.saved_tensors
            need_x, need_w, need_b, _ = ctx.needs_input_grad
            return (
                g * w if need_x else None,
                g * x if need_w else None,
                g if need_b else None,
                None,
            )

    x, w, b = leaf([1.0, 2.0]), mg.tensor([3.0, 4.0]), leaf([0.5, 0.5])
    Affine.apply(x, w, b, 2.0).sum().backward()
    assert seen == [(True, False, True, False)]
    np.testing.assert_array_equal(x.grad.data, [3.0, 4.0])
    np.testing.assert_array_equal(b.grad.data, [1.0, 1.0])
    assert w.grad is None


def test_mark_non_differentiable():
    class SortWithIndex(mg.Function):
        @staticmethod
        def forward(ctx, x):
            order = np.argsort(x.data)
            ctx.order = order
            values = mg.tensor(x.data[order])
            index = mg.tensor(order.astype(np.float64))  # float, but not differentiable
            ctx.mark_non_differentiable(index)
            return values, index

        @staticmethod
        def backward(ctx, g_values, g_index):
            out = np.zeros_like(g_values.data)
            out[ctx.order] = g_values.data
            return mg.tensor(out)

    x = leaf([3.0, 1.0, 2.0])
    values, index = SortWithIndex.apply(x)
    assert values.requires_grad and values.grad_fn.name() == "SortWithIndexBackward"
    assert not index.requires_grad and index.grad_fn is None
    np.testing.assert_array_equal(index.data, [1.0, 2.0, 0.0])
    (values * mg.tensor([1.0, 10.0, 100.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [100.0, 1.0, 10.0])


def test_multiple_outputs_one_unused_gets_zeros():
    seen = []

    class SinCos(mg.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return np.sin(x.data), np.cos(x.data)

        @staticmethod
        def backward(ctx, g_sin, g_cos):
            seen.append((g_sin, g_cos))
            (x,) = ctx.saved_tensors
            return g_sin * mg.cos(x) - g_cos * mg.sin(x)

    x0 = np.array([0.3, 1.2])
    x = leaf(x0)
    s, c = SinCos.apply(x)
    assert s.grad_fn is c.grad_fn and s.grad_fn.name() == "SinCosBackward"
    (s * 2.0).sum().backward()
    ((g_sin, g_cos),) = seen
    np.testing.assert_array_equal(g_sin.data, [2.0, 2.0])
    assert g_cos is not None and g_cos.shape == (2,)
    np.testing.assert_array_equal(g_cos.data, [0.0, 0.0])
    np.testing.assert_allclose(x.grad.data, 2.0 * np.cos(x0))
    s, c = SinCos.apply(x)
    gx = grad((s + c).sum(), x)
    np.testing.assert_allclose(gx.data, np.cos(x0) - np.sin(x0))


def test_set_materialize_grads_false_passes_none():
    seen = []

    class Two(mg.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)
            return x.data * 2.0, x.data * 3.0

        @staticmethod
        def backward(ctx, g_a, g_b):
            seen.append((g_a, g_b))
            return g_a * 2.0

    x = leaf([1.0])
    a, _ = Two.apply(x)
    a.sum().backward()
    assert seen[0][1] is None
    np.testing.assert_array_equal(x.grad.data, [2.0])


def test_non_tensor_arguments():
    x, y = leaf([0.5, 1.0]), leaf([2.0, -1.0])
    out = MySinScaled.apply(x, y, 3.0)
    np.testing.assert_allclose(out.data, 3.0 * np.sin([1.0, -1.0]))
    assert out.grad_fn.next_functions[2] == (None, 0)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.data, 3.0 * np.cos([1.0, -1.0]) * [2.0, -1.0])
    np.testing.assert_allclose(y.grad.data, 3.0 * np.cos([1.0, -1.0]) * [0.5, 1.0])


def test_forward_returning_its_input_makes_a_new_output():
    class Identity(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 2.0

    x = leaf([1.0, 2.0])
    y = Identity.apply(x)
    assert y is not x and x.is_leaf and not y.is_leaf
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2.0, 2.0])


def test_missing_backward_is_an_error():
    class NoBackward(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2.0

    x = leaf([1.0])
    y = NoBackward.apply(x)
    with pytest.raises(BackwardError, match="NoBackward does not define backward"):
        y.sum().backward()


def test_missing_jvp_is_an_error_in_forward_mode_only():
    class NoJvp(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2.0

        @staticmethod
        def backward(ctx, g):
            return g * 2.0

    x = leaf([1.0])
    NoJvp.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2.0])
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(mg.tensor([1.0]), mg.tensor([1.0]))
        with pytest.raises(NotImplementedError, match="NoJvp does not define jvp"):
            NoJvp.apply(dual)
        # Without a tangent among its inputs, the rule is not needed.
        np.testing.assert_array_equal(NoJvp.apply(mg.tensor([3.0])).data, [6.0])


def test_wrong_number_of_gradients_names_the_node():
    class TooFew(mg.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x.data * y.data

        @staticmethod
        def backward(ctx, g):
            return g

    x, y = leaf([1.0]), leaf([2.0])
    with pytest.raises(BackwardError, match=r"TooFewBackward.*returned 1 gradients, expected 2"):
        TooFew.apply(x, y).sum().backward()

    class TooMany(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2.0

        @staticmethod
        def backward(ctx, g):
            return g, g

    with pytest.raises(BackwardError, match=r"TooManyBackward.*returned 2 gradients, expected 1"):
        TooMany.apply(x).sum().backward()


def test_backward_with_mpigrad_ops_supports_double_backward():
    x0 = np.array([0.4, -1.1])
    x = leaf(x0)
    y = MySinScaled.apply(x, mg.tensor([2.0, 2.0]), 1.0).sum()  # sin(2x)
    (g,) = grad(y, [x], create_graph=True)
    np.testing.assert_allclose(g.data, 2.0 * np.cos(2.0 * x0))
    (g2,) = grad(g.sum(), [x])
    np.testing.assert_allclose(g2.data, -4.0 * np.sin(2.0 * x0))


def test_jvp_gets_one_tangent_per_argument_and_the_primals():
    seen = {}

    class Probe(mg.Function):
        @staticmethod
        def forward(ctx, x, y, k):
            return x.data * y.data * k

        @staticmethod
        def backward(ctx, g):
            raise AssertionError("not used")

        @staticmethod
        def jvp(ctx, tx, ty, tk):
            seen["tangents"] = (tx, ty, tk)
            seen["inputs"] = ctx.inputs
            x, y, k = ctx.inputs
            return tx * y * k

    with forward_ad.dual_level():
        x = forward_ad.make_dual(mg.tensor([1.0, 2.0]), mg.tensor([0.5, 0.25]))
        y = mg.tensor([3.0, 4.0])
        out = Probe.apply(x, y, 10.0)
        tangent = forward_ad.unpack_dual(out).tangent
    tx, ty, tk = seen["tangents"]
    np.testing.assert_array_equal(tx.data, [0.5, 0.25])
    assert ty is None and tk is None
    px, py, pk = seen["inputs"]
    np.testing.assert_array_equal(px.data, [1.0, 2.0])
    assert py is y and pk == 10.0
    np.testing.assert_allclose(tangent.data, [15.0, 10.0])
    np.testing.assert_allclose(out.data, [30.0, 80.0])


def test_custom_jvp_matches_reverse_mode():
    rng = np.random.default_rng(3)
    x0, y0, u, v = rng.standard_normal((4, 3))
    with forward_ad.dual_level():
        x = forward_ad.make_dual(mg.tensor(x0), mg.tensor(u))
        y = forward_ad.make_dual(mg.tensor(y0), mg.tensor(v))
        tangent = forward_ad.unpack_dual(MySinScaled.apply(x, y, 2.0)).tangent
    c = 2.0 * np.cos(x0 * y0)
    np.testing.assert_allclose(tangent.data, c * (y0 * u + x0 * v))


def test_function_under_no_grad_records_nothing():
    x = leaf([1.0])
    with mg.no_grad():
        y = MyExp.apply(x)
    assert not y.requires_grad and y.grad_fn is None


def test_non_differentiable_output_gets_no_tangent():
    class Pair(mg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            a, b = mg.Tensor(x.data * 2), mg.Tensor(x.data * 3)
            ctx.mark_non_differentiable(b)
            return a, b

        @staticmethod
        def jvp(ctx, t):
            return t * 2, t * 3

    with forward_ad.dual_level():
        a, b = Pair.apply(forward_ad.make_dual(mg.tensor([1.0]), mg.tensor([1.0])))
        assert forward_ad.unpack_dual(b).tangent is None
        np.testing.assert_array_equal(forward_ad.unpack_dual(a).tangent.data, [2.0])


def test_a_subclass_of_a_built_in_op_runs_its_own_rules():
    # Built-in ops take a short record path bound to their own class (Note [short record path]);
    # a user's subclass must get the general one, with its own forward and backward.
    from mpigrad.ops.elementwise import Mul

    class DoubledMul(Mul):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return 2 * x.data * y.data

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return 2 * g * y, 2 * g * x

    x, y = leaf([1.0, 2.0]), leaf([3.0, -1.0])
    out = DoubledMul.apply(x, y)
    assert type(out.grad_fn).__name__ == "DoubledMulBackward"
    np.testing.assert_allclose(out.data, [6.0, -4.0])
    out.sum().backward()
    np.testing.assert_allclose(x.grad.data, [6.0, -2.0])
    np.testing.assert_allclose(y.grad.data, [2.0, 4.0])


def _probe(declared, module):
    """A Function that reports the grad mode its forward ran in and the type its backward got."""
    seen = {}

    class Probe(mg.Function):
        __module__ = module  # what the class statement sees, as if Probe were defined there
        takes_arrays = declared

        @staticmethod
        def forward(ctx, x):
            seen["grad mode in forward"] = mg.is_grad_enabled()
            return x.data * 3

        @staticmethod
        def backward(ctx, g):
            seen["gradient type"] = type(g)
            return g * 3

    x = leaf([1.0, 2.0])
    Probe.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0])
    return Probe, seen


@pytest.mark.parametrize("module", ["mpigrad.ops.user", __name__])
def test_the_built_in_contract_is_declared_by_the_class_not_its_module(module):
    # Function.takes_arrays: an undeclared op gets a user's treatment (forward with grad mode
    # off, Tensors in backward) wherever it lives; a declared one gets the built-in treatment.
    Probe, seen = _probe(False, module)
    assert not Probe.takes_arrays and not Probe._backward_cls.takes_arrays
    assert seen == {"grad mode in forward": False, "gradient type": mg.Tensor}
    Probe, seen = _probe(True, module)
    assert Probe.takes_arrays and Probe._backward_cls.takes_arrays
    assert seen == {"grad mode in forward": True, "gradient type": np.ndarray}


def test_the_built_in_contract_is_not_inherited():
    from mpigrad.ops.elementwise import Mul, Sin

    assert Sin.takes_arrays and Mul.takes_arrays

    class MySin(Sin):
        pass

    assert not MySin.takes_arrays and not MySin._backward_cls.takes_arrays


def test_declared_rules_serve_users_functions():
    # Note [rules written once]: linear and elementwise write jvp (and backward) for any
    # Function, one with constant arguments and no takes_arrays included.
    from mpigrad.function import elementwise, linear

    @elementwise(uses="out")
    class ScaledExp(mg.Function):
        """out = exp(k x); grad_x = grad * k * out"""

        @staticmethod
        def forward(ctx, x, k):
            ctx.k = k
            out = mg.Tensor(np.exp(k * x.data))
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def derivative(ctx, g, out):
            return g * out * ctx.k

    @linear(fixed=(1,))
    class Tile(mg.Function):
        """out = x repeated n times; grad_x = the n pieces of grad summed"""

        @staticmethod
        def forward(ctx, x, n):
            ctx.n = n
            return np.tile(x.data, n)

        @staticmethod
        def backward(ctx, g):
            return g.reshape(ctx.n, -1).sum(0), None

    x = mg.tensor(np.random.default_rng(0).standard_normal(3))
    check_grads(lambda x: Tile.apply(ScaledExp.apply(x, 0.5), 2), [x], order=2)
    with pytest.raises(ValueError, match='elementwise: uses must be "x" or "out", got \'y\''):
        elementwise(uses="y")


def test_every_built_in_op_declares_the_built_in_contract():
    # An op of mpigrad.ops without takes_arrays runs as a user's Function: its gradients enter
    # read-only and are copied into .grad (nn.Linear's weight gradient once was: a copy per
    # step of every weight).  The families' bases (_Select, _Extreme) are not ops.
    import importlib
    import inspect
    import pkgutil

    import mpigrad.ops

    undeclared = [
        f"{module.name}.{name}"
        for module in pkgutil.iter_modules(mpigrad.ops.__path__, "mpigrad.ops.")
        for name, cls in vars(importlib.import_module(module.name)).items()
        if inspect.isclass(cls)
        and issubclass(cls, mg.autograd.Function)
        and cls.__module__ == module.name
        and not name.startswith("_")
        and not cls.takes_arrays
    ]
    assert not undeclared, undeclared
