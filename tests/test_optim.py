"""mpigrad.optim: SGD, Adam and AdamW against the update formulas written out here in numpy,
against torch.optim where torch is installed (`make torch`), and the Optimizer machinery:
parameter groups, state dicts, zero_grad, in-place steps without allocation, bad input.

Parity with torch: the same float64 parameters after 20 steps to 1e-12 for every combination
of options, the gradients computed by mpigrad at mpigrad's parameters and fed to torch.
"""

import copy
import inspect
import itertools
import tracemalloc

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.optim import SGD, Adam, AdamW

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (`make torch`)")

TOL = 1e-12
RNG = np.random.default_rng(2024)
W0, B0 = RNG.normal(size=(3, 4)), RNG.normal(size=4)
X, T = RNG.normal(size=(6, 3)), RNG.normal(size=(6, 4))


def _params():
    """The two parameters of the test loss, (W, b), at their initial values."""
    return [mg.tensor(W0, requires_grad=True), mg.tensor(B0, requires_grad=True)]


def _backward(params):
    """Set ``.grad`` of (W, b) to the gradient of sum((tanh(X @ W + b) - T)^2)."""
    w, b = params
    for p in params:
        p.grad = None
    (((mg.tanh(mg.tensor(X) @ w + b) - T) ** 2).sum()).backward()


def _train(optimizer, params, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        _backward(params)
        optimizer.step()


def _options(**choices):
    """Every combination of the options' choices, as a list of dicts."""
    names = list(choices)
    return [dict(zip(names, values)) for values in itertools.product(*choices.values())]


SGD_OPTIONS = [
    o
    for o in _options(
        momentum=[0, 0.9], dampening=[0, 0.5], weight_decay=[0, 0.1], nesterov=[False, True]
    )
    if not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0)
]
ADAM_OPTIONS = _options(
    weight_decay=[0, 0.1], amsgrad=[False, True], betas=[(0.9, 0.999), (0.3, 0.8)]
)
CASES = (
    [("SGD", dict(lr=0.05, **o)) for o in SGD_OPTIONS]
    + [("Adam", dict(lr=0.05, **o)) for o in ADAM_OPTIONS]
    + [("AdamW", dict(lr=0.05, **o)) for o in ADAM_OPTIONS]
)


def _case_id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items() if k != "lr")


# --- against torch.optim ---------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_twenty_steps_match_torch(case):
    name, options = case
    params = _params()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours_opt = getattr(mg.optim, name)(params, **options)
    their_opt = getattr(torch.optim, name)(theirs, **options)
    for _ in range(20):
        _backward(params)
        for p, q in zip(params, theirs):
            q.grad = torch.tensor(p.grad.data.copy())
        ours_opt.step()
        their_opt.step()
    for p, q in zip(params, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=0, atol=TOL)
    assert not np.allclose(params[0].data, W0)  # the steps did move the parameters


