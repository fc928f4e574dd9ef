"""mpigrad.stencil beyond its derivatives (those are in op_cases.py): values against numpy on
every layout and dtype, the transposed kernel as an exact adjoint, what backward keeps alive, and
the errors."""

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import mpigrad as mg
from mpigrad.kernels import correlate, correlate_transposed, reference
from mpigrad.kernels.stencil import BLOCK


def _reference(x, w, axis):
    """numpy's valid correlation on every line along axis."""
    return np.apply_along_axis(lambda line: np.correlate(line, w, "valid"), axis, x)


@settings(max_examples=60, deadline=None)
@given(
    shape=array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    data=st.data(),
    dtype=st.sampled_from([np.float64, np.float32, np.complex128, np.int64]),
)
def test_values_match_numpy_on_any_axis_and_layout(shape, data, dtype):
    rng = np.random.default_rng(0)
    axis = data.draw(st.integers(0, len(shape) - 1))
    k = data.draw(st.integers(1, shape[axis]))
    x = (10 * rng.standard_normal(shape)).astype(dtype)
    w = (10 * rng.standard_normal(k)).astype(dtype)
    if data.draw(st.booleans()):
        x = np.asfortranarray(x)
    out = mg.stencil(mg.tensor(x), mg.tensor(w), axis=axis).data
    expected = _reference(x, w, axis)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        out, expected, rtol=tolerance, atol=tolerance * np.abs(x).max() * np.abs(w).sum()
    )


@pytest.mark.parametrize("k", [1, 4, 9])
def test_lines_longer_than_a_block(k):
    """The Numba kernels work block by block: lines that span several blocks, with a ragged end,
    give numpy's values and reference.py's (the path without Numba)."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 2 * BLOCK + 5))
    w = rng.standard_normal(k)
    out = correlate(x, w, 1)
    np.testing.assert_allclose(out, _reference(x, w, 1), rtol=1e-12, atol=1e-12)
    rows = np.empty_like(out)
    reference.correlate_rows(x, w, rows)
    np.testing.assert_allclose(out, rows, rtol=1e-15, atol=1e-15)
    g = rng.standard_normal((2, 2 * BLOCK + 5 - k + 1))
    back = correlate_transposed(g, w, 1)
    full = np.stack([np.convolve(line, w, "full") for line in g])
    np.testing.assert_allclose(back, full, rtol=1e-12, atol=1e-12)
    rows = np.empty_like(back)
    reference.correlate_rows_transposed(g, w, rows)
    np.testing.assert_allclose(back, rows, rtol=1e-15, atol=1e-15)


def test_a_strided_view_and_a_reversed_one():
    base = np.arange(40.0).reshape(4, 10)
    w = np.array([1.0, -2.0, 0.5])
    for x in (base[:, ::2], base[::-1, ::-3], base.T):
        np.testing.assert_allclose(correlate(x, w, 1), _reference(x, w, 1), rtol=1e-14)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_transposed_kernel_is_the_adjoint(axis):
    """<correlate(x), g> == <x, correlate_transposed(g)> for random x and g."""
    rng = np.random.default_rng(axis)
    x = rng.standard_normal((5, 6, 7))
    w = rng.standard_normal(3)
    g = rng.standard_normal(correlate(x, w, axis).shape)
    back = correlate_transposed(g, w, axis)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(correlate(x, w, axis), g), np.vdot(x, back), rtol=1e-12)


def test_list_weights_take_the_float_dtype_of_x():
    x = mg.tensor(np.ones(5, np.float32))
    assert mg.stencil(x, [0.25, 0.5, 0.25]).dtype == np.float32
    assert mg.stencil(mg.tensor(np.arange(5)), [1, 1]).dtype == np.int64


def test_the_heat_step_of_the_example():
    """A halo'd explicit heat step is u + r (u[i-1] - 2 u[i] + u[i+1])."""
    r = 0.4
    u = np.random.default_rng(3).standard_normal(9)
    extended = np.concatenate([[1.5], u, [-2.0]])
    step = mg.stencil(mg.tensor(extended), [r, 1 - 2 * r, r]).data
    np.testing.assert_allclose(step, u + r * (extended[:-2] - 2 * u + extended[2:]), rtol=1e-14)


def test_constant_weights_keep_no_input_alive():
    """Backward of a stencil of constants needs only the weights: its input is freed."""
    for weights_require_grad, kept in ((False, False), (True, True)):
        x = mg.tensor(np.ones(8), requires_grad=True)
        w = mg.tensor(np.array([1.0, 2.0]), requires_grad=weights_require_grad)
        middle = x * 2.0
        ref = weakref.ref(middle.data)
        out = mg.stencil(middle, w)
        del middle
        gc.collect()
        assert (ref() is not None) == kept
        out.sum().backward()
        np.testing.assert_array_equal(x.grad.data, 2.0 * np.array([1, 3, 3, 3, 3, 3, 3, 2]))


@pytest.mark.parametrize(
    "x, weights, axis, error, message",
    [
        (np.float64(1.0), [1.0], -1, ValueError, "at least one dimension, got a 0-d"),
        (np.ones(4), np.ones((2, 2)), -1, ValueError, r"1 to 4 entries.*got shape \(2, 2\)"),
        (np.ones(4), np.ones(5), -1, ValueError, r"axis 0 of x, shape \(4,\)\); got shape \(5,\)"),
        (np.ones(4), np.ones(0), -1, ValueError, r"got shape \(0,\)"),
        (np.ones((2, 3)), [1.0], 2, ValueError, "axis 2 is out of range"),
        (np.ones(4, bool), [1.0], -1, TypeError, "x must be numeric, got dtype bool"),
        (np.ones(4), np.array(["a"]), -1, TypeError, "weights must be numeric"),
    ],
)
def test_bad_input_is_named(x, weights, axis, error, message):
    with pytest.raises(error, match=message):
        mg.stencil(mg.tensor(x), weights, axis=axis)
