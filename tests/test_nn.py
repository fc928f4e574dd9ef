"""mpigrad.nn: modules with torch's names.

1. Registration: parameters and submodules by attribute, in assignment order, with torch's dotted
   names, nested and in Sequential; shared parameters given once.
2. Linear: forward against numpy in float32 and float64, derivatives against finite differences,
   torch's initialisation (bounds, distribution, reproducible from a seed), and torch's
   nn.Linear given the same weights (where torch is installed).
3. state_dict / load_state_dict round trips, and each refusal names its key; zero_grad.
4. Bad inputs raise errors whose words are asserted.
"""

import math

import numpy as np
import pytest

import mpigrad as mg
from mpigrad import Tensor, nn
from mpigrad.testing import check_grads


class Block(nn.Module):
    """Parameters and submodules assigned in an interleaved order."""

    def __init__(self):
        super().__init__()
        self.scale = Tensor(np.ones(2), requires_grad=True)
        self.body = nn.Sequential(nn.Linear(3, 4, generator=1), nn.Tanh(), nn.Linear(4, 2))
        self.shift = Tensor(np.zeros(2), requires_grad=True)
        self.head = nn.Linear(2, 1, bias=False)
        self.note = "not a parameter"

    def forward(self, x):
        return self.head(self.body(x) * self.scale + self.shift)


NAMES = [
    "scale",
    "shift",
    "body.0.weight",
    "body.0.bias",
    "body.2.weight",
    "body.2.bias",
    "head.weight",
]


# --- 1. registration --------------------------------------------------------------------------
def test_named_parameters_follow_torch_order_and_names():
    model = Block()
    assert [name for name, _ in model.named_parameters()] == NAMES
    assert [p.shape for p in model.parameters()] == [(2,), (2,), (4, 3), (4,), (2, 4), (2,), (1, 2)]
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())
    assert [name for name, _ in model.named_parameters(recurse=False)] == ["scale", "shift"]
    assert [name for name, _ in model.body.named_parameters(prefix="body")] == NAMES[2:6]
    assert [name for name, _ in model.named_modules()] == [
        "",
        "body",
        "body.0",
        "body.1",
        "body.2",
        "head",
    ]
    assert model.note == "not a parameter" and model.body[0] is model.body._modules["0"]


def test_assignment_replaces_in_place_and_unregisters():
    model = Block()
    model.scale = Tensor(np.full(2, 3.0), requires_grad=True)  # keeps its place
    assert [name for name, _ in model.named_parameters()] == NAMES
    model.shift = None  # a plain attribute now
    assert model.shift is None and "shift" not in dict(model.named_parameters())
    model.head = nn.ReLU()
    assert "head.weight" not in dict(model.named_parameters())
    del model.body
    assert [name for name, _ in model.named_parameters()] == ["scale"]
    with pytest.raises(AttributeError, match="'Block' object has no attribute 'body'"):
        _ = model.body


def test_shared_parameters_are_given_once():
    layer = nn.Linear(2, 2)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    assert [name for name, _ in tied.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert len(list(tied.named_parameters(remove_duplicate=False))) == 4


def test_sequential_is_a_sequence_applied_in_order():
    layers = [nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2, dtype=np.float64)]
    model = nn.Sequential(*layers)
    assert len(model) == 3 and list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[2]
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]
    x = mg.randn(4, 3, generator=0)
    want = layers[2](mg.sigmoid(layers[0](x)))
    np.testing.assert_array_equal(model(x).data, want.data)
    with pytest.raises(IndexError, match="Sequential index 3 out of range for 3 modules"):
        model[3]
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=5, bias=True)\n"
        "  (1): Sigmoid()\n"
        "  (2): Linear(in_features=5, out_features=2, bias=True)\n"
        ")"
    )


@pytest.mark.parametrize(
    "module, op", [(nn.ReLU(), mg.relu), (nn.Tanh(), mg.tanh), (nn.Sigmoid(), mg.sigmoid)]
)
def test_activations_call_the_ops(module, op):
    x = mg.randn(3, 4, generator=2)
    np.testing.assert_array_equal(module(x).data, op(x).data)
    assert list(module.parameters()) == []


