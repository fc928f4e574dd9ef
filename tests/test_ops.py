"""The op tests, driven by the table in tests/op_cases.py.

1. Every op in ``mpigrad.ops.__all__`` has a case, and its derivatives (reverse and forward mode,
   up to the case's order) match finite differences; every gradient has its input's shape and
   dtype.
2. Hypothesis draws shapes (0-d and size-1 axes included) for broadcasting binary ops, unary ops,
   reductions over random axes and the movement ops.
3. Semantics beyond derivatives: dtype promotion, ints and bools as data, torch's conventions
   where they differ from numpy's, tie-splitting, losses against hand-written numpy.
4. Bad inputs raise errors whose words are asserted.
"""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, broadcastable_shapes, mutually_broadcastable_shapes
from op_cases import CASES, apart, distinct, normal, outside, positive, spaced_pair

import mpigrad as mg
from mpigrad import Tensor
from mpigrad.autograd import forward_ad
from mpigrad.autograd import grad as autograd_grad
from mpigrad.ops.movement import broadcast_view
from mpigrad.testing import check_grads, numerical_jvp

HYPOTHESIS = settings(max_examples=100, deadline=None)


def _seed(text):
    return zlib.crc32(text.encode())


def _leaves(args):
    """The args with floating-point Tensors replaced by fresh leaves that require grad."""
    return [
        Tensor(a.data, requires_grad=True) if isinstance(a, Tensor) and a.dtype.kind == "f" else a
        for a in args
    ]


def _grads(out, inputs):
    """Gradients of ``sum(out * w)`` for a fixed random ``w``, one per input (None if unused)."""
    w = Tensor(np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype))
    return autograd_grad(out, inputs, w, allow_unused=True)


def _tangent(fn, args, tangents):
    """Forward-mode derivative of ``fn`` at ``args`` along ``tangents`` (None: no tangent)."""
    with forward_ad.dual_level():
        duals = [
            a if t is None else forward_ad.make_dual(a, Tensor(t)) for a, t in zip(args, tangents)
        ]
        return forward_ad.unpack_dual(fn(*duals)).tangent


# --- 1. the table ---------------------------------------------------------------------------


def test_every_op_has_a_case():
    missing = set(mg.ops.__all__) - {case.name for case in CASES}
    assert not missing, f"ops without a case in tests/op_cases.py: {sorted(missing)}"


