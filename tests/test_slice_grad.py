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


def test_an_unshared_dense_gradient_is_summed_in_place_and_a_shared_one_is_copied():
    slice_grad = SliceGrad((4,), np.dtype(np.float64), slice(1, 2), np.array([5.0]))
    grads = [np.ones(4), slice_grad]  # the engine's list: the only holder of the dense array
    dense_id = id(grads[0])
    total = sum_with_slices(grads)
    assert id(total) == dense_id  # no copy of a block-sized array for one halo cell
    np.testing.assert_array_equal(total, [1, 6, 1, 1])

    kept = np.ones(4)  # held elsewhere too (another input's gradient, say)
    total = sum_with_slices([kept, slice_grad])
    assert total is not kept
    np.testing.assert_array_equal(kept, [1, 1, 1, 1])
    np.testing.assert_array_equal(total, [1, 6, 1, 1])

    viewed = np.ones(4)
    leaf_grad = viewed.view()  # a leaf's .grad keeps a read-only view of the first gradient
    grads = [viewed, slice_grad]
    del viewed
    sum_with_slices(grads)
    np.testing.assert_array_equal(leaf_grad, [1, 1, 1, 1])