# --- 2. Linear --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 4, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_is_x_times_weight_transposed_plus_bias(dtype, shape, bias):
    layer = nn.Linear(3, 6, bias=bias, dtype=dtype, generator=3)
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    y = layer(Tensor(x))
    want = x @ layer.weight.data.T + (layer.bias.data if bias else 0)
    assert y.dtype == dtype and y.shape == (*shape[:-1], 6)
    np.testing.assert_allclose(y.data, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert layer.weight.shape == (6, 3) and (layer.bias is None) != bias
    assert layer.weight.dtype == dtype and (not bias or layer.bias.dtype == dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_derivatives_match_finite_differences(bias):
    layer = nn.Linear(3, 4, bias=bias, dtype=np.float64, generator=5)
    x = mg.randn(5, 3, generator=6)
    check_grads(layer, [x])  # reverse and forward mode in x

    def fn(x, weight, bias=None):
        # Parameters are leaves, so forward mode's dual tensors cannot be assigned: reverse only.
        layer.weight, layer.bias = weight, bias
        return layer(x)

    params = [layer.weight, layer.bias] if bias else [layer.weight]
    check_grads(fn, [x, *params], modes=("rev",))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_initialisation_is_torch_uniform(dtype):
    n_in, n_out = 400, 1000
    layer = nn.Linear(n_in, n_out, dtype=dtype, generator=7)
    bound = 1 / math.sqrt(n_in)
    for param in (layer.weight, layer.bias):
        values = param.data.astype(np.float64).ravel()
        assert np.abs(values).max() <= dtype(bound)
    w = layer.weight.data.astype(np.float64).ravel()
    # Uniform on [-bound, bound): mean 0, variance bound^2 / 3, flat histogram, reaching the ends.
    assert abs(w.mean()) < 5 * bound / math.sqrt(3 * w.size)
    assert w.var() == pytest.approx(bound**2 / 3, rel=0.01)
    counts, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert np.all(np.abs(counts / (w.size / 10) - 1) < 0.03)
    assert w.min() < -0.999 * bound and w.max() > 0.999 * bound
    assert abs(layer.bias.data.mean()) < 5 * bound / math.sqrt(3 * n_out)


def test_linear_initialisation_is_reproducible_from_the_generator():
    def weights(generator):
        layer = nn.Linear(8, 5, generator=generator)
        return np.concatenate([layer.weight.data.ravel(), layer.bias.data])

    np.testing.assert_array_equal(weights(11), weights(11))
    np.testing.assert_array_equal(weights(11), weights(np.random.default_rng(11)))
    assert not np.array_equal(weights(11), weights(12))
    assert not np.array_equal(weights(None), weights(None))
    shared = np.random.default_rng(11)
    first, second = weights(shared), weights(shared)  # the generator advances
    np.testing.assert_array_equal(first, weights(11))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    layer = nn.Linear(7, 3, dtype=dtype, generator=13)
    ref = torch.nn.Linear(7, 3, dtype=getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.data))
        ref.bias.copy_(torch.from_numpy(layer.bias.data))
    x = np.random.default_rng(14).standard_normal((6, 7)).astype(dtype)
    cotangent = np.random.default_rng(15).standard_normal((6, 3)).astype(dtype)
    mine_x = Tensor(x, requires_grad=True)
    ref_x = torch.tensor(x, requires_grad=True)
    y, ref_y = layer(mine_x), ref(ref_x)
    y.backward(Tensor(cotangent))
    ref_y.backward(torch.from_numpy(cotangent))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-13, "atol": 0}
    for mine, theirs in [
        (y.data, ref_y),
        (mine_x.grad.data, ref_x.grad),
        (layer.weight.grad.data, ref.weight.grad),
        (layer.bias.grad.data, ref.bias.grad),
    ]:
        assert mine.dtype == dtype
        np.testing.assert_allclose(mine, theirs.detach().numpy(), **tol)


def test_names_match_torch():
    torch = pytest.importorskip("torch")

    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(2))
            self.body = torch.nn.Sequential(
                torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
            )
            self.shift = torch.nn.Parameter(torch.zeros(2))
            self.head = torch.nn.Linear(2, 1, bias=False)

    ref = TorchBlock()
    assert [name for name, _ in ref.named_parameters()] == NAMES
    assert list(ref.state_dict()) == NAMES
    assert [name for name, _ in ref.named_modules()] == [
        name for name, _ in Block().named_modules()
    ]


# --- 3. state and gradients -------------------------------------------------------------------
def test_state_dict_round_trip_copies_in_place():
    model, other = Block(), Block()
    x = mg.randn(4, 3, generator=16)
    state = model.state_dict()
    assert list(state) == NAMES
    assert all(isinstance(a, np.ndarray) for a in state.values())
    state["body.0.weight"][...] = 0.0  # a copy: the model is untouched
    assert np.abs(model.body[0].weight.data).min() > 0
    state = model.state_dict()
    arrays = [p.data for p in other.parameters()]
    assert other.load_state_dict(state) == nn.IncompatibleKeys([], [])
    assert all(p.data is a for p, a in zip(other.parameters(), arrays))  # loaded in place
    np.testing.assert_array_equal(other(x).data, model(x).data)
    for key, array in other.state_dict().items():
        np.testing.assert_array_equal(array, state[key])
        assert array is not state[key]