def test_every_case_names_an_op():
    unknown = {case.name for case in CASES} - set(mg.ops.__all__)
    assert not unknown, f"cases for names not in mpigrad.ops.__all__: {sorted(unknown)}"
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "two cases share an id"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_derivatives_match_finite_differences(case):
    """Reverse and forward mode at every order up to ``case.order`` (order 2 and 3 check the
    derivatives of the derivatives: create_graph and forward-over-reverse)."""
    rng = np.random.default_rng(_seed(case.id))
    check_grads(
        case.fn, case.inputs(rng), order=case.order, seed=_seed(case.id) % 1000, **case.tolerances
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradients_have_input_shapes_and_dtypes(case):
    """check_grads cannot see a gradient left in the broadcast shape (its inner product with a
    direction is the same), so the shapes are checked here."""
    args = _leaves(case.inputs(np.random.default_rng(_seed(case.id))))
    inputs = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
    for x, g in zip(inputs, _grads(case.fn(*args), inputs)):
        assert g is not None, f"{case.id}: an input got no gradient"
        assert (g.shape, g.dtype) == (x.shape, x.dtype)


def _jvp_along(fn, directions):
    """``x -> fn'(x) directions``, computed in forward mode at a dual level of its own."""

    def jvp_fn(*xs):
        tangent = _tangent(fn, xs, directions)
        return tangent if tangent is not None else Tensor(np.zeros(fn(*xs).shape))

    return jvp_fn


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_jvp_rules_are_differentiable(case):
    """The jvp rules are themselves differentiable: reverse over forward (check_grads on a
    function that computes a jvp), and forward over forward in the nesting forward_ad documents
    (the outer level's tangent u is applied first; its inner tangent is f''(x)[u, v])."""
    rng = np.random.default_rng(_seed(case.id) + 1)
    args = case.inputs(rng)
    free = [isinstance(a, Tensor) and a.dtype.kind == "f" for a in args]
    u = [rng.standard_normal(a.shape) if f else None for a, f in zip(args, free)]
    v = [rng.standard_normal(a.shape) if f else None for a, f in zip(args, free)]
    tolerances = {"rtol": 1e-5, "atol": 1e-6, **case.tolerances}
    eps = tolerances.pop("eps", 1e-6)
    check_grads(_jvp_along(case.fn, u), args, modes=("rev",), eps=eps, **tolerances)

    with forward_ad.dual_level() as outer, forward_ad.dual_level() as inner:
        duals = [
            a
            if d is None
            else forward_ad.make_dual(
                forward_ad.make_dual(a, Tensor(e), level=inner), Tensor(d), level=outer
            )
            for a, d, e in zip(args, u, v)
        ]
        first = forward_ad.unpack_dual(case.fn(*duals), level=outer).tangent
        second = None if first is None else forward_ad.unpack_dual(first, level=inner).tangent
    want = numerical_jvp(_jvp_along(case.fn, u), args, v, eps)
    got = np.zeros_like(want) if second is None else second.data
    np.testing.assert_allclose(got, want, **tolerances)


def test_check_grads_catches_a_wrong_derivative():
    """The table is only as good as check_grads: a Function with a wrong rule must fail it."""

    class BadSquare(mg.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.data**2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x  # should be 2 * x

        @staticmethod
        def jvp(ctx, t):
            return t * ctx.inputs[0] * 2

    x = Tensor(np.random.default_rng(0).standard_normal(4))
    with pytest.raises(AssertionError, match="reverse mode"):
        check_grads(BadSquare.apply, [x])
    check_grads(BadSquare.apply, [x], modes=("fwd",))


# --- 2. shapes drawn by hypothesis ----------------------------------------------------------

BINARY = {
    "add": (mg.add, np.add),
    "sub": (mg.sub, np.subtract),
    "mul": (mg.mul, np.multiply),
    "div": (mg.div, np.divide),
    "pow": (mg.pow, np.power),
    "maximum": (mg.maximum, np.maximum),
    "minimum": (mg.minimum, np.minimum),
}


def _binary_inputs(op, shape_x, shape_y, rng):
    if op in ("maximum", "minimum"):
        return list(spaced_pair(rng, shape_x, shape_y))
    x = positive(rng, *shape_x) if op == "pow" else normal(rng, *shape_x)
    y = positive(rng, *shape_y) if op == "div" else normal(rng, *shape_y)
    return [x, y]


def _summed_to(w, shape):
    """numpy reference for undoing broadcasting: ``w`` summed down to ``shape``."""
    w = w.sum(axis=tuple(range(w.ndim - len(shape))))
    return w.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


@HYPOTHESIS
@given(
    op=st.sampled_from(sorted(BINARY)),
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    seed=st.integers(0, 2**16),
)
def test_binary_ops_broadcast(op, shapes, seed):
    fn, reference = BINARY[op]
    x, y = _binary_inputs(op, *shapes.input_shapes, np.random.default_rng(seed))
    out = fn(x, y)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.data, reference(x.data, y.data), rtol=1e-12)
    args = _leaves([x, y])
    for a, g in zip(args, _grads(fn(*args), args)):
        assert g.shape == a.shape
    check_grads(fn, [x, y], order=2, seed=seed)


def test_add_gradient_is_summed_over_broadcast_axes():
    x = Tensor(np.ones((3, 1)), requires_grad=True)
    y = Tensor(np.ones(4), requires_grad=True)
    w = np.arange(12.0).reshape(3, 4)
    (x + y).backward(Tensor(w))
    np.testing.assert_array_equal(x.grad.data, w.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(y.grad.data, w.sum(axis=0))


@HYPOTHESIS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3),
    seed=st.integers(0, 2**16),
)
def test_where_broadcasts(shapes, seed):
    rng = np.random.default_rng(seed)
    shape_c, shape_x, shape_y = shapes.input_shapes
    cond = rng.random(shape_c) < 0.5
    x, y = normal(rng, *shape_x), normal(rng, *shape_y)
    out = mg.where(cond, x, y)
    np.testing.assert_array_equal(out.data, np.where(cond, x.data, y.data))
    check_grads(lambda x, y: mg.where(cond, x * y, y), [x, y], order=2, seed=seed)


UNARY = {  # op, input generator, numpy reference
    "neg": (mg.neg, normal, np.negative),
    "exp": (mg.exp, normal, np.exp),
    "log": (mg.log, positive, np.log),
    "sqrt": (mg.sqrt, positive, np.sqrt),
    "sin": (mg.sin, normal, np.sin),
    "cos": (mg.cos, normal, np.cos),
    "tanh": (mg.tanh, normal, np.tanh),
    "sigmoid": (mg.sigmoid, normal, lambda a: 1 / (1 + np.exp(-a))),
    "abs": (mg.abs, apart, np.abs),
    "relu": (mg.relu, apart, lambda a: np.maximum(a, 0)),
    "alias": (mg.alias, normal, lambda a: a),
    "clamp": (
        lambda x: mg.clamp(x, -0.5, 0.5),
        lambda r, *shape: outside(r, -0.5, 0.5, *shape),
        lambda a: np.clip(a, -0.5, 0.5),
    ),
}


@HYPOTHESIS
@given(
    op=st.sampled_from(sorted(UNARY)),
    shape=array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4),
    seed=st.integers(0, 2**16),
)
def test_unary_ops_any_shape(op, shape, seed):
    fn, inputs, reference = UNARY[op]
    x = inputs(np.random.default_rng(seed), *shape)
    out = fn(x)
    assert out.shape == shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.data, reference(x.data), rtol=1e-14)
    check_grads(lambda x: fn(x) * x, [x], order=2, seed=seed)


REDUCTIONS = {
    "sum": (mg.sum, np.sum),
    "mean": (mg.mean, np.mean),
    "max": (mg.max, np.max),
    "min": (mg.min, np.min),
    "logsumexp": (
        mg.logsumexp,
        lambda a, axis, keepdims: np.log(np.sum(np.exp(a), axis, keepdims=keepdims)),
    ),
}