@needs_torch
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_signatures_and_state_dict_keys_are_torch_s(name):
    ours, theirs = getattr(mg.optim, name), getattr(torch.optim, name)
    positional = [
        p for p in inspect.signature(ours).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    their_parameters = inspect.signature(theirs).parameters
    assert [p.name for p in positional] == list(their_parameters)[: len(positional)]
    for p in positional[1:]:
        assert p.default == their_parameters[p.name].default, p.name
    options = dict(momentum=0.9) if name == "SGD" else dict(amsgrad=True)
    params = _params()
    their_params = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours_opt, their_opt = ours(params, **options), theirs(their_params, **options)
    _train(ours_opt, params, 2)
    for q in their_params:
        q.grad = torch.ones_like(q)
    their_opt.step()
    ours_sd, theirs_sd = ours_opt.state_dict(), their_opt.state_dict()
    assert ours_sd["state"].keys() == theirs_sd["state"].keys() == {0, 1}
    assert ours_sd["state"][0].keys() == theirs_sd["state"][0].keys()
    assert ours_sd["param_groups"][0].keys() <= theirs_sd["param_groups"][0].keys()
    assert ours_sd["param_groups"][0]["params"] == theirs_sd["param_groups"][0]["params"]


# --- against the formulas, written out ------------------------------------------------------

GRADS = [RNG.normal(size=(3, 4)) * scale for scale in (2.0, 0.1, 0.05, 1.0, 0.3)]


def _sgd_formula(p, grads, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
    buffer = None
    for g in grads:
        g = g + weight_decay * p
        if momentum != 0:
            buffer = g if buffer is None else momentum * buffer + (1 - dampening) * g
            g = g + momentum * buffer if nesterov else buffer
        p = p - lr * g
    return p


def _adam_formula(
    p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, decoupled=False
):
    b1, b2 = betas
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat = m / (1 - b1**t)
        v_hat = (v_max if amsgrad else v) / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


FORMULA_CASES = [
    (SGD, dict(lr=0.1), _sgd_formula),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.2), _sgd_formula),
    (SGD, dict(lr=0.1, momentum=0.8, weight_decay=0.2, nesterov=True), _sgd_formula),
    (Adam, dict(lr=0.1), _adam_formula),
    (Adam, dict(lr=0.1, betas=(0.5, 0.9), weight_decay=0.2, amsgrad=True), _adam_formula),
    (
        AdamW,
        dict(lr=0.1, weight_decay=0.2),
        lambda p, g, **o: _adam_formula(p, g, decoupled=True, **o),
    ),
    (
        AdamW,
        dict(lr=0.1, eps=1e-3, weight_decay=0.2, amsgrad=True),
        lambda p, g, **o: _adam_formula(p, g, decoupled=True, **o),
    ),
]


@pytest.mark.parametrize(
    "cls, options, formula",
    FORMULA_CASES,
    ids=[f"{c.__name__}-{'-'.join(map(str, o.values()))}" for c, o, _ in FORMULA_CASES],
)
def test_steps_follow_the_update_formulas(cls, options, formula):
    p = mg.tensor(W0, requires_grad=True)
    optimizer = cls([p], **options)
    for g in GRADS:
        p.grad = mg.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(p.data, formula(W0, GRADS, **options), rtol=0, atol=TOL)


def test_adamw_defaults_to_decoupled_weight_decay_of_one_hundredth():
    p = mg.tensor(W0, requires_grad=True)
    optimizer = AdamW([p])
    assert optimizer.defaults["weight_decay"] == 1e-2 and optimizer.defaults["lr"] == 1e-3
    p.grad = mg.tensor(GRADS[0])
    optimizer.step()
    expected = _adam_formula(W0, GRADS[:1], 1e-3, weight_decay=1e-2, decoupled=True)
    np.testing.assert_allclose(p.data, expected, rtol=0, atol=TOL)


def test_a_parameter_without_a_gradient_is_skipped():
    w, b = _params()
    optimizer = Adam([w, b], lr=0.1, weight_decay=0.5)
    w.grad = mg.tensor(GRADS[0])
    optimizer.step()
    np.testing.assert_array_equal(b.data, B0)  # weight decay does not move it either
    assert b not in optimizer.state and optimizer.state[w]["step"] == 1


# --- parameter groups ------------------------------------------------------------------------


def test_groups_take_their_own_options_and_the_defaults_for_the_rest():
    w, b = _params()
    optimizer = SGD([{"params": [w], "lr": 0.1}, {"params": b}], lr=0.01, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in optimizer.param_groups)
    assert optimizer.param_groups[1]["params"] == [b]  # a single Tensor as a group's params
    w_alone, b_alone = _params()
    alone = [SGD([w_alone], lr=0.1, momentum=0.9), SGD([b_alone], lr=0.01, momentum=0.9)]
    for _ in range(5):
        _backward([w, b])
        _backward([w_alone, b_alone])
        optimizer.step()
        for o in alone:
            o.step()
    np.testing.assert_array_equal(w.data, w_alone.data)
    np.testing.assert_array_equal(b.data, b_alone.data)


def test_add_param_group_fills_defaults_and_steps_the_new_group():
    w, b = _params()
    optimizer = Adam([w], lr=0.1)
    optimizer.add_param_group({"params": [b], "amsgrad": True})
    group = optimizer.param_groups[1]
    assert group["lr"] == 0.1 and group["amsgrad"] and group["betas"] == (0.9, 0.999)
    b.grad = mg.tensor(np.ones(4))
    optimizer.step()
    assert "max_exp_avg_sq" in optimizer.state[b] and not np.array_equal(b.data, B0)