def _damaged(change):
    """A state_dict that would change every parameter, then damaged by ``change``."""
    state = {key: array + 1 for key, array in Block().state_dict().items()}
    change(state)
    return state


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("body.2.bias"), "missing key 'body.2.bias' \\(1 missing in all"),
        (
            lambda s: [s.pop(k) for k in ("shift", "head.weight")],
            "missing key 'shift' \\(2 missing in all: 'shift', 'head.weight'\\)",
        ),
        (lambda s: s.update(extra=np.ones(1)), "unexpected key 'extra' \\(1 unexpected"),
        (
            lambda s: s.update({"body.0.weight": np.ones((3, 4), np.float32)}),
            "'body.0.weight' has shape \\(3, 4\\) in the state_dict but \\(4, 3\\) in the module",
        ),
        (
            lambda s: s.update({"body.0.bias": np.ones(4)}),
            "'body.0.bias' has dtype float64 in the state_dict but float32 in the module",
        ),
    ],
    ids=["missing", "missing-several", "unexpected", "shape", "dtype"],
)
def test_load_state_dict_refuses_and_loads_nothing(change, message):
    model = Block()
    before = model.state_dict()
    state = _damaged(change)
    with pytest.raises(RuntimeError, match="load_state_dict of Block: " + message):
        model.load_state_dict(state)
    for key, array in model.state_dict().items():
        np.testing.assert_array_equal(array, before[key])


def test_load_state_dict_not_strict_loads_the_common_keys():
    model, source = Block(), Block()
    state = source.state_dict()
    del state["head.weight"]
    state["extra"] = np.ones(1)
    assert model.load_state_dict(state, strict=False) == (["head.weight"], ["extra"])
    np.testing.assert_array_equal(model.body[2].weight.data, source.body[2].weight.data)
    assert not np.array_equal(model.head.weight.data, source.head.weight.data)
    state["body.0.weight"] = np.ones((3, 4), np.float32)
    with pytest.raises(RuntimeError, match="'body.0.weight' has shape"):
        model.load_state_dict(state, strict=False)


def test_zero_grad():
    model = Block()
    model(mg.randn(4, 3, generator=17, dtype=np.float32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    grad = model.body[0].weight.grad.data
    model.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.data == 0) for p in model.parameters())
    assert model.body[0].weight.grad.data is grad
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# --- 4. bad inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 3), "in_features must be a positive integer, got 0"),
        ((-2, 3), "in_features must be a positive integer, got -2"),
        ((3, 0), "out_features must be a positive integer, got 0"),
        ((2.5, 3), "in_features must be a positive integer, got 2.5"),
    ],
)
def test_linear_refuses_bad_sizes(args, message):
    with pytest.raises(ValueError, match=f"Linear: {message}"):
        nn.Linear(*args)


@pytest.mark.parametrize("shape", [(5, 4), (4,), ()])
def test_linear_refuses_an_input_of_the_wrong_width(shape):
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError) as info:
        layer(mg.zeros(*shape, dtype=np.float32))
    assert str(info.value) == (
        "Linear(in_features=3, out_features=2, bias=True): the input's last dimension must be "
        f"in_features=3, got an input of shape {shape}"
    )


def test_sequential_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="Sequential: argument 1 is a function, not a Module"):
        nn.Sequential(nn.Linear(2, 2), mg.relu)


def test_module_misuse_is_named():
    class NoInit(nn.Module):
        def __init__(self):
            self.weight = mg.zeros(2, requires_grad=True)

    with pytest.raises(
        AttributeError, match="NoInit: call Module.__init__\\(\\) before assigning 'weight'"
    ):
        NoInit()
    with pytest.raises(NotImplementedError, match="Module defines no forward"):
        nn.Module()(1)
    model = nn.Module()
    w = mg.ones(2, requires_grad=True)
    with pytest.raises(
        TypeError,
        match="Module.weight: a parameter must be a leaf tensor, "
        "this one has grad_fn=<MulBackward>",
    ):
        model.weight = w * 2


def test_linear_weight_gradient_has_the_weights_row_major_layout():
    # what optimizers and DistributedDataParallel's buckets read at memory speed
    layer = nn.Linear(6, 5, dtype=np.float64, generator=0)
    mg.cross_entropy(layer(np.ones((4, 6))), np.array([1, 2, 0, 4])).backward()
    assert layer.weight.grad.data.flags.c_contiguous