@st.composite
def _shape_and_axis(draw, min_dims=0):
    """A shape and an axis argument for it: None, an int (maybe negative) or a tuple."""
    shape = draw(array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=3))
    ndim = len(shape)
    axes = draw(st.lists(st.integers(0, max(ndim - 1, 0)), unique=True, max_size=ndim))
    flip = draw(st.booleans())
    axes = [a - ndim if flip else a for a in axes]  # negative axes mean the same
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none" or not axes:
        return shape, None if kind != "tuple" else tuple(axes)
    return shape, axes[0] if kind == "int" else tuple(axes)


@HYPOTHESIS
@given(
    op=st.sampled_from(sorted(REDUCTIONS)),
    shape_axis=_shape_and_axis(),
    keepdims=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_reductions_over_random_axes(op, shape_axis, keepdims, seed):
    (shape, axis), (fn, reference) = shape_axis, REDUCTIONS[op]
    rng = np.random.default_rng(seed)
    x = distinct(rng, *shape) if op in ("max", "min") else normal(rng, *shape)
    out = fn(x, axis=axis, keepdims=keepdims)
    want = reference(x.data, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(want) and out.dtype == x.dtype
    np.testing.assert_allclose(out.data, want, rtol=1e-12)
    check_grads(lambda x: fn(x * x, axis=axis, keepdims=keepdims), [x], order=2, seed=seed)


@HYPOTHESIS
@given(shape_axis=_shape_and_axis(min_dims=1), log=st.booleans(), seed=st.integers(0, 2**16))
def test_softmax_family_any_axis(shape_axis, log, seed):
    shape, axis = shape_axis
    axis = axis if isinstance(axis, int) else -1
    x = normal(np.random.default_rng(seed), *shape)
    fn = mg.log_softmax if log else mg.softmax
    shifted = np.exp(x.data - np.max(x.data, axis=axis, keepdims=True))
    want = shifted / shifted.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(fn(x, axis=axis).data, np.log(want) if log else want, rtol=1e-12)
    check_grads(lambda x: fn(x, axis=axis), [x], order=2, seed=seed)


@st.composite
def _reshape_targets(draw):
    """A shape and another with the same size: its axes permuted, some neighbours merged, some
    1s inserted and maybe one entry written as -1."""
    shape = draw(array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=3))
    target = list(draw(st.permutations(shape)))
    for _ in range(draw(st.integers(0, max(len(target) - 1, 0)))):
        i = draw(st.integers(0, len(target) - 2))
        target[i : i + 2] = [target[i] * target[i + 1]]
    for _ in range(draw(st.integers(0, 2))):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, tuple(target)


@HYPOTHESIS
@given(shapes=_reshape_targets(), seed=st.integers(0, 2**16))
def test_reshape_any_shape(shapes, seed):
    shape, target = shapes
    x = normal(np.random.default_rng(seed), *shape)
    np.testing.assert_array_equal(mg.reshape(x, target).data, x.data.reshape(target))
    check_grads(lambda x: mg.reshape(x, target) * mg.reshape(x, target), [x], order=2, seed=seed)


@HYPOTHESIS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_permute_any_order(data, seed):
    shape = data.draw(array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=3))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    x = normal(np.random.default_rng(seed), *shape)
    out = mg.permute(x, *axes)
    np.testing.assert_array_equal(out.data, np.transpose(x.data, axes))
    assert out.shape == tuple(shape[a] for a in axes)
    check_grads(lambda x: mg.permute(x, axes) * mg.permute(x, axes), [x], order=2, seed=seed)


@HYPOTHESIS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_broadcast_to_any_shape(data, seed):
    target = data.draw(array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=3))
    # broadcastable_shapes may put n > 1 where target has 1: keep only shapes that grow to target.
    shape = data.draw(
        broadcastable_shapes(target, min_dims=0, max_dims=len(target)).filter(
            lambda s: np.broadcast_shapes(s, target) == target
        )
    )
    x = normal(np.random.default_rng(seed), *shape)
    out = mg.broadcast_to(x, target)
    np.testing.assert_array_equal(out.data, np.broadcast_to(x.data, target))
    leaf = Tensor(x.data, requires_grad=True)
    w = np.random.default_rng(seed).standard_normal(target)
    (g,) = autograd_grad(mg.broadcast_to(leaf, target), [leaf], Tensor(w))
    assert g.shape == shape
    np.testing.assert_allclose(g.data, _summed_to(w, shape), rtol=1e-12)
    check_grads(lambda x: mg.broadcast_to(x * x, target), [x], order=2, seed=seed)


def _pad_widths(ndim):
    """Every form numpy's ``pad_width`` takes for a tensor of ``ndim`` dimensions."""
    width = st.integers(0, 3)
    pair = st.tuples(width, width)
    forms = [width, st.tuples(width), pair, st.tuples(pair)]
    if ndim:  # numpy takes no empty pad_width, not even for a 0-d array
        forms += [st.tuples(*[pair] * ndim), st.tuples(*[st.tuples(width)] * ndim)]
    return st.one_of(forms)


