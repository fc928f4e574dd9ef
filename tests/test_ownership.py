"""Gradients a user is handed are the user's (Note [gradient ownership] in engine.py): ``.grad``,
``autograd.grad``'s results and what the leaf sink keeps are writable and share memory with
nothing else the user can reach; hooks get a read-only gradient."""

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.autograd import grad
from mpigrad.engine import GraphTask, added
from mpigrad.graph import Node, gradient_edge


def leaf(values):
    return mg.tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def assert_own(*grads, apart_from=()):
    """Each gradient writable, and no two of them (or of them and ``apart_from``) sharing
    memory."""
    for i, g in enumerate(grads):
        assert g.flags.writeable, f"gradient {i} is read-only"
    arrays = [*grads, *apart_from]
    for i, a in enumerate(arrays):
        for j, b in enumerate(arrays[:i]):
            assert not np.shares_memory(a, b), f"arrays {j} and {i} share memory"


def test_a_plain_leafs_grad_is_writable():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    assert_own(x.grad.data)
    x.grad.data /= 3.0  # as a user averaging gradients does
    np.testing.assert_array_equal(x.grad.data, [1.0, 1.0])


@pytest.mark.parametrize("weighted", [False, True], ids=["through-sum", "through-mul"])
def test_the_two_inputs_of_add_get_gradients_of_their_own(weighted):
    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    s = x + y
    (s * mg.tensor([5.0, 6.0]) if weighted else s).sum().backward()
    assert_own(x.grad.data, y.grad.data)
    expected = [5.0, 6.0] if weighted else [1.0, 1.0]
    x.grad.data[...] = -1.0
    np.testing.assert_array_equal(y.grad.data, expected)


def test_the_two_inputs_of_add_get_gradients_of_their_own_under_create_graph():
    x, y, w = leaf([1.0, 2.0]), leaf([3.0, 4.0]), leaf([5.0, 6.0])
    ((x + y) * w).sum().backward(create_graph=True)
    assert_own(x.grad.data, y.grad.data)
    assert x.grad is not y.grad
    np.testing.assert_array_equal(y.grad.data, [5.0, 6.0])
    # The gradients stay differentiable: d/dw sum(y.grad) = 1 per element.
    (g,) = grad(y.grad.sum(), [w])
    np.testing.assert_array_equal(g.data, [1.0, 1.0])


@pytest.mark.parametrize(
    "f",
    [
        lambda x: (x.reshape(3, 2) * 2.0).sum(),
        lambda x: (x.transpose(0, 1) * 2.0).sum(),
        lambda x: (x[:, 1:] * 2.0).sum(),
        lambda x: x[1:].sum(),
        lambda x: x.sum(),
        lambda x: mg.broadcast_to(x, (4, 2, 3)).sum(),
    ],
    ids=["reshape", "transpose", "getitem", "getitem-sum", "sum", "broadcast"],
)
def test_a_leaf_reached_through_views_gets_a_writable_grad(f):
    x = leaf(np.arange(6.0).reshape(2, 3))
    f(x).backward()
    assert_own(x.grad.data, apart_from=[x.data])
    assert x.grad.shape == (2, 3)