# --- state dicts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, options",
    [
        (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        (Adam, dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
        (AdamW, dict(lr=0.05)),
    ],
    ids=["SGD", "Adam", "AdamW"],
)
def test_state_dict_round_trip_continues_the_same_trajectory(cls, options):
    straight = _params()
    _train(
        cls([{"params": straight[:1]}, {"params": straight[1:], "lr": 0.02}], **options),
        straight,
        10,
    )

    params = _params()
    first = cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], **options)
    _train(first, params, 5)
    saved = first.state_dict()
    snapshot = copy.deepcopy(saved)
    assert [g["params"] for g in saved["param_groups"]] == [[0], [1]]
    assert saved["param_groups"][1]["lr"] == 0.02
    # A fresh optimizer built with other options takes the saved ones.
    second = cls([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    second.load_state_dict(saved)
    assert [g["lr"] for g in second.param_groups] == [0.05, 0.02]
    assert all(g["params"] == [p] for g, p in zip(second.param_groups, params))
    _train(second, params, 5)
    for p, q in zip(params, straight):
        np.testing.assert_array_equal(p.data, q.data)
    # Neither the steps of the first optimizer nor those of the second changed what was saved.
    _train(first, params, 1)
    for i, state in snapshot["state"].items():
        for key, value in state.items():
            np.testing.assert_array_equal(saved["state"][i][key], value)


def test_load_state_dict_refuses_a_different_layout():
    w, b = _params()
    saved = SGD([w, b], momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="state dict has 1 parameter groups, this optimizer 2"):
        SGD([{"params": [w]}, {"params": [b]}]).load_state_dict(saved)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state dict, 1 in"):
        SGD([w]).load_state_dict(saved)
    optimizer = SGD([w, b], momentum=0.9)
    _train(optimizer, [w, b], 1)
    swapped = optimizer.state_dict()
    swapped["state"][0], swapped["state"][1] = swapped["state"][1], swapped["state"][0]
    with pytest.raises(ValueError, match=r"'momentum_buffer' of parameter 0 has shape \(4,\)"):
        SGD([w, b]).load_state_dict(swapped)


# --- zero_grad -------------------------------------------------------------------------------


def test_zero_grad_sets_to_none_by_default():
    params = _params()
    optimizer = SGD(params)
    _backward(params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_zero_grad_without_set_to_none_zeroes_the_gradient_arrays_in_place():
    params = _params()
    optimizer = SGD(params)
    _backward(params)
    arrays = [p.grad.data for p in params]
    optimizer.zero_grad(set_to_none=False)
    for p, array in zip(params, arrays):
        assert p.grad.data is array and not np.any(array)


def test_zero_grad_without_set_to_none_replaces_read_only_and_recorded_gradients():
    w, b = _params()
    shared = np.ones(3 * 4)
    w.grad = mg.from_numpy(np.broadcast_to(shared[:4], (3, 4)))  # read-only
    y = mg.tensor(2.0, requires_grad=True)
    (b * b * y).sum().backward(create_graph=True)
    recorded = b.grad
    assert recorded.requires_grad
    recorded_values = recorded.data.copy()
    SGD([w, b]).zero_grad(set_to_none=False)
    np.testing.assert_array_equal(shared, 1.0)
    np.testing.assert_array_equal(recorded.data, recorded_values)
    for p in (w, b):
        assert not p.grad.requires_grad and p.grad.shape == p.shape and not np.any(p.grad.data)


# --- in place, without allocating ------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, options",
    [
        (SGD, dict(momentum=0.9, weight_decay=0.1, nesterov=True)),
        (SGD, dict(momentum=0.9, dampening=0.1)),
        (Adam, dict(weight_decay=0.1, amsgrad=True)),
        (AdamW, dict(amsgrad=True)),
    ],
    ids=["SGD-nesterov", "SGD-dampening", "Adam", "AdamW"],
)
def test_steps_write_in_place_and_allocate_only_on_the_first(cls, options):
    rng = np.random.default_rng(5)
    params = [
        mg.tensor(rng.normal(size=shape), requires_grad=True) for shape in [(64, 64), (32, 32)]
    ]
    for p in params:
        p.grad = mg.tensor(rng.normal(size=p.shape))
    arrays = [p.data for p in params]
    optimizer = cls(params, **options)
    optimizer.step()
    state = {id(p): dict(optimizer.state[p]) for p in params}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(5):
            optimizer.step()
        grown = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert grown < 2048, f"{grown} bytes allocated by 5 steps (parameters of 32 and 8 KiB)"
    for p, array in zip(params, arrays):
        assert p.data is array
        for key, value in state[id(p)].items():
            if isinstance(value, np.ndarray):
                assert optimizer.state[p][key] is value, key


# --- bad input -------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("SGD", dict(lr=-0.1), "invalid learning rate: -0.1"),
    ("SGD", dict(momentum=-0.5), "invalid momentum value: -0.5"),
    ("SGD", dict(weight_decay=-1.0), "invalid weight_decay value: -1.0"),
    ("SGD", dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (
        "SGD",
        dict(momentum=0.9, dampening=0.1, nesterov=True),
        "Nesterov momentum requires a momentum and zero dampening",
    ),
    ("Adam", dict(lr=-1e-3), "invalid learning rate: -0.001"),
    ("Adam", dict(eps=-1e-8), "invalid epsilon value: -1e-08"),
    ("Adam", dict(betas=(1.0, 0.999)), r"invalid beta parameter at index 0: 1.0 \(must lie in"),
    ("Adam", dict(betas=(0.9, -0.1)), "invalid beta parameter at index 1: -0.1"),
    ("AdamW", dict(weight_decay=-0.01), "invalid weight_decay value: -0.01"),
    ("AdamW", dict(betas=(0.9, 1.5)), "invalid beta parameter at index 1: 1.5"),
]


def _bad_id(case):
    return f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=_bad_id)
def test_options_out_of_range_raise(case):
    name, options, words = case
    with pytest.raises(ValueError, match=f"^{name}: {words}"):
        getattr(mg.optim, name)(_params(), **options)
    group = {"params": _params(), **options}
    with pytest.raises(ValueError, match=f"^{name}: parameter group 0: {words}"):
        getattr(mg.optim, name)([group])


@needs_torch
@pytest.mark.parametrize("case", BAD_OPTIONS, ids=_bad_id)
def test_torch_refuses_the_same_options(case):
    name, options, _ = case
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **options)