@HYPOTHESIS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_pad_any_width_matches_numpy(data, seed):
    shape = data.draw(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    pad_width = data.draw(_pad_widths(len(shape)))
    value = data.draw(st.sampled_from([0.0, -1.5]))
    x = normal(np.random.default_rng(seed), *shape)
    out = mg.pad(x, pad_width, value)
    np.testing.assert_array_equal(out.data, np.pad(x.data, pad_width, constant_values=value))
    check_grads(lambda x: mg.pad(x * x, pad_width, value), [x], order=2, seed=seed)


def test_pad_keeps_the_dtype_and_takes_arrays():
    out = mg.pad(np.ones(2, np.float32), 1, value=0.5)
    assert isinstance(out, Tensor) and out.dtype == np.float32 and not out.requires_grad
    np.testing.assert_array_equal(out.data, [0.5, 1, 1, 0.5])
    ints = mg.pad(np.arange(3), (1, 0), value=7)
    assert ints.dtype == np.arange(3).dtype
    np.testing.assert_array_equal(ints.data, [7, 0, 1, 2])


def test_pad_gradient_is_the_inner_block_and_tangent_pads_with_zeros():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    w = np.arange(20.0).reshape(4, 5)
    (g,) = autograd_grad(mg.pad(x, ((1, 1), (0, 2)), value=9.0), [x], Tensor(w))
    np.testing.assert_array_equal(g.data, w[1:3, 0:3])
    tangent = _tangent(lambda x: mg.pad(x, ((1, 1), (0, 2)), value=9.0), [x], [np.ones((2, 3))])
    np.testing.assert_array_equal(tangent.data, np.pad(np.ones((2, 3)), ((1, 1), (0, 2))))


@HYPOTHESIS
@given(data=st.data(), layout=st.sampled_from(["C", "F", "strided", "reversed"]))
def test_broadcast_view_matches_numpy(data, layout):
    """BroadcastTo's forward builds the view itself for contiguous inputs; any layout gives
    numpy's values, a read-only view of the same memory."""
    target = data.draw(array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
    shape = data.draw(
        broadcastable_shapes(target, min_dims=0, max_dims=len(target), min_side=0).filter(
            lambda s: np.broadcast_shapes(s, target) == target
        )
    )
    n = int(np.prod(shape))
    base = np.arange(2 * n, dtype=np.float64)
    if layout == "strided":
        a = base[::2].reshape(shape)
    elif layout == "reversed":
        a = base[::-2].reshape(shape)
    else:
        a = np.asarray(base[:n].reshape(shape), order=layout)
    out = broadcast_view(a, target)
    np.testing.assert_array_equal(out, np.broadcast_to(a, target))
    assert out.shape == target and out.dtype == a.dtype and not out.flags.writeable
    assert out.size == 0 or np.shares_memory(out, a)


def test_broadcast_view_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,4\)"):
        broadcast_view(np.ones(3), (2, 4))


# --- 3. semantics beyond derivatives --------------------------------------------------------


def test_gradients_meeting_at_a_0d_tensor_are_summed():
    """Three gradients reach one 0-d leaf (the engine adds the third in place)."""
    x = Tensor(2.0, requires_grad=True)
    (x + x + x * x).backward()
    assert x.grad.shape == () and x.grad.item() == 6.0


def test_float32_with_float64_promotes_and_each_gradient_keeps_its_input_dtype():
    x32 = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y64 = Tensor(np.array([3.0, 4.0]), requires_grad=True)
    out = x32 * y64
    assert out.dtype == np.float64
    out.sum().backward()
    assert x32.grad.dtype == np.float32 and y64.grad.dtype == np.float64
    np.testing.assert_array_equal(x32.grad.data, [3.0, 4.0])
    np.testing.assert_array_equal(y64.grad.data, [1.0, 2.0])


@pytest.mark.parametrize("shape", [(), (3,)], ids=["0d", "1d"])
@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x * 2.5,
        lambda x: 2.5 * x,
        lambda x: x + 1,
        lambda x: 3.0 / x,
        lambda x: x**2.0,
        lambda x: mg.mean(x),
        lambda x: mg.clamp(x, 0.0, 1.0),
        lambda x: mg.maximum(x, 0.5),
        lambda x: mg.where(x.data > 1, x, 0.0),
    ],
    ids=["mul", "rmul", "add-int", "rdiv", "pow", "mean", "clamp", "maximum", "where"],
)
def test_python_scalars_keep_float32(fn, shape):
    x = Tensor(np.full(shape, 1.5, np.float32), requires_grad=True)
    out = fn(x)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32


def test_astype_gradient_and_tangent_dtypes():
    x64 = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x64.astype(np.float32)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x64.grad.dtype == np.float64
    np.testing.assert_allclose(x64.grad.data, [2.0, 4.0])
    x32 = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    x32.astype(np.float64).sum().backward()
    assert x32.grad.dtype == np.float32
    tangent = _tangent(lambda x: x.astype(np.float32), [Tensor(np.ones(2))], [np.ones(2)])
    assert tangent.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_and_bool_tensors_cannot_require_grad(dtype):
    with pytest.raises(RuntimeError, match="only floating-point tensors can require gradients"):
        Tensor(np.zeros(3, dtype), requires_grad=True)
    with pytest.raises(RuntimeError, match="only floating-point"):
        Tensor(np.zeros(3, dtype)).requires_grad_()


def test_integer_results_are_data():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    mask = x > 0
    assert mask.dtype == bool and not mask.requires_grad
    as_int = x.astype(np.int64)
    assert as_int.dtype == np.int64 and not as_int.requires_grad


def test_indexing_with_an_int_tensor():
    x = Tensor(np.arange(10.0).reshape(5, 2), requires_grad=True)
    index = Tensor(np.array([3, 0, 3]))
    out = x[index]
    np.testing.assert_array_equal(out.data, x.data[[3, 0, 3]])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.data[:, 0], [1, 0, 0, 2, 0])


