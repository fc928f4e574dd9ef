"""Slice gradients (Note [slice gradients]): what array mode computes with them equals the dense
computation, and no rule, hook or leaf ever sees one."""

import numpy as np

import mpigrad as mg
from mpigrad.slice_grad import SliceGrad, sum_with_slices


def _loss(x):
    return (x * 2.0).sum() + (x[1:3] ** 2).sum() * 3.0 + x[:, :1].sum() + x[-1:].exp().sum()


def _dense_reference(x0):
    # create_graph=True runs in Tensor mode, where a slice's gradient is an IndexAdd (dense).
    x = mg.tensor(x0, requires_grad=True)
    (grad,) = mg.autograd.grad(_loss(x), [x], create_graph=True)
    return grad.data


def test_slices_summed_with_dense_gradients_match_the_dense_computation():
    x0 = np.random.default_rng(0).standard_normal((5, 4))
    x = mg.tensor(x0, requires_grad=True)
    _loss(x).backward()
    assert type(x.grad.data) is np.ndarray
    np.testing.assert_allclose(x.grad.data, _dense_reference(x0), rtol=1e-14, atol=0)


def test_a_lone_slice_gradient_reaches_the_leaf_dense():
    x = mg.tensor(np.arange(6.0), requires_grad=True)
    (x[1:3].sum() * 2.0 + x[4:].sum()).backward()
    assert type(x.grad.data) is np.ndarray
    np.testing.assert_array_equal(x.grad.data, [0, 2, 2, 0, 1, 1])
    y = mg.tensor(np.arange(6.0), requires_grad=True)
    y[2:3].sum().backward()
    np.testing.assert_array_equal(y.grad.data, [0, 0, 1, 0, 0, 0])


def test_a_float32_input_keeps_its_dtype():
    x = mg.tensor(np.ones(4, np.float32), requires_grad=True)
    (x[:2].sum() * np.float64(2.0) + x.sum()).backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, [3, 3, 1, 1])


def test_hooks_see_dense_tensors():
    seen = []
    x = mg.tensor(np.arange(4.0), requires_grad=True)
    h = x * 1.0
    h.register_hook(lambda g: seen.append(g))
    (h[1:2].sum() + h[3:].sum()).backward()
    (g,) = seen
    assert isinstance(g, mg.Tensor) and not isinstance(g.data, SliceGrad)
    np.testing.assert_array_equal(g.data, [0, 1, 0, 1])


def test_dense_form():
    s = SliceGrad((2, 3), np.float64, (slice(None), slice(1, 2)), np.array([[4.0], [5.0]]))
    np.testing.assert_array_equal(s.dense(), [[0, 4, 0], [0, 5, 0]])


def test_a_shared_dense_gradient_is_never_written():
    # Add's backward hands the same array to both inputs; summing one input's gradients in
    # place would change the other's.  Here y gets that array and a slice; x gets it too.
    x = mg.tensor(np.zeros(4), requires_grad=True)
    y = mg.tensor(np.zeros(4), requires_grad=True)
    s = x + y
    (s.sum() + y[1:2].sum() * 5.0).backward()
    np.testing.assert_array_equal(x.grad.data, [1, 1, 1, 1])
    np.testing.assert_array_equal(y.grad.data, [1, 6, 1, 1])


def test_the_first_dense_gradient_is_written_in_place_exactly_when_it_is_writable():
    # Ownership is the writeable flag (Note [gradient ownership] in engine.py), not who else
    # refers to the array: a writable gradient in the engine's list is the engine's alone.
    slice_grad = SliceGrad((4,), np.dtype(np.float64), slice(1, 2), np.array([5.0]))
    dense = np.ones(4)
    also_held = dense
    total = sum_with_slices([dense, slice_grad])
    assert total is also_held  # no copy of a block-sized array for one halo cell
    np.testing.assert_array_equal(total, [1, 6, 1, 1])

    viewed = np.ones(8)[::2]  # a view (a reshape's or a split's gradient) is the engine's too
    assert sum_with_slices([viewed, slice_grad]) is viewed

    shared = np.ones(4)  # shared (Add's, a hook's): it reaches the engine read-only
    shared.flags.writeable = False
    total = sum_with_slices([shared, slice_grad])
    assert total is not shared and total.flags.writeable
    np.testing.assert_array_equal(shared, [1, 1, 1, 1])
    np.testing.assert_array_equal(total, [1, 6, 1, 1])


def _reshaped_and_sliced(x):
    """h's gradient is the sum of a dense gradient (through v, its reshape) and a slice's."""
    h = x * 1.0
    v = h.reshape(2, 2)
    return v, (v * 2.0).sum() + h[1:2].sum() * 5.0


def test_a_gradient_handed_to_user_code_is_never_written_by_a_sum_with_slices():
    stored = []
    x = mg.tensor(np.zeros(4), requires_grad=True)
    v, loss = _reshaped_and_sliced(x)
    v.register_hook(stored.append)
    loss.backward()
    np.testing.assert_array_equal(stored[0].data, [[2, 2], [2, 2]])
    np.testing.assert_array_equal(x.grad.data, [2, 7, 2, 2])

    x = mg.tensor(np.zeros(4), requires_grad=True)
    v, loss = _reshaped_and_sliced(x)
    v.retain_grad()
    loss.backward()
    np.testing.assert_array_equal(v.grad.data, [[2, 2], [2, 2]])
    np.testing.assert_array_equal(x.grad.data, [2, 7, 2, 2])

    x = mg.tensor(np.zeros(4), requires_grad=True)
    v, loss = _reshaped_and_sliced(x)
    grad_v, grad_x = mg.autograd.grad(loss, [v, x])
    np.testing.assert_array_equal(grad_v.data, [[2, 2], [2, 2]])
    np.testing.assert_array_equal(grad_x.data, [2, 7, 2, 2])