class ReturnsForwardData(mg.Function):
    """out = k * x + y * y / 2 with k = 2; grad_x = k, grad_y = y (right where grad = 1): the rule
    returns an array it kept from forward and a saved input as gradients."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(y)
        ctx.k = np.full(x.shape, 2.0)
        return x.data * ctx.k + y.data * y.data / 2

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return ctx.k, y


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_custom_function_returning_forward_data_does_not_alias_it(create_graph):
    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    ReturnsForwardData.apply(x, y).sum().backward(create_graph=create_graph)
    np.testing.assert_array_equal(x.grad.data, [2.0, 2.0])
    np.testing.assert_array_equal(y.grad.data, y.data)
    assert_own(x.grad.data, y.grad.data, apart_from=[y.data])
    y.grad.data[...] = 0.0
    np.testing.assert_array_equal(y.data, [3.0, 4.0])


def test_a_node_returning_an_array_it_keeps_does_not_alias_it():
    class Keeps(Node):
        def __init__(self, tensor):
            super().__init__()
            self.next_functions = (gradient_edge(tensor),)
            self.kept = np.ones(2)

        def apply(self, grads):
            return (self.kept,)

    x = leaf([1.0, 2.0])
    node = Keeps(x)
    sink = {}  # as the distributed context keeps its leaves' gradients
    task = GraphTask(
        [],
        [],
        extra_roots=(node,),
        accumulate=lambda t, g: sink.__setitem__(t, added(sink.get(t), g)),
    )
    task.supply(node, np.zeros(2))
    task.execute()
    assert_own(sink[x].data, apart_from=[node.kept])


def test_a_hook_gets_a_read_only_gradient_and_the_leaf_a_copy():
    stored = []
    x = leaf([1.0, 2.0])
    h = x * 1.0
    h.register_hook(stored.append)
    x.register_hook(stored.append)
    (h * 3.0).sum().backward()
    on_h, on_x = stored
    for g in stored:
        with pytest.raises(ValueError, match="read-only"):
            g.data[...] = 0.0
    assert_own(x.grad.data)
    assert not np.shares_memory(x.grad.data, on_h.data)
    assert not np.shares_memory(x.grad.data, on_x.data)
    x.grad.data[...] = 0.0
    np.testing.assert_array_equal(on_x.data, [3.0, 3.0])


def test_a_hooks_replacement_is_not_aliased_by_the_grad():
    replacement = np.array([7.0, 8.0])
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: mg.from_numpy(replacement))  # shares the array
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [7.0, 8.0])
    assert_own(x.grad.data, apart_from=[replacement])


def test_retain_grad_then_a_reshape_to_the_leaf():
    x = leaf([1.0, 2.0, 3.0, 4.0])
    h = x.reshape(2, 2)
    h.retain_grad()
    (h * 3.0).sum().backward()
    assert_own(h.grad.data, x.grad.data)
    h.grad.data[...] = 0.0
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0, 3.0, 3.0])


def test_autograd_grad_results_are_the_callers():
    x = leaf([1.0, 2.0])
    (g,) = grad(x.sum(), [x])  # a broadcast of the seed: read-only in the pass
    assert_own(g.data)
    g1, g2 = grad((x * 3.0).sum(), [x, x])
    assert_own(g1.data, g2.data)
    h = x.reshape(2, 1)
    gh, gx = grad((h * 3.0).sum(), [h, x])
    assert_own(gh.data, gx.data)
    x2 = leaf([1.0, 2.0])
    x2.sum().backward(inputs=[x2])
    assert_own(x2.grad.data)


def test_a_second_backward_adds_into_the_grad_in_place():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    first = x.grad.data
    (x * 4.0).sum().backward()
    assert x.grad.data is first
    np.testing.assert_array_equal(first, [7.0, 7.0])


def test_a_user_assigned_grad():
    x = leaf([1.0, 2.0])
    mine = np.array([10.0, 20.0])
    x.grad = mg.from_numpy(mine)
    (x * 3.0).sum().backward()
    assert x.grad.data is mine  # added in place, as torch does
    np.testing.assert_array_equal(mine, [13.0, 23.0])

    frozen = np.array([10.0, 20.0])
    frozen.flags.writeable = False
    x.grad = mg.from_numpy(frozen)
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(frozen, [10.0, 20.0])
    np.testing.assert_array_equal(x.grad.data, [13.0, 23.0])
    assert_own(x.grad.data, apart_from=[frozen])


def test_a_differentiable_seed_is_not_aliased_by_the_grad():
    x = leaf([1.0, 2.0])
    seed = leaf([10.0, 20.0])
    x.reshape(2, 1).backward(seed.reshape(2, 1))
    np.testing.assert_array_equal(x.grad.data, [10.0, 20.0])
    assert_own(x.grad.data, apart_from=[seed.data])


@pytest.mark.parametrize("through", ["leaf", "reshape", "mul", "grad"])
def test_a_callers_seed_array_is_read_and_never_handed_out(through):
    """The caller's seed enters the pass read-only, uncopied: a rule computes from it, and where
    it reaches the user unchanged (a leaf's .grad, a captured gradient) the user gets a copy."""
    x = leaf([1.0, 2.0])
    seed = np.array([10.0, 20.0])
    if through == "grad":
        (g,) = grad(x, [x], [seed])
    else:
        y = {"leaf": x, "reshape": x.reshape(2), "mul": x * 2.0}[through]
        y.backward(seed)
        g = x.grad
    assert seed.flags.writeable
    np.testing.assert_array_equal(seed, [10.0, 20.0])
    np.testing.assert_array_equal(g.data, [20.0, 40.0] if through == "mul" else [10.0, 20.0])
    assert_own(g.data, apart_from=[seed])
    g.data[...] = 0.0
    np.testing.assert_array_equal(seed, [10.0, 20.0])


def test_a_seed_of_another_dtype_is_converted():
    x = mg.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    seed = np.array([3.0, 4.0])
    (x * 2.0).backward(seed)
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, [6.0, 8.0])
    np.testing.assert_array_equal(seed, [3.0, 4.0])


def test_the_leaf_sink_keeps_a_writable_gradient_and_copies_a_read_only_one():
    mine = mg.Tensor(np.ones(3))
    assert added(None, mine) is mine
    shared = np.ones(3)
    shared.flags.writeable = False
    kept = added(None, mg.from_numpy(shared))
    assert_own(kept.data, apart_from=[shared])
    np.testing.assert_array_equal(kept.data, [1.0, 1.0, 1.0])


def test_forward_over_reverse_the_inputs_of_add_get_their_own_gradients_and_tangents():
    from mpigrad.autograd import forward_ad as fwad

    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    with fwad.dual_level():
        w = fwad.make_dual(mg.tensor([5.0, 6.0]), mg.tensor([1.0, -1.0]))
        ((x + y) * w).sum().backward()  # x.grad = y.grad = w, each with w's tangent
        assert_own(x.grad.data, y.grad.data)
        for g in (x.grad, y.grad):
            np.testing.assert_array_equal(g.data, [5.0, 6.0])
            np.testing.assert_array_equal(fwad.unpack_dual(g).tangent.data, [1.0, -1.0])