@pytest.mark.parametrize("as_tensor", [False, True], ids=["ndarray", "tensor"])
def test_indexing_with_a_bool_mask(as_tensor):
    data = np.arange(6.0).reshape(2, 3)
    mask = data % 2 == 0
    x = Tensor(data, requires_grad=True)
    out = x[Tensor(mask) if as_tensor else mask]
    np.testing.assert_array_equal(out.data, data[mask])
    (out * out).sum().backward()
    np.testing.assert_array_equal(x.grad.data, np.where(mask, 2 * data, 0))


def test_index_of_floats_is_rejected():
    x = Tensor(np.zeros(3))
    with pytest.raises(IndexError, match="indices must be integers or bool, got dtype float64"):
        x[np.array([0.0, 1.0])]


def test_where_takes_a_bool_tensor_mask_and_routes_gradients():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = Tensor(np.array([10.0, 20.0, 30.0]), requires_grad=True)
    out = mg.where(x > 0, x, y)
    np.testing.assert_array_equal(out.data, [1.0, 20.0, 3.0])
    out.backward(Tensor(np.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(x.grad.data, [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(y.grad.data, [0.0, 2.0, 0.0])


def test_getitem_repeated_indices_accumulate():
    x = Tensor(np.arange(5.0), requires_grad=True)
    x[[0, 0, 1]].sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2.0, 1.0, 0.0, 0.0, 0.0])
    tangent = _tangent(lambda x: x[[0, 0, 1]], [Tensor(np.arange(5.0))], [np.arange(5.0) + 1])
    np.testing.assert_array_equal(tangent.data, [1.0, 1.0, 2.0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_index_select(axis):
    data = np.arange(12.0).reshape(3, 4)
    index = np.array([2, 0, 2])
    x = Tensor(data, requires_grad=True)
    out = mg.index_select(x, axis, index)
    np.testing.assert_array_equal(out.data, np.take(data, index, axis=axis))
    out.sum().backward()
    counts = np.bincount(index, minlength=data.shape[axis])
    want = np.broadcast_to(counts[:, None] if axis == 0 else counts, data.shape)
    np.testing.assert_array_equal(x.grad.data, want)


def test_split_by_size_leaves_a_smaller_last_piece():
    x = Tensor(np.arange(10.0).reshape(2, 5), requires_grad=True)
    pieces = mg.split(x, 2, axis=1)
    assert [p.shape for p in pieces] == [(2, 2), (2, 2), (2, 1)]
    np.testing.assert_array_equal(pieces[2].data, x.data[:, 4:])
    (pieces[0].sum() + 3 * pieces[2].sum()).backward()
    np.testing.assert_array_equal(x.grad.data[0], [1, 1, 0, 0, 3])


def test_split_by_sections():
    x = Tensor(np.arange(12.0).reshape(6, 2))
    pieces = x.split([1, 0, 5])
    assert [p.shape for p in pieces] == [(1, 2), (0, 2), (5, 2)]
    np.testing.assert_array_equal(mg.cat(pieces, 0).data, x.data)
    assert [p.shape for p in mg.split(x, 6)] == [(6, 2)]
    assert [p.shape for p in mg.split(x, 4, axis=0)] == [(4, 2), (2, 2)]


def test_transpose_swaps_two_axes():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4))
    assert mg.transpose(x, 0, 2).shape == (4, 3, 2)
    np.testing.assert_array_equal(x.transpose(-1, 1).data, np.swapaxes(x.data, -1, 1))
    np.testing.assert_array_equal(x.T.data, x.data.T)


def test_permute_orders_axes_like_torch():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4))
    out = x.permute(2, 0, 1)
    assert out.shape == (4, 2, 3)
    np.testing.assert_array_equal(out.data, np.transpose(x.data, (2, 0, 1)))
    assert mg.permute(x, (-1, 0, 1)).shape == (4, 2, 3)


def test_squeeze_and_unsqueeze():
    x = Tensor(np.zeros((1, 3, 1)))
    assert x.squeeze(1).shape == (1, 3, 1)  # not of size 1: a no-op, as in torch
    assert x.squeeze(0).shape == (3, 1)
    assert x.squeeze(-1).shape == (1, 3)
    assert x.squeeze((0, 1)).shape == (3, 1)
    assert x.squeeze().shape == (3,)
    assert Tensor(np.float64(1.0)).squeeze(0).shape == ()
    assert x.unsqueeze(0).shape == (1, 1, 3, 1)
    assert x.unsqueeze(-1).shape == (1, 3, 1, 1)


def test_cat_and_stack_values():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.zeros((2, 3)))
    np.testing.assert_array_equal(mg.cat([a, b], axis=1).data, np.concatenate([a.data, b.data], 1))
    np.testing.assert_array_equal(mg.stack([a, b], axis=-1).data, np.stack([a.data, b.data], -1))


