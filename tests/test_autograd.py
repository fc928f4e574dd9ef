"""Reverse mode: ``autograd.backward`` and ``autograd.grad``, the engine's guarantees (no recursion,
fan-out, each node once, broadcasting undone at the edge) and ``engine.GraphTask`` as the
distributed layer drives it (extra roots supplied from outside, send/recv nodes, a custom
accumulator)."""

import time

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import BackwardError, backward, grad
from mpigrad.engine import GraphTask
from mpigrad.graph import Node, gradient_edge
from mpigrad.tensor import Tensor


def leaf(values, dtype=np.float64):
    return mg.tensor(values, dtype=dtype, requires_grad=True)


def counting_function(calls):
    """A Function that is the identity and appends the gradient it receives to ``calls``."""

    class Count(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data.copy()

        @staticmethod
        def backward(ctx, g):
            calls.append(np.array(g.data))
            return g

    return Count


# --- backward ---------------------------------------------------------------------------------


def test_backward_scalar():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, [2.0, 4.0, 6.0])


def test_backward_non_scalar_needs_a_gradient():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        y.backward()
    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        backward([y])
    assert x.grad is None


def test_backward_vector_jacobian_product():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3))
    x0 = rng.standard_normal(3)
    v = rng.standard_normal(4)
    x = leaf(x0)
    y = mg.tensor(a) @ mg.sin(x)  # J = a @ diag(cos(x))
    y.backward(mg.tensor(v))
    np.testing.assert_allclose(x.grad.data, np.cos(x0) * (a.T @ v))


def test_backward_several_outputs():
    x = leaf([1.0, 2.0])
    y1 = x * 3.0
    y2 = (x * x).sum()
    backward([y1, y2], [mg.tensor([1.0, -1.0]), None])
    np.testing.assert_allclose(x.grad.data, [3.0 + 2.0, -3.0 + 4.0])


def test_backward_grad_tensors_count_and_shape_are_checked():
    x = leaf([1.0, 2.0])
    y1, y2 = x * 2.0, x * 3.0
    with pytest.raises(RuntimeError, match="has 1 entries but there are 2 outputs"):
        backward([y1, y2], [mg.ones(2)])
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        backward([y1], [mg.ones(3)])
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        y1.backward(mg.ones(2, 1))
    with pytest.raises(RuntimeError, match="has 1 entries but there are 2 outputs"):
        grad([y1, y2], [x], [mg.ones(2)])
    assert x.grad is None


def test_backward_accumulates_across_calls():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    (x * 10.0).sum().backward()
    np.testing.assert_allclose(x.grad.data, [12.0, 14.0])
    y = (x * x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.data, [12.0 + 6.0, 14.0 + 24.0])


def test_backward_inputs_restricts_accumulation_to_leaves_given():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (x * w).sum().backward(inputs=[x])
    np.testing.assert_allclose(x.grad.data, [3.0, 4.0])
    assert w.grad is None
    backward([(x * w).sum()], inputs=[w])
    np.testing.assert_allclose(w.grad.data, [1.0, 2.0])
    np.testing.assert_allclose(x.grad.data, [3.0, 4.0])


def test_backward_inputs_may_be_non_leaves():
    x = leaf([1.0, 2.0])
    h = x * x
    (h * 3.0).sum().backward(inputs=[h])
    np.testing.assert_allclose(h.grad.data, [3.0, 3.0])
    assert x.grad is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        (x * 2.0).sum().backward(inputs=[mg.tensor([1.0])])


def test_retain_graph_is_needed_to_backward_twice():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        grad(y, x)


def test_retain_graph_defaults_to_create_graph():
    x = leaf([1.0, 2.0])
    y = (x * x * x).sum()
    g = grad(y, x, create_graph=True)
    np.testing.assert_allclose(g.data, [3.0, 12.0])
    y.backward()  # the graph was kept
    np.testing.assert_allclose(x.grad.data, [3.0, 12.0])