def test_bad_parameters_raise():
    w, b = _params()
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got a Tensor"):
        SGD(w)
    with pytest.raises(ValueError, match="SGD got an empty parameter list"):
        SGD([])
    with pytest.raises(TypeError, match="can only optimize Tensors, got ndarray"):
        Adam([w, W0])
    with pytest.raises(ValueError, match=r"can't optimize a non-leaf Tensor \(grad_fn=Mul"):
        Adam([w * 2.0])
    with pytest.raises(ValueError, match="group 1: some parameters appear more than once"):
        SGD([{"params": [w, b]}, {"params": [b]}])
    with pytest.raises(ValueError, match="group 0: some parameters appear more than once"):
        SGD([w, b, w])
    with pytest.raises(TypeError, match="^SGD: parameters must come in an ordered collection"):
        SGD({w, b})
    with pytest.raises(TypeError, match="^SGD: parameter group 0: parameters must come in an"):
        SGD([{"params": {w, b}}])
    with pytest.raises(ValueError, match="can only optimize floating-point Tensors, got int64"):
        SGD([mg.tensor([1, 2])])
    with pytest.raises(ValueError, match="a parameter's array is read-only"):
        SGD([mg.from_numpy(np.broadcast_to(B0, (3, 4)))])
    optimizer = SGD([w, b])
    b.grad = mg.tensor(np.ones(3))
    with pytest.raises(ValueError, match=r"SGD.step: parameter 1 has shape \(4,\) but its grad"):
        optimizer.step()