@pytest.mark.parametrize(
    "reduce, x, axis, want",
    [
        (mg.max, [1.0, 3.0, 3.0], None, [0.0, 0.5, 0.5]),
        (mg.min, [2.0, 1.0, 1.0, 1.0], None, [0.0, 1 / 3, 1 / 3, 1 / 3]),
        (mg.max, [[2.0, 2.0, 1.0], [0.0, 5.0, 4.0]], 1, [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]),
        (mg.min, [[2.0, 2.0], [2.0, 7.0]], 0, [[0.5, 1.0], [0.5, 0.0]]),
    ],
    ids=["max-all", "min-all", "max-axis", "min-axis"],
)
def test_max_min_ties_split_the_gradient_evenly(reduce, x, axis, want):
    leaf = Tensor(np.array(x), requires_grad=True)
    reduce(leaf, axis=axis).sum().backward()
    np.testing.assert_allclose(leaf.grad.data, want, rtol=1e-15)
    tangent = _tangent(
        lambda t: reduce(t, axis=axis).sum(), [Tensor(np.array(x))], [np.ones_like(want)]
    )
    assert tangent.item() == pytest.approx(np.sum(want))


@pytest.mark.parametrize("select", [mg.maximum, mg.minimum])
def test_maximum_minimum_ties_split_half_and_half(select):
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = Tensor(np.array([1.0, 0.0, 4.0]), requires_grad=True)
    select(x, y).sum().backward()
    x_wins = [1.0, 0.0] if select is mg.maximum else [0.0, 1.0]
    np.testing.assert_array_equal(x.grad.data, [0.5, x_wins[0], x_wins[1]])
    np.testing.assert_array_equal(y.grad.data, [0.5, x_wins[1], x_wins[0]])
    tangent = _tangent(select, [Tensor(x.data), Tensor(y.data)], [np.ones(3), 3 * np.ones(3)])
    assert tangent.data[0] == 2.0  # (1 + 3) / 2


def test_kink_conventions_match_torch():
    """At the kink: relu and abs give 0; clamp passes the gradient at its bounds."""
    x = Tensor(np.array([0.0, -1.0, 1.0, 2.0]), requires_grad=True)
    (mg.relu(x) + mg.abs(x) + mg.clamp(x, -1.0, 1.0)).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0.0 + 0.0 + 1.0, 0.0 - 1.0 + 1.0, 3.0, 2.0])