def test_backward_create_graph_makes_grad_differentiable():
    x = leaf([1.0, 2.0])
    (x * x * x).sum().backward(create_graph=True)
    assert x.grad.requires_grad and x.grad.grad_fn is not None
    np.testing.assert_allclose(x.grad.data, [3.0, 12.0])
    (g2,) = grad(x.grad.sum(), [x])
    np.testing.assert_allclose(g2.data, [6.0, 12.0])


def test_backward_of_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.tensor([1.0]).sum().backward()
    x = leaf([1.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad(mg.tensor(2.0), x)


# --- grad -------------------------------------------------------------------------------------


def test_grad_returns_gradients_and_leaves_grad_untouched():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    x.grad = mg.tensor([100.0, 100.0])
    gx, gw = grad((x * w).sum(), [x, w])
    np.testing.assert_allclose(gx.data, [3.0, 4.0])
    np.testing.assert_allclose(gw.data, [1.0, 2.0])
    np.testing.assert_allclose(x.grad.data, [100.0, 100.0])
    assert w.grad is None
    single = grad((x * x).sum(), x)
    assert isinstance(single, Tensor)
    np.testing.assert_allclose(single.data, [2.0, 4.0])


def test_grad_with_grad_outputs_and_non_leaf_inputs():
    x = leaf([1.0, 2.0])
    h = x * x
    y = h * 3.0
    gh, gx = grad([y], [h, x], [mg.tensor([1.0, 2.0])])
    np.testing.assert_allclose(gh.data, [3.0, 6.0])
    np.testing.assert_allclose(gx.data, [6.0, 24.0])
    assert h.grad is None and x.grad is None


def test_grad_allow_unused():
    x, unused = leaf([1.0, 2.0]), leaf([5.0, 6.0])
    y = (x * x).sum()
    with pytest.raises(RuntimeError, match=r"input 1 .*was not used"):
        grad(y, [x, unused], retain_graph=True)
    gx, gu = grad(y, [x, unused], allow_unused=True)
    np.testing.assert_allclose(gx.data, [2.0, 4.0])
    assert gu is None


def test_grad_runs_only_the_nodes_it_needs():
    calls = []
    count = counting_function(calls)
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    y = (x * 2.0 + count.apply(w)).sum()
    np.testing.assert_allclose(grad(y, x).data, [2.0, 2.0])
    assert calls == [] and w.grad is None


def test_hessian_vector_product_of_known_function():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 3))
    x0 = rng.standard_normal(3)
    v = rng.standard_normal(3)
    x = leaf(x0)
    # f = 0.5 x.A.x + sum(exp(x)) + x0 x1 x2
    f = 0.5 * (x @ (mg.tensor(a) @ x)) + mg.exp(x).sum() + x[0] * x[1] * x[2]
    (g,) = grad(f, [x], create_graph=True)
    np.testing.assert_allclose(
        g.data, 0.5 * (a + a.T) @ x0 + np.exp(x0) + [x0[1] * x0[2], x0[0] * x0[2], x0[0] * x0[1]]
    )
    (hv,) = grad((g * mg.tensor(v)).sum(), [x])
    hessian = 0.5 * (a + a.T) + np.diag(np.exp(x0))
    hessian += np.array([[0, x0[2], x0[1]], [x0[2], 0, x0[0]], [x0[1], x0[0], 0]])
    np.testing.assert_allclose(hv.data, hessian @ v, rtol=1e-12)


@pytest.mark.parametrize(
    "f, derivatives",
    [
        (lambda x: x**4, [lambda x: 4 * x**3, lambda x: 12 * x**2, lambda x: 24 * x]),
        (mg.sin, [np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x)]),
    ],
    ids=["x**4", "sin"],
)
def test_third_derivative(f, derivatives):
    x0 = np.array([0.5, -1.5, 2.0])
    x = leaf(x0)
    y = f(x).sum()
    for derivative in derivatives:
        (y,) = grad(y, [x], create_graph=True)
        np.testing.assert_allclose(y.data, derivative(x0), rtol=1e-12)
        y = y.sum()


# --- errors inside backward -------------------------------------------------------------------


