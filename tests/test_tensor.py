"""Tensor, its attributes and the factories: what a user can do with a tensor besides ops."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.graph import AccumulateGrad

# --- construction -----------------------------------------------------------------------------


def test_tensor_copies_its_data():
    source = np.array([1.0, 2.0, 3.0])
    t = mg.tensor(source)
    source[0] = 100.0
    assert t.data[0] == 1.0
    u = mg.tensor(t)
    t.data[1] = -5.0
    assert u.data[1] == 2.0


def test_tensor_dtype_and_requires_grad():
    t = mg.tensor([1, 2, 3], dtype=np.float32, requires_grad=True)
    assert isinstance(t, mg.Tensor)
    assert t.dtype == np.float32
    assert t.requires_grad and t.is_leaf and t.grad_fn is None and t.grad is None
    assert mg.tensor([1, 2]).dtype.kind == "i"
    assert not mg.tensor([1.0]).requires_grad


def test_tensor_class_constructor():
    t = mg.Tensor(np.arange(3.0), requires_grad=True)
    assert isinstance(t, mg.Tensor) and t.requires_grad
    np.testing.assert_array_equal(t.data, [0.0, 1.0, 2.0])


def test_from_numpy_shares_memory_both_ways():
    a = np.zeros(4)
    t = mg.from_numpy(a)
    a[1] = 7.0
    assert t.data[1] == 7.0
    t.data[2] = 3.0
    assert a[2] == 3.0
    assert np.shares_memory(t.numpy(), a)
    with pytest.raises(TypeError, match="ndarray"):
        mg.from_numpy([1.0, 2.0])


def test_zeros_ones_full_arange():
    for make, value in ((mg.zeros, 0.0), (mg.ones, 1.0)):
        for t in (make(2, 3), make((2, 3))):
            assert t.shape == (2, 3) and t.dtype == np.float64
            assert np.all(t.data == value)
        assert make(4, dtype=np.float32).dtype == np.float32
        assert make(2, requires_grad=True).requires_grad
    f = mg.full((2, 2), 2.5)
    assert f.shape == (2, 2) and np.all(f.data == 2.5)
    assert mg.full(3, 1.0).shape == (3,)
    np.testing.assert_array_equal(mg.arange(5).data, np.arange(5))
    np.testing.assert_array_equal(mg.arange(1, 7, 2).data, [1, 3, 5])
    assert mg.arange(3, dtype=np.float32).dtype == np.float32


def test_zeros_like_ones_like():
    base = mg.tensor(np.ones((2, 5), np.float32))
    z, o = mg.zeros_like(base), mg.ones_like(base)
    assert z.shape == o.shape == (2, 5) and z.dtype == o.dtype == np.float32
    assert np.all(z.data == 0) and np.all(o.data == 1)
    assert mg.zeros_like(base, dtype=np.float64).dtype == np.float64
    assert mg.ones_like(base, requires_grad=True).requires_grad


@pytest.mark.parametrize("make", [mg.rand, mg.randn])
def test_random_factories_are_reproducible(make):
    a = make(3, 4, generator=123)
    b = make((3, 4), generator=123)
    c = make(3, 4, generator=124)
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(make(6, generator=g1).data, make(6, generator=g2).data)
    # A Generator advances: the next draw differs from the first.
    g = np.random.default_rng(5)
    assert not np.array_equal(make(6, generator=g).data, make(6, generator=g).data)
    assert make(2, generator=0, dtype=np.float32).dtype == np.float32
    assert make(2, generator=0, requires_grad=True).requires_grad


def test_rand_is_uniform_on_unit_interval():
    r = mg.rand(1000, generator=0).data
    assert r.min() >= 0.0 and r.max() < 1.0
    assert 0.4 < r.mean() < 0.6


# --- attributes -------------------------------------------------------------------------------


def test_attributes():
    t = mg.tensor(np.arange(6.0).reshape(2, 3))
    assert isinstance(t.data, np.ndarray)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == np.float64
    assert t.grad is None and not t.requires_grad and t.grad_fn is None and t.is_leaf
    assert t.requires_grad_() is t and t.requires_grad
    t.requires_grad_(False)
    assert not t.requires_grad
    t.requires_grad = True
    assert t.requires_grad


def test_grad_fn_names_and_next_functions():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = mg.tensor([3.0, 4.0], requires_grad=True)
    c = mg.tensor([5.0, 6.0])
    z = x * y
    assert z.grad_fn.name() == "MulBackward" and type(z.grad_fn).__name__ == "MulBackward"
    assert not z.is_leaf and z.requires_grad
    (nx, nrx), (ny, nry) = z.grad_fn.next_functions
    assert isinstance(nx, AccumulateGrad) and nx.variable is x and nrx == 0
    assert isinstance(ny, AccumulateGrad) and ny.variable is y and nry == 0
    w = z + c
    assert w.grad_fn.name() == "AddBackward"
    assert w.grad_fn.next_functions == ((z.grad_fn, 0), (None, 0))
    # The same leaf used twice in one graph has one accumulator.
    v = x * x
    (a, _), (b, _) = v.grad_fn.next_functions
    assert a is b and a.variable is x


def test_ops_on_constants_make_leaves():
    a = mg.tensor([1.0, 2.0])
    b = a * 2.0 + 1.0
    assert b.is_leaf and not b.requires_grad and b.grad_fn is None


def test_detach_shares_data_and_cuts_graph():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.grad_fn is None
    assert np.shares_memory(d.data, y.data)
    np.testing.assert_array_equal(d.data, [3.0, 6.0])
    assert not x.detach().requires_grad


def test_numpy_item_and_array_protocol():
    t = mg.tensor([[1.5, 2.5]])
    assert t.numpy() is t.data
    a = np.asarray(t)
    np.testing.assert_array_equal(a, [[1.5, 2.5]])
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    assert mg.tensor(4.0).item() == 4.0 and isinstance(mg.tensor(4.0).item(), float)
    assert mg.tensor([[3]]).item() == 3
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert float(mg.tensor([2.0])) == 2.0
    assert np.add(np.asarray(t), 1.0).tolist() == [[2.5, 3.5]]


def test_tensors_hash_by_identity():
    a = mg.tensor([1.0, 2.0])
    b = mg.tensor([1.0, 2.0])
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b" and len(d) == 2
    assert len({a, b, a}) == 2
    eq = a == b
    assert isinstance(eq, mg.Tensor) and eq.dtype == bool
    np.testing.assert_array_equal(eq.data, [True, True])
    np.testing.assert_array_equal((a != b).data, [False, False])
    np.testing.assert_array_equal((a < 2.0).data, [True, False])


# --- dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floating_point_tensors_are_differentiable(dtype):
    x = mg.tensor([1.0, 2.0, 3.0], dtype=dtype, requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.data, [2.0, 4.0, 6.0])


@pytest.mark.parametrize("data", [[1, 2], [True, False]])
def test_int_and_bool_tensors_never_require_grad(data):
    with pytest.raises(RuntimeError, match="only floating-point"):
        mg.tensor(data, requires_grad=True)
    t = mg.tensor(data)
    with pytest.raises(RuntimeError, match="only floating-point"):
        t.requires_grad_()
    with pytest.raises(RuntimeError, match="only floating-point"):
        t.requires_grad = True
    assert not t.requires_grad


def test_non_float_results_of_differentiable_tensors_do_not_require_grad():
    x = mg.tensor([0.5, -1.5], requires_grad=True)
    mask = x > 0
    assert not mask.requires_grad and mask.grad_fn is None
    as_int = x.astype(np.int64)
    assert as_int.dtype == np.int64 and not as_int.requires_grad and as_int.grad_fn is None
    # An int tensor in an op with a float leaf: the result is float and differentiable.
    y = mg.tensor([2, 3]) * x
    assert y.requires_grad
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2.0, 3.0])


def test_float32_leaf_gets_float32_grad_when_output_is_promoted():
    x = mg.tensor([1.0, 2.0], dtype=np.float32, requires_grad=True)
    w = mg.tensor([3.0, 4.0], dtype=np.float64, requires_grad=True)
    y = (x * w).sum()
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.data, [3.0, 4.0])
    np.testing.assert_allclose(w.grad.data, [1.0, 2.0])


def test_requires_grad_false_on_non_leaf_is_an_error():
    x = mg.tensor([1.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad_(False)


# --- grad bookkeeping -------------------------------------------------------------------------


def test_zero_grad_then_accumulate_again():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0])
    assert x.grad.zero_() is x.grad
    np.testing.assert_array_equal(x.grad.data, [0.0, 0.0])
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [5.0, 5.0])
    (x * 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [6.0, 6.0])
    t = mg.tensor([1.0, 2.0])
    t.zero_()
    np.testing.assert_array_equal(t.data, [0.0, 0.0])


def test_stored_gradient_does_not_alias_other_leaves():
    # z = x + y hands the same gradient to both leaves; accumulating into one must not change
    # the other.
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = mg.tensor([1.0, 2.0], requires_grad=True)
    (x + y).sum().backward()
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0])
    np.testing.assert_array_equal(y.grad.data, [1.0, 1.0])


def test_seed_gradient_is_not_aliased_by_grad():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    seed = mg.tensor([10.0, 20.0])
    (x + 1.0).backward(seed)
    np.testing.assert_array_equal(x.grad.data, [10.0, 20.0])
    (x + 1.0).backward(seed)
    np.testing.assert_array_equal(x.grad.data, [20.0, 40.0])
    np.testing.assert_array_equal(seed.data, [10.0, 20.0])
    # The first gradient may be kept by reference: writing to the seed later must not show.
    z = mg.tensor([1.0, 2.0], requires_grad=True)
    (z.reshape(2, 1) + 1.0).backward(seed.data.reshape(2, 1))
    seed.data[...] = -1.0
    np.testing.assert_array_equal(z.grad.data, [10.0, 20.0])
    np.testing.assert_array_equal(x.grad.data, [20.0, 40.0])


def test_tensor_backward_signature():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    w = mg.tensor([1.0, 1.0], requires_grad=True)
    y = x * x * w
    y.backward(gradient=mg.tensor([1.0, 1.0]), retain_graph=True, create_graph=False, inputs=[x])
    np.testing.assert_array_equal(x.grad.data, [2.0, 4.0])
    assert w.grad is None
    y.backward(mg.tensor([1.0, 0.0]))
    np.testing.assert_array_equal(x.grad.data, [4.0, 4.0])
    np.testing.assert_array_equal(w.grad.data, [1.0, 0.0])
