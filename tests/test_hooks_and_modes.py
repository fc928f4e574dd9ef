"""Grad mode (no_grad, enable_grad, set_grad_enabled as context managers and decorators), tensor
hooks and retain_grad."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import grad


def leaf(values):
    return mg.tensor(values, dtype=np.float64, requires_grad=True)


# --- grad mode --------------------------------------------------------------------------------


def test_no_grad_context():
    x = leaf([1.0, 2.0])
    assert mg.is_grad_enabled()
    with mg.no_grad():
        assert not mg.is_grad_enabled()
        y = x * 2.0
        z = mg.exp(y).sum()
    assert mg.is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad and t.grad_fn is None and t.is_leaf
    np.testing.assert_allclose(z.item(), np.exp(2.0) + np.exp(4.0))
    w = x * 2.0
    assert w.requires_grad and w.grad_fn is not None


def test_grad_mode_is_restored_after_an_exception():
    with pytest.raises(ValueError):
        with mg.no_grad():
            raise ValueError
    assert mg.is_grad_enabled()
    with pytest.raises(ValueError):
        with mg.set_grad_enabled(False):
            raise ValueError
    assert mg.is_grad_enabled()


def test_nested_modes():
    x = leaf([1.0])
    with mg.no_grad():
        with mg.enable_grad():
            assert mg.is_grad_enabled()
            a = x * 2.0
            with mg.set_grad_enabled(False):
                assert not mg.is_grad_enabled()
                b = x * 2.0
                with mg.set_grad_enabled(True):
                    c = x * 2.0
                assert not mg.is_grad_enabled()
            assert mg.is_grad_enabled()
        assert not mg.is_grad_enabled()
        d = x * 2.0
    assert mg.is_grad_enabled()
    assert a.requires_grad and c.requires_grad
    assert not b.requires_grad and not d.requires_grad


def test_modes_as_decorators():
    x = leaf([1.0])

    @mg.no_grad()
    def without():
        return x * 2.0, mg.is_grad_enabled()

    @mg.enable_grad()
    def with_grad():
        return x * 2.0, mg.is_grad_enabled()

    @mg.set_grad_enabled(False)
    def set_off():
        return x * 2.0, mg.is_grad_enabled()

    assert mg.is_grad_enabled()  # decorating switches nothing
    y, mode = without()
    assert not y.requires_grad and not mode
    assert mg.is_grad_enabled()
    with mg.no_grad():
        y, mode = with_grad()
        assert y.requires_grad and mode and y.grad_fn is not None
        assert not mg.is_grad_enabled()
    y, mode = set_off()
    assert not y.requires_grad and not mode
    assert mg.is_grad_enabled()
    assert without.__name__ == "without"


def test_decorated_function_restores_mode_after_exception():
    @mg.no_grad()
    def fails():
        raise KeyError

    with pytest.raises(KeyError):
        fails()
    assert mg.is_grad_enabled()


def test_set_grad_enabled_called_plainly_switches_at_once():
    try:
        mg.set_grad_enabled(False)
        assert not mg.is_grad_enabled()
        assert not (leaf([1.0]) * 2.0).requires_grad
    finally:
        mg.set_grad_enabled(True)
    assert mg.is_grad_enabled()


def test_autograd_exports_the_same_modes():
    assert mg.autograd.no_grad is mg.no_grad
    assert mg.autograd.enable_grad is mg.enable_grad
    assert mg.autograd.set_grad_enabled is mg.set_grad_enabled
    assert mg.autograd.is_grad_enabled is mg.is_grad_enabled


# --- hooks ------------------------------------------------------------------------------------


def test_hook_on_leaf_sees_and_replaces_the_gradient():
    seen = []
    x = leaf([1.0, 2.0])

    def double(g):
        seen.append(g.data.copy())
        return g * 2.0

    x.register_hook(double)
    (x * x).sum().backward()
    np.testing.assert_allclose(seen[0], [2.0, 4.0])
    np.testing.assert_allclose(x.grad.data, [4.0, 8.0])


def test_hook_on_non_leaf_replaces_gradient_downstream():
    seen = []
    x = leaf([1.0, 2.0])
    h = x * 3.0
    h.register_hook(lambda g: seen.append(g.data.copy()))  # returns None: observes only
    h.register_hook(lambda g: g * 10.0)
    (h * h).sum().backward()
    np.testing.assert_allclose(seen[0], [6.0, 12.0])
    np.testing.assert_allclose(x.grad.data, 3.0 * 10.0 * np.array([6.0, 12.0]))
    assert h.grad is None


def test_hooks_chain_in_registration_order():
    x = leaf([1.0])
    x.register_hook(lambda g: g + 1.0)
    x.register_hook(lambda g: g * 10.0)
    (x * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.data, [30.0])


def test_hook_handle_remove():
    calls = []
    x = leaf([1.0])
    h = x * 2.0
    handle_leaf = x.register_hook(lambda g: calls.append("leaf"))
    handle_mid = h.register_hook(lambda g: calls.append("mid"))
    (h * 1.0).sum().backward(retain_graph=True)
    assert sorted(calls) == ["leaf", "mid"]
    handle_leaf.remove()
    handle_mid.remove()
    handle_mid.remove()  # removing twice is harmless
    (h * 1.0).sum().backward()
    assert sorted(calls) == ["leaf", "mid"]
    np.testing.assert_allclose(x.grad.data, [4.0])


def test_hooks_run_once_with_the_total_gradient():
    leaf_seen, mid_seen = [], []
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: leaf_seen.append(g.data.copy()))
    a = x * 2.0
    a.register_hook(lambda g: mid_seen.append(g.data.copy()))
    y = (a * 3.0 + a * 4.0 + x * 5.0).sum()
    y.backward()
    assert len(mid_seen) == 1 and len(leaf_seen) == 1
    np.testing.assert_allclose(mid_seen[0], [7.0, 7.0])
    np.testing.assert_allclose(leaf_seen[0], [19.0, 19.0])
    np.testing.assert_allclose(x.grad.data, [19.0, 19.0])


def test_hooks_run_under_grad():
    seen = []
    x = leaf([1.0, 2.0])
    h = x * 2.0
    h.register_hook(lambda g: seen.append(g) or g * 0.5)
    (gx,) = grad((h * h).sum(), [x])
    assert len(seen) == 1
    np.testing.assert_allclose(gx.data, 0.5 * 2.0 * 2.0 * np.array([2.0, 4.0]))


def test_hook_needs_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.tensor([1.0]).register_hook(lambda g: g)


# --- retain_grad ------------------------------------------------------------------------------


def test_retain_grad_keeps_non_leaf_gradient():
    x = leaf([1.0, 2.0])
    h = x * x
    k = h * 3.0
    h.retain_grad()
    assert h.retains_grad and not k.retains_grad
    k.sum().backward(retain_graph=True)
    np.testing.assert_allclose(h.grad.data, [3.0, 3.0])
    assert k.grad is None
    np.testing.assert_allclose(x.grad.data, [6.0, 12.0])
    k.sum().backward()  # retained gradients accumulate like leaves'
    np.testing.assert_allclose(h.grad.data, [6.0, 6.0])


def test_retain_grad_sees_the_hooks_replacement_and_is_not_set_by_grad():
    x = leaf([1.0])
    h = x * 2.0
    h.retain_grad()
    h.register_hook(lambda g: g * 100.0)
    (h * 1.0).sum().backward(retain_graph=True)
    np.testing.assert_allclose(h.grad.data, [100.0])
    np.testing.assert_allclose(x.grad.data, [200.0])
    h.grad = None
    grad((h * 1.0).sum(), [x])
    assert h.grad is None


def test_retained_non_leaf_in_inputs_is_accumulated_once():
    x = leaf([1.0, 2.0])
    h = x * 2.0
    h.retain_grad()
    (h * 3.0).sum().backward(inputs=[h])
    np.testing.assert_allclose(h.grad.data, [3.0, 3.0])
    assert x.grad is None


def test_retain_grad_on_leaf_is_a_no_op():
    x = leaf([1.0])
    x.retain_grad()
    (x * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.data, [2.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.tensor([1.0]).retain_grad()