def _log_softmax_reference(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_cross_entropy_with_class_indices_matches_numpy():
    rng = np.random.default_rng(3)
    logits, targets = rng.standard_normal((4, 5)), np.array([4, 0, 0, 2])
    x = Tensor(logits, requires_grad=True)
    loss = mg.cross_entropy(x, Tensor(targets))
    assert loss.shape == ()
    want = -_log_softmax_reference(logits)[np.arange(4), targets].mean()
    assert loss.item() == pytest.approx(want, rel=1e-13)
    loss.backward()
    probs = np.exp(_log_softmax_reference(logits))
    np.testing.assert_allclose(x.grad.data, (probs - np.eye(5)[targets]) / 4, rtol=1e-12)


def test_cross_entropy_with_probabilities_matches_numpy():
    rng = np.random.default_rng(4)
    logits, probs = rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), 3)
    x = Tensor(logits, requires_grad=True)
    loss = mg.cross_entropy(x, probs)
    want = -(probs * _log_softmax_reference(logits)).sum(axis=1).mean()
    assert loss.item() == pytest.approx(want, rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(
        x.grad.data, (np.exp(_log_softmax_reference(logits)) - probs) / 3, rtol=1e-12
    )
    # one-hot probabilities are the same loss as class indices
    targets = np.array([1, 3, 0])
    assert mg.cross_entropy(x, np.eye(4)[targets]).item() == pytest.approx(
        mg.cross_entropy(x, targets).item(), rel=1e-14
    )


def test_mse_loss_is_the_mean_over_all_elements():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x = Tensor(a, requires_grad=True)
    loss = mg.mse_loss(x, Tensor(b))
    assert loss.item() == pytest.approx(np.mean((a - b) ** 2), rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(x.grad.data, 2 * (a - b) / a.size, rtol=1e-13)


def test_softmax_logsumexp_are_stable_for_large_inputs():
    x = Tensor(np.array([[1000.0, 1000.0], [-1000.0, 0.0]]))
    np.testing.assert_allclose(mg.softmax(x).data, [[0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(mg.logsumexp(x, axis=1).data, [1000.0 + np.log(2.0), 0.0])
    assert np.all(np.isfinite(mg.log_softmax(x).data))


def test_sum_to_sums_broadcast_axes():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(mg.sum_to(x, (3, 1)).data, x.data.sum(axis=(0, 2))[:, None])
    assert mg.sum_to(x, (2, 3, 4)) is x


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: mg.sum(x, 1),
        lambda x: mg.mean(x, 1, keepdims=True),
        lambda x: mg.broadcast_to(x, (1, 3, 1)),
        lambda x: mg.sum_to(mg.reshape(x, (1, 3, 1)), (3, 1)),
        lambda x: mg.pad(x, 0),
    ],
    ids=["sum", "mean", "broadcast_to", "sum_to", "pad"],
)
def test_ops_that_move_no_element_have_reshaped_gradients(fn):
    # A sum over axes of length 1, a broadcast that adds only such axes, a pad of nothing: each
    # gradient is its incoming one reshaped, plain (array mode) and recorded (create_graph).
    x = Tensor(np.arange(1.0, 4.0).reshape(3, 1), requires_grad=True)
    check_grads(fn, [x], order=2)
    (g,) = autograd_grad(fn(x), [x], Tensor(np.arange(3.0).reshape(fn(x).shape)))
    np.testing.assert_array_equal(g.data, np.arange(3.0).reshape(3, 1))


def test_pad_of_nothing_cat_and_stack_of_one_tensor_copy_it():
    data = np.arange(3.0)
    x = Tensor(data.copy())
    for out in (mg.pad(x, 0), mg.cat([x]), mg.stack([x], 1)):
        out.data[...] = -1.0
        np.testing.assert_array_equal(x.data, data)
    assert mg.stack([x], 1).shape == (3, 1)
    leaf = Tensor(data.copy(), requires_grad=True)
    for fn in (lambda x: mg.cat([x]) ** 2, lambda x: mg.stack([x], 1) ** 2):
        check_grads(fn, [leaf], order=2)


@pytest.mark.parametrize("index", [[1], [2, 0, 2, 2], list(range(30)) * 3])
def test_index_select_gradient_accumulates_repeats(index):
    # One index, a few with repeats, more than kernels' small-scatter row takes.
    x = Tensor(np.arange(60.0).reshape(30, 2), requires_grad=True)
    out = mg.index_select(x, 0, np.array(index))
    w = np.arange(out.data.size, dtype=float).reshape(out.shape)
    want = np.zeros((30, 2))
    np.add.at(want, np.array(index), w)
    (g,) = autograd_grad(out, [x], Tensor(w))
    np.testing.assert_array_equal(g.data, want)
    check_grads(lambda x: mg.index_select(x, 0, np.array(index)) ** 2, [x], order=2)


def test_where_gradient_keeps_float32():
    x = Tensor(np.array([1.0, -2.0], np.float32), requires_grad=True)
    y = Tensor(np.array([3.0, 4.0], np.float32), requires_grad=True)
    gx, gy = autograd_grad(mg.where(np.array([True, False]), x, y).sum(), [x, y])
    assert gx.dtype == gy.dtype == np.float32
    np.testing.assert_array_equal(gx.data, [1.0, 0.0])
    np.testing.assert_array_equal(gy.data, [0.0, 1.0])


def test_axes_given_as_numpy_ints_are_normalized():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    for axes in [(np.int64(1), np.int64(0)), (np.int64(-1), 0)]:
        out = mg.permute(x, axes)
        assert out.shape == (3, 2)
        assert out.grad_fn.axes == (1, 0) and all(type(a) is int for a in out.grad_fn.axes)
    assert mg.transpose(x, np.int64(0), -1).shape == (3, 2)
    assert mg.squeeze(Tensor(np.zeros((1, 3))), np.int64(0)).shape == (3,)
    for shape in [(3, 2), (np.int64(3), 2), [3, np.int64(2)], (np.array(3), 2)]:
        out = mg.reshape(x, shape)
        assert out.shape == (3, 2) and all(type(n) is int for n in out.shape)


# --- 4. bad inputs --------------------------------------------------------------------------


def _t(*shape, dtype=np.float64):
    return Tensor(np.ones(shape, dtype))


def _bad(name, call, error, match):
    return pytest.param(call, error, match, id=name)


BAD_INPUTS = [
    _bad(
        "matmul-0d",
        lambda: mg.matmul(_t(), _t(3)),
        ValueError,
        r"matmul: both operands need at least one dimension, got shapes \(\) and \(3,\)",
    ),
    _bad(
        "matmul-operator-0d",
        lambda: _t(3) @ _t(),
        ValueError,
        "matmul: both operands need at least one dimension",
    ),
    _bad(
        "linear-in-features",
        lambda: mg.linear(_t(4, 3), _t(2, 5)),
        ValueError,
        r"linear: expected x of shape \(\.\.\., in\) and weight of shape \(out, in\), got x of "
        r"shape \(4, 3\) and weight of shape \(2, 5\)",
    ),
    _bad(
        "linear-0d",
        lambda: mg.linear(_t(), _t(2, 1)),
        ValueError,
        r"got x of shape \(\) and weight of shape \(2, 1\)",
    ),
    _bad(
        "linear-bias",
        lambda: mg.linear(_t(4, 3), _t(2, 3), _t(3)),
        ValueError,
        r"linear: expected bias of shape \(2,\), got shape \(3,\)",
    ),
    _bad(
        "mse-shape",
        lambda: mg.mse_loss(_t(3), _t(3, 1)),
        ValueError,
        r"mse_loss: input shape \(3,\) and target shape \(3, 1\) differ",
    ),
    _bad(
        "ce-index-shape",
        lambda: mg.cross_entropy(_t(2, 3), np.array([[0], [1]])),
        ValueError,
        r"class-index targets must have shape \(2,\), got \(2, 1\)",
    ),
    _bad(
        "ce-prob-shape",
        lambda: mg.cross_entropy(_t(2, 3), np.ones((2, 4))),
        ValueError,
        r"probability targets must have shape \(2, 3\), got \(2, 4\)",
    ),
    _bad(
        "ce-target-range",
        lambda: mg.cross_entropy(_t(2, 3), np.array([0, 3])),
        IndexError,
        "cross_entropy: target 3 is out of range for 3 classes",
    ),
    _bad(
        "ce-negative-target",
        lambda: mg.cross_entropy(_t(2, 3), np.array([-1, 0])),
        IndexError,
        "target -1 is out of range",
    ),
    _bad(
        "ce-logits-3d",
        lambda: mg.cross_entropy(_t(2, 3, 4), np.zeros(2, int)),
        ValueError,
        r"cross_entropy: logits must have shape \(N, C\), got \(2, 3, 4\)",
    ),
    _bad(
        "split-sections-sum",
        lambda: mg.split(_t(5), [1, 3]),
        ValueError,
        r"split: sizes \[1, 3\] add up to 4, but axis 0 has length 5",
    ),
    _bad(
        "split-size-zero",
        lambda: mg.split(_t(5), 0),
        ValueError,
        "split: split size must be positive, got 0",
    ),
    _bad(
        "permute-repeated",
        lambda: mg.permute(_t(2, 3), 0, 0),
        ValueError,
        r"permute: \(0, 0\) is not a permutation of 2 axes",
    ),
    _bad(
        "permute-too-few",
        lambda: mg.permute(_t(2, 3), 0),
        ValueError,
        "not a permutation of 2 axes",
    ),
    _bad(
        "permute-out-of-range",
        lambda: mg.permute(_t(2, 3), 0, 3),
        ValueError,
        "not a permutation of 2 axes",
    ),
    _bad(
        "transpose-out-of-range",
        lambda: mg.transpose(_t(2, 3), 0, 2),
        ValueError,
        "transpose: axis 2 is out of range for a tensor of 2 dimensions",
    ),
    _bad(
        "sum-axis-out-of-range",
        lambda: mg.sum(_t(2, 3), axis=2),
        ValueError,
        "sum: axis 2 is out of range for a tensor of 2 dimensions",
    ),
    _bad(
        "sum-repeated-axis",
        lambda: mg.sum(_t(2, 3), axis=(0, -2)),
        ValueError,
        "sum: repeated axis",
    ),
    _bad(
        "max-negative-axis",
        lambda: mg.max(_t(2), axis=-2),
        ValueError,
        "max: axis -2 is out of range",
    ),
    _bad(
        "squeeze-out-of-range",
        lambda: mg.squeeze(_t(1, 3), 2),
        ValueError,
        "squeeze: axis 2 is out of range",
    ),
    _bad(
        "unsqueeze-out-of-range",
        lambda: mg.unsqueeze(_t(2), 2),
        ValueError,
        "unsqueeze: axis 2 is out of range",
    ),
    _bad(
        "stack-unequal",
        lambda: mg.stack([_t(2, 3), _t(3, 2)]),
        ValueError,
        r"stack: all tensors must have the same shape, got \[\(2, 3\), \(3, 2\)\]",
    ),
    _bad("cat-empty", lambda: mg.cat([]), ValueError, "cat: expected a non-empty list of tensors"),
    _bad(
        "index-select-2d",
        lambda: mg.index_select(_t(3, 3), 0, np.array([[0, 1]])),
        ValueError,
        r"index_select: index must be a 1-D integer array, got shape \(1, 2\)",
    ),
    _bad(
        "index-select-float",
        lambda: mg.index_select(_t(3), 0, np.array([0.0])),
        ValueError,
        r"index must be a 1-D integer array, got shape \(1,\) and dtype float64",
    ),
    _bad(
        "clamp-no-bounds",
        lambda: mg.clamp(_t(3)),
        ValueError,
        "clamp: at least one of min and max must be given",
    ),
    _bad(
        "pad-negative",
        lambda: mg.pad(_t(2, 3), ((1, 0), (0, -1))),
        ValueError,
        r"pad: pad_width must not be negative, got \(\(1, 0\), \(0, -1\)\)",
    ),
    _bad(
        "pad-pairs-count",
        lambda: mg.pad(_t(2, 3), ((1, 0), (0, 1), (2, 2))),
        ValueError,
        r"pad: pad_width of shape \(3, 2\) does not fit a tensor of 2 dimensions: "
        r"give an int, a \(before, after\) pair or 2 pairs",
    ),
    _bad(
        "pad-triple",
        lambda: mg.pad(_t(2, 3), (1, 2, 3)),
        ValueError,
        r"pad_width of shape \(3,\) does not fit a tensor of 2 dimensions",
    ),
    _bad(
        "pad-ragged",
        lambda: mg.pad(_t(2, 3), ((1, 0), (1,), 2)),
        ValueError,
        "pad: pad_width .* is not an int, a pair or pairs",
    ),
    _bad(
        "pad-float-width",
        lambda: mg.pad(_t(2, 3), 1.5),
        TypeError,
        "pad: pad_width must hold integers, got 1.5",
    ),
    _bad(
        "pad-bool-width",
        lambda: mg.pad(_t(2, 3), True),
        TypeError,
        "pad: pad_width must hold integers, got True",
    ),
    _bad(
        "pad-array-value",
        lambda: mg.pad(_t(2), 1, value=np.zeros(2)),
        ValueError,
        r"pad: value must be a scalar, got shape \(2,\)",
    ),
    _bad(
        "pad-value-requires-grad",
        lambda: mg.pad(_t(2), 1, value=Tensor(np.float64(1.0), requires_grad=True)),
        TypeError,
        "pad: value is a constant and gets no gradient; got a Tensor that requires grad",
    ),
    _bad("add-incompatible", lambda: mg.add(_t(2, 3), _t(4)), ValueError, "could not be broadcast"),
    _bad(
        "sum-to-incompatible",
        lambda: mg.sum_to(_t(3), (2, 3)),
        ValueError,
        r"cannot sum shape \(3,\) to shape",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