def test_exception_in_backward_names_the_node():
    class MyFn(mg.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2.0

        @staticmethod
        def backward(ctx, g):
            raise ValueError("bad rule")

    x = leaf([1.0])
    with pytest.raises(BackwardError, match="MyFnBackward raised ValueError: bad rule") as info:
        (MyFn.apply(x) * 3.0).sum().backward()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, ValueError)
    assert mg.autograd.BackwardError is mg.engine.BackwardError


def test_exception_in_hook_names_the_hooks_node():
    def bad_hook(g):
        raise KeyError("no")

    x = leaf([1.0, 2.0])
    h = x * 2.0
    h.register_hook(bad_hook)
    with pytest.raises(BackwardError, match=r"bad_hook.*MulBackward.*KeyError"):
        (h + 1.0).sum().backward()
    y = leaf([1.0])
    y.register_hook(bad_hook)
    with pytest.raises(BackwardError, match=r"bad_hook.*AccumulateGrad.*KeyError"):
        (y * 2.0).sum().backward()


# --- engine guarantees ------------------------------------------------------------------------


def test_long_chain_does_not_recurse():
    x = leaf(1.0)
    y = x
    start = time.perf_counter()
    for _ in range(100_000):
        y = y * 1.0000001
    y.backward()
    del y  # freeing a 100 000-node graph must not recurse either
    assert time.perf_counter() - start < 20.0
    np.testing.assert_allclose(x.grad.item(), 1.0000001**100_000, rtol=1e-9)


def test_fan_out_and_diamond_sum_gradients():
    x = leaf([1.0, 2.0])
    a = x * 2.0
    b, c = a * 3.0, a * 4.0
    (b + c).sum().backward()
    np.testing.assert_allclose(x.grad.data, [14.0, 14.0])
    z = leaf([1.0, 2.0])
    (z * z * z + z).sum().backward()  # z feeds four edges
    np.testing.assert_allclose(z.grad.data, 3 * np.array([1.0, 4.0]) + 1)


def test_each_node_runs_once_with_the_summed_gradient():
    calls = []
    count = counting_function(calls)
    x = leaf([1.0, 2.0])
    y = x
    for _ in range(20):  # 20 diamonds: a walk per path would make 2**20 calls
        a = count.apply(y)
        y = a * 2.0 + a * 3.0
    y.sum().backward()
    assert len(calls) == 20
    np.testing.assert_allclose(calls[0], [5.0, 5.0])
    np.testing.assert_allclose(calls[-1], [5.0**20, 5.0**20])
    np.testing.assert_allclose(x.grad.data, [5.0**20, 5.0**20])


