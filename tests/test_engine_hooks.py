"""The engine's hooks for data parallelism: ``Tensor.register_post_accumulate_grad_hook`` and
``mpigrad.autograd.queue_callback`` (Note [end-of-pass callbacks] in engine.py)."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import BackwardError, grad, queue_callback


def leaf(values):
    return mg.tensor(values, dtype=np.float64, requires_grad=True)


# --- post-accumulate-grad hooks -----------------------------------------------------------------


def test_post_accumulate_hook_gets_the_leaf_once_with_its_total_grad_stored():
    x, y = leaf([1.0, 2.0]), leaf([3.0])
    seen = []
    x.register_post_accumulate_grad_hook(lambda t: seen.append((t, t.grad.data.copy())))
    ((x * 2.0).sum() + (x * x).sum() * y.sum()).backward()
    assert len(seen) == 1 and seen[0][0] is x
    np.testing.assert_array_equal(seen[0][1], [2.0 + 6.0, 2.0 + 12.0])
    (x * 1.0).sum().backward()  # a second pass: the hook sees the accumulated .grad
    np.testing.assert_array_equal(seen[1][1], [9.0, 15.0])


def test_post_accumulate_hook_runs_after_the_gradient_hooks_and_may_write_grad():
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: g * 10.0)
    seen = []

    def halve(t):
        seen.append(t.grad.data.copy())
        t.grad.data /= 2

    x.register_post_accumulate_grad_hook(halve)
    x.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.data.copy()))
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(seen[0], [30.0, 30.0])
    np.testing.assert_array_equal(seen[1], [15.0, 15.0])
    np.testing.assert_array_equal(x.grad.data, [15.0, 15.0])


def test_post_accumulate_hook_runs_only_where_grad_is_written():
    x, y = leaf([1.0]), leaf([2.0])
    calls = []
    x.register_post_accumulate_grad_hook(lambda t: calls.append("x"))
    y.register_post_accumulate_grad_hook(lambda t: calls.append("y"))
    grad((x * y).sum(), [x, y])
    assert calls == []
    (x * y).sum().backward(inputs=[y])
    assert calls == ["y"] and x.grad is None
    (x * 2.0).sum().backward()  # y gets no gradient: its hook does not run
    assert calls == ["y", "x"]


def test_post_accumulate_hook_handle_removes_it():
    x = leaf([1.0])
    calls = []
    handle = x.register_post_accumulate_grad_hook(lambda t: calls.append(1))
    x.sum().backward()
    handle.remove()
    x.sum().backward()
    assert calls == [1]


def test_post_accumulate_hook_refuses_non_leaves_and_tensors_without_grad():
    with pytest.raises(RuntimeError, match="cannot be registered on non-leaf tensors"):
        (leaf([1.0]) * 2.0).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.tensor([1.0]).register_post_accumulate_grad_hook(lambda t: None)


def test_post_accumulate_hook_that_raises_is_named():
    x = leaf([1.0])

    def broken(t):
        raise ValueError("no")

    x.register_post_accumulate_grad_hook(broken)
    with pytest.raises(BackwardError, match="post-accumulate-grad hook broken .* ValueError: no"):
        x.sum().backward()


# --- callbacks at the end of a pass -------------------------------------------------------------


def test_callbacks_run_in_order_once_every_leaf_has_its_grad():
    x, y = leaf([1.0, 2.0]), leaf([3.0])
    events = []

    def first():
        events.append(("first", x.grad.data.copy(), y.grad.data.copy()))
        queue_callback(lambda: events.append("queued by a callback"))

    def on_y(t):
        events.append("hook")
        queue_callback(first)
        queue_callback(lambda: events.append("second"))

    y.register_post_accumulate_grad_hook(on_y)
    ((x * y).sum() * 2.0).backward()
    assert events[0] == "hook" and events[2:] == ["second", "queued by a callback"]
    np.testing.assert_array_equal(events[1][1], [6.0, 6.0])
    np.testing.assert_array_equal(events[1][2], [6.0])
    del events[:]
    (x * y).sum().backward()  # a new pass has none of the old callbacks queued but its own
    assert [e if isinstance(e, str) else e[0] for e in events] == [
        "hook",
        "first",
        "second",
        "queued by a callback",
    ]


def test_callbacks_run_at_the_end_of_grad_and_of_inputs_backward():
    x = leaf([1.0])
    events = []
    x.register_hook(lambda g: queue_callback(lambda: events.append("grad done")))
    grad((x * 2.0).sum(), x)
    assert events == ["grad done"]
    x.register_post_accumulate_grad_hook(
        lambda t: queue_callback(lambda: events.append(t.grad.item()))
    )
    (x * 2.0).sum().backward(inputs=[x])
    assert events == ["grad done", "grad done", 2.0]


def test_queue_callback_outside_a_pass_raises():
    with pytest.raises(RuntimeError, match="queue_callback: no backward pass is running"):
        queue_callback(lambda: None)
    x = leaf([1.0])
    x.register_hook(lambda g: queue_callback(3))
    with pytest.raises(BackwardError, match="expected a callable, got int"):
        x.sum().backward()


def test_a_nested_pass_runs_its_own_callbacks_and_a_failed_pass_drops_them():
    x, y = leaf([1.0]), leaf([2.0])
    events = []

    def inner(g):
        queue_callback(lambda: events.append("outer"))
        with mg.enable_grad():  # hooks run under the pass's grad mode
            grad((y * y).sum(), y)  # its callback runs when it ends, before the outer one
        return None

    y.register_hook(lambda g: queue_callback(lambda: events.append("inner")))
    x.register_hook(inner)
    (x * 3.0).sum().backward()
    assert events == ["inner", "outer"]

    def fails(g):
        queue_callback(lambda: events.append("dropped"))
        raise ValueError("stop")

    z = leaf([1.0])
    z.register_hook(fails)
    with pytest.raises(BackwardError, match="stop"):
        z.sum().backward()
    assert events == ["inner", "outer"]
    with pytest.raises(RuntimeError, match="no backward pass is running"):
        queue_callback(lambda: None)