def test_broadcasting_is_undone_at_the_edge():
    rng = np.random.default_rng(2)
    x0, y0 = rng.standard_normal((3, 1)), rng.standard_normal(4)
    x, y = leaf(x0), leaf(y0)
    (x + y).sum().backward()
    assert x.grad.shape == (3, 1) and y.grad.shape == (4,)
    np.testing.assert_allclose(x.grad.data, np.full((3, 1), 4.0))
    np.testing.assert_allclose(y.grad.data, np.full(4, 3.0))
    g = rng.standard_normal((3, 4))
    gx, gy = grad(x * y, [x, y], mg.tensor(g))
    np.testing.assert_allclose(gx.data, (g * y0).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(gy.data, (g * x0).sum(axis=0))
    s = leaf(2.0)
    (s * mg.ones(2, 3)).sum().backward()
    assert s.grad.shape == () and s.grad.item() == 6.0


def test_double_backward_through_broadcasting():
    x0, y0 = np.array([[1.0], [2.0], [4.0]]), np.array([0.5, -1.0, 2.0, 3.0])
    x, y = leaf(x0), leaf(y0)
    (gy,) = grad((x * y * y).sum(), [y], create_graph=True)
    np.testing.assert_allclose(gy.data, 2 * y0 * x0.sum())
    (gx,) = grad(gy.sum(), [x])
    assert gx.shape == (3, 1)
    np.testing.assert_allclose(gx.data, np.full((3, 1), 2 * y0.sum()))


def test_zero_dim_gradients_stay_arrays():
    x = leaf(2.0)
    (x * 2.0 + x * 3.0 + x * 4.0).backward()  # three gradients summed
    assert isinstance(x.grad.data, np.ndarray) and x.grad.item() == 9.0
    (x * 1.0).backward()
    (x * 1.0).backward()
    assert isinstance(x.grad.data, np.ndarray) and x.grad.item() == 11.0


def test_float32_leaf_keeps_its_dtype_through_promotion():
    x = leaf([1.0, 2.0], np.float32)
    y = mg.exp(x * mg.tensor([1.0, 1.0]))  # float64 output
    assert y.dtype == np.float64
    (gx,) = grad(y.sum(), [x])
    assert gx.dtype == np.float32
    np.testing.assert_allclose(gx.data, np.exp([1.0, 2.0]), rtol=1e-6)


# --- GraphTask: the interface of the distributed layer ----------------------------------------


class SendFunction(Node):
    """Stands for a send: the root of a local subgraph whose gradient comes from the peer."""

    def __init__(self, tensor):
        super().__init__()
        self.next_functions = (gradient_edge(tensor),)
        self.received = []

    def apply(self, grads):
        self.received.append(grads[0])
        return grads


class RecvFunction(Node):
    """Stands for a recv: no next functions; hands its gradient to the outside (a list)."""

    def __init__(self, outbox):
        super().__init__()
        self.outbox = outbox

    def apply(self, grads):
        self.outbox.append(grads[0])
        return ()


class DropFirst(mg.Function):
    """out = b; grad_a = None (no gradient flows to a); grad_b = grad"""

    @staticmethod
    def forward(ctx, a, b):
        return b.data.copy()

    @staticmethod
    def backward(ctx, g):
        return None, g


def seed(t):
    return Tensor(np.ones(t.shape, t.dtype))


def test_graph_task_extra_root_waits_for_supply():
    x = leaf([1.0, 2.0])
    send = SendFunction(x * 3.0)
    loss = (x * x).sum()
    grads = {}
    task = GraphTask(
        [gradient_edge(loss)],
        [seed(loss)],
        extra_roots=(send,),
        keep_graph=False,
        create_graph=False,
        capture=None,
        accumulate=lambda t, g: grads.__setitem__(t, g),
        retain_grads=True,
    )
    task.execute()
    # x's accumulator waits for the send path too: nothing reached it yet.
    assert grads == {} and send.received == []
    task.supply(send, mg.tensor([10.0, 20.0]))
    task.execute()
    assert list(grads) == [x]
    np.testing.assert_allclose(grads[x].data, [2.0 + 30.0, 4.0 + 60.0])
    np.testing.assert_allclose(send.received[0].data, [10.0, 20.0])
    assert x.grad is None


def test_graph_task_unsupplied_extra_root_does_not_run():
    calls = []
    count = counting_function(calls)
    x = leaf([1.0, 2.0])
    send = SendFunction(count.apply(x) * 2.0)
    grads = {}
    task = GraphTask([], [], extra_roots=(send,), accumulate=lambda t, g: grads.__setitem__(t, g))
    task.execute()
    assert calls == [] and send.received == [] and grads == {}
    task.supply(send, mg.tensor([1.0, -1.0]))
    task.execute()
    assert len(calls) == 1
    np.testing.assert_allclose(grads[x].data, [2.0, -2.0])
    assert x.grad is None


def test_graph_task_two_extra_roots_supplied_in_any_order():
    x = leaf([1.0, 2.0])
    send_a, send_b = SendFunction(x * 2.0), SendFunction(x * 5.0)
    grads = {}
    task = GraphTask(
        [], [], extra_roots=(send_a, send_b), accumulate=lambda t, g: grads.__setitem__(t, g)
    )
    task.supply(send_b, mg.tensor([1.0, 1.0]))
    task.execute()
    assert grads == {} and send_a.received == []
    task.supply(send_a, mg.tensor([1.0, 0.0]))
    task.execute()
    np.testing.assert_allclose(grads[x].data, [7.0, 5.0])


def test_graph_task_supply_none_means_no_gradient():
    outbox = []
    recv = RecvFunction(outbox)
    r = Tensor._make(np.array([4.0, 5.0]), grad_fn=recv)  # a received tensor
    x = leaf([1.0, 2.0])
    send = SendFunction(r * x)
    grads = {}
    task = GraphTask([], [], extra_roots=(send,), accumulate=lambda t, g: grads.__setitem__(t, g))
    task.supply(send, None)
    task.execute()
    assert send.received == [None]
    assert outbox == [None]  # the recv node still runs (it must answer its peer)
    assert grads == {}


def test_recv_function_hands_its_gradient_out():
    outbox = []
    recv = RecvFunction(outbox)
    r = Tensor._make(np.array([4.0, 5.0]), grad_fn=recv)
    assert r.requires_grad and not r.is_leaf
    x = leaf([1.0, 2.0])
    (r * x).sum().backward()
    assert len(outbox) == 1
    np.testing.assert_allclose(outbox[0].data, [1.0, 2.0])
    np.testing.assert_allclose(x.grad.data, [4.0, 5.0])


def test_recv_function_runs_even_without_gradient():
    outbox = []
    r = Tensor._make(np.array([4.0, 5.0]), grad_fn=RecvFunction(outbox))
    x = leaf([1.0, 2.0])
    (DropFirst.apply(r, x) * 3.0).sum().backward()
    assert outbox == [None]
    np.testing.assert_allclose(x.grad.data, [3.0, 3.0])


def test_graph_task_keep_graph_and_create_graph():
    x = leaf([1.0, 2.0])
    y = (x * x * x).sum()
    grads = {}
    task = GraphTask(
        [gradient_edge(y)],
        [seed(y)],
        keep_graph=True,
        create_graph=True,
        accumulate=lambda t, g: grads.__setitem__(t, g),
    )
    task.execute()
    g = grads[x]
    assert g.requires_grad
    np.testing.assert_allclose(g.data, [3.0, 12.0])
    np.testing.assert_allclose(grad(g.sum(), x, retain_graph=True).data, [6.0, 12.0])
    # keep_graph=True: the graph of y can be run again; keep_graph=False frees it.
    GraphTask([gradient_edge(y)], [seed(y)], keep_graph=False).execute()
    np.testing.assert_allclose(x.grad.data, [3.0, 12.0])
    with pytest.raises(BackwardError, match="retain_graph=True"):
        GraphTask([gradient_edge(y)], [seed(y)]).execute()


def test_graph_task_capture_and_retain_grads():
    x = leaf([1.0, 2.0])
    h = x * 2.0
    h.retain_grad()
    y = (h * h).sum()
    task = GraphTask(
        [gradient_edge(y)],
        [seed(y)],
        keep_graph=True,
        retain_grads=False,
        capture=[gradient_edge(x)],
    )
    task.execute()
    np.testing.assert_allclose(task.captured[0].data, [8.0, 16.0])
    assert x.grad is None and h.grad is None
    GraphTask([gradient_edge(y)], [seed(y)], retain_grads=True).execute()
    np.testing.assert_allclose(h.grad.data, [4.0, 8.0])
    np.testing.assert_allclose(x.grad.data, [8.0, 16.0])


def test_graph_task_retains_grads_beside_a_custom_leaf_sink():
    # The distributed engine's case: leaves go to the context's dict, a retained non-leaf's
    # gradient to its .grad, in a pass driven by supply.
    x = leaf([1.0, 2.0])
    h = x * 2.0
    h.retain_grad()
    send = SendFunction(h * 3.0)
    grads = {}
    task = GraphTask(
        [],
        [],
        extra_roots=(send,),
        retain_grads=True,
        accumulate=lambda t, g: grads.__setitem__(t, g),
    )
    task.supply(send, mg.tensor([1.0, -1.0]))
    task.execute()
    np.testing.assert_allclose(h.grad.data, [3.0, -3.0])
    assert list(grads) == [x] and x.grad is None
    np.testing.assert_allclose(grads[x].data, [6.0, -6.0])
