"""``DistributedDataParallel``: the gradients it leaves in ``.grad`` are those of the serial
model on the union of the ranks' shards, whatever the buckets, with unused parameters, uneven
shards and ``no_sync``; every rank's parameters stay bitwise the same through training; bad
input raises on every rank.

The serial reference runs on every rank, on the whole data set, from rank 0's initial
parameters (which the DDP broadcast).
"""

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
from mpigrad.optim import SGD

# bucket_cap_mb: the default (one bucket), buckets of a few parameters, and buckets smaller than
# one parameter (each parameter in a bucket of its own).
CAPS = [25, 4e-4, 1e-5]


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def mlp(seed, dtype=np.float64, hidden=16, out=3):
    return mg.nn.Sequential(
        mg.nn.Linear(5, hidden, dtype=dtype, generator=seed),
        mg.nn.Tanh(),
        mg.nn.Linear(hidden, hidden, dtype=dtype, generator=seed + 1),
        mg.nn.Tanh(),
        mg.nn.Linear(hidden, out, dtype=dtype, generator=seed + 2),
    )


def twin(model):
    """A serial copy of ``model``'s parameters (after the DDP broadcast them)."""
    copy = mlp(0, model[0].weight.dtype, model[0].weight.shape[0])
    for p, q in zip(copy.parameters(), model.parameters()):
        p.data[...] = q.data
    return copy


def data(n, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(dtype), rng.normal(size=(n, 3)).astype(dtype)


def shard(array, rank, size, counts=None):
    counts = counts or [len(array) // size] * size
    start = sum(counts[:rank])
    return array[start : start + counts[rank]]


def squared_error(model, x, t, mean):
    error = ((model(mg.tensor(x)) - mg.tensor(t)) ** 2).sum(axis=1)
    return error.mean() if mean else error.sum()


def assert_grads(params, reference, rtol=1e-12):
    for i, (p, q) in enumerate(zip(params, reference)):
        assert p.grad is not None, f"parameter {i} has no gradient"
        np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("cap", CAPS)
def test_averaged_gradients_are_the_full_batch_gradient(comm, cap):
    rank, size = comm.rank, comm.size
    model = dist.DistributedDataParallel(mlp(10 * rank), bucket_cap_mb=cap)  # rank 0's values
    serial = twin(model.module)
    x, t = data(6 * size)
    for _ in range(3):  # the first backward rebuilds the buckets: check before and after
        for m in (model, serial):
            m.zero_grad() if m is serial else model.module.zero_grad()
        squared_error(model, shard(x, rank, size), shard(t, rank, size), mean=True).backward()
        squared_error(serial, x, t, mean=True).backward()
        assert_grads(model.parameters(), list(serial.parameters()))
        x = x[::-1].copy()  # other shards next step
    if cap == CAPS[0]:
        assert len(model._buckets) == 1  # fused: one allreduce for every gradient
    if cap == CAPS[-1]:
        assert len(model._buckets) == len(model.parameters())


@pytest.mark.parametrize("cap", CAPS[::2])
def test_uneven_shards_sum(comm, cap):
    rank, size = comm.rank, comm.size
    counts = [2 + 3 * r for r in range(size)]
    model = dist.DistributedDataParallel(mlp(3), bucket_cap_mb=cap, average=False)
    serial = twin(model.module)
    x, t = data(sum(counts), seed=1)
    squared_error(
        model, shard(x, rank, size, counts), shard(t, rank, size, counts), False
    ).backward()
    squared_error(serial, x, t, mean=False).backward()
    assert_grads(model.parameters(), list(serial.parameters()))


@pytest.mark.parametrize("cap", CAPS)
def test_a_parameter_unused_on_some_ranks_contributes_zeros_there(comm, cap):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(rank)
    w, b, extra, never = (
        mg.tensor(rng.normal(size=s), requires_grad=True) for s in [(5, 3), (3,), (5, 3), (2,)]
    )
    model = dist.DistributedDataParallel([w, b, extra, never], bucket_cap_mb=cap, average=False)
    ref = [mg.tensor(p.data.copy(), requires_grad=True) for p in (w, b, extra)]
    x, t = data(4 * size, seed=2)

    def loss(w, b, extra, x, t, uses_extra):
        out = mg.tensor(x) @ w + b
        if uses_extra:
            out = out + mg.tensor(x) @ extra
        return ((mg.tanh(out) - mg.tensor(t)) ** 2).sum()

    for step in range(size + 1):  # extra: used by one rank a step (on none in the last)
        for p in model.parameters() + ref:
            p.grad = None
        users = [step] if step < size else []
        loss(w, b, extra, shard(x, rank, size), shard(t, rank, size), rank in users).backward()
        for r in range(size):
            loss(*ref, shard(x, r, size), shard(t, r, size), r in users).backward()
        assert_grads([w, b], ref[:2])
        if users:
            assert_grads([extra], ref[2:])
        else:
            assert extra.grad is None  # no rank had a gradient: none on any
        assert never.grad is None


@pytest.mark.parametrize("cap", CAPS[::2])
def test_no_sync_accumulates_locally_then_averages(comm, cap):
    rank, size = comm.rank, comm.size
    model = dist.DistributedDataParallel(mlp(4), bucket_cap_mb=cap)
    serial, local = twin(model.module), twin(model.module)
    x, t = data(4 * size, seed=3)
    halves = [(x[: 2 * size], t[: 2 * size]), (x[2 * size :], t[2 * size :])]
    mine = [(shard(x, rank, size), shard(t, rank, size)) for x, t in halves]
    with model.no_sync():
        squared_error(model, *mine[0], mean=True).backward()
    squared_error(local, *mine[0], mean=True).backward()
    assert_grads(model.parameters(), list(local.parameters()))  # this rank's own, unaveraged
    squared_error(model, *mine[1], mean=True).backward()
    for x, t in halves:
        squared_error(serial, x, t, mean=True).backward()
    assert_grads(model.parameters(), list(serial.parameters()))


def test_float32_and_float64_parameters_together(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(5 + rank)
    w32 = mg.tensor(rng.normal(size=(5, 3)).astype(np.float32), requires_grad=True)
    w64 = mg.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    model = dist.DistributedDataParallel([w32, w64])
    ref = [mg.tensor(p.data.copy(), requires_grad=True) for p in (w32, w64)]
    x, _ = data(3 * size, seed=4)

    def loss(w32, w64, x):
        return (
            mg.tanh(mg.tensor(x.astype(np.float32)) @ w32).astype(np.float64) * (mg.tensor(x) @ w64)
        ).mean()

    loss(w32, w64, shard(x, rank, size)).backward()
    loss(*ref, x).backward()
    assert w32.grad.dtype == np.float32 and w64.grad.dtype == np.float64
    assert len(model._buckets) == 2
    np.testing.assert_allclose(w32.grad.data, ref[0].grad.data, rtol=1e-5)
    np.testing.assert_allclose(w64.grad.data, ref[1].grad.data, rtol=1e-6)


@pytest.mark.parametrize("cap", CAPS[::2])
def test_parameters_stay_bitwise_identical_through_training(comm, cap):
    rank = comm.rank
    model = dist.DistributedDataParallel(mlp(7 * rank, np.float32, 32), bucket_cap_mb=cap)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, t = data(8 * 30, seed=100 + rank, dtype=np.float32)  # different data on every rank
    for step in range(30):
        optimizer.zero_grad()
        squared_error(
            model, x[8 * step : 8 * step + 8], t[8 * step : 8 * step + 8], True
        ).backward()
        optimizer.step()
    mine = np.concatenate([p.data.reshape(-1) for p in model.parameters()])
    every = comm.allgather(mine)
    for r, theirs in enumerate(every):
        assert theirs.tobytes() == mine.tobytes(), (
            f"rank {r}'s parameters differ from rank {rank}'s"
        )


# --- bad input --------------------------------------------------------------------------------


def test_a_parameter_that_does_not_require_grad_raises_on_every_rank(comm):
    model = mlp(0)
    if comm.rank == 0:
        model[2].bias.requires_grad = False
    with pytest.raises(
        ValueError,
        match=r"DistributedDataParallel: rank 0: parameter 3 \('2.bias'\) does not require grad",
    ):
        dist.DistributedDataParallel(model)


@pytest.mark.min_ranks(2)
def test_ranks_whose_models_differ_raise_on_every_rank_naming_the_parameter(comm):
    last = comm.size - 1
    others = "rank 0" if last == 1 else f"ranks {', '.join(map(str, range(last)))}"
    with pytest.raises(
        ValueError,
        match=rf"the ranks' parameters differ, first at parameter 4 \('4.weight'\): {others}: "
        rf"float64 \(3, 16\); rank {last}: float64 \(4, 16\)",
    ):
        dist.DistributedDataParallel(mlp(0, out=4 if comm.rank == last else 3))


# --- overlap, bucket order, a rank that does not take part ------------------------------------


class _Probe(mg.autograd.Function):
    """The identity, whose backward records how many buckets ``ddp`` had started by then."""

    @staticmethod
    def forward(ctx, x, ddp, seen):
        ctx.ddp, ctx.seen = ddp, seen
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        ctx.seen.append(ctx.ddp._pass.next)
        return grad, None, None


def test_buckets_start_while_backward_runs(comm):
    rng = np.random.default_rng(0)
    params = [mg.tensor(rng.normal(size=(4, 4)), requires_grad=True) for _ in range(4)]
    model = dist.DistributedDataParallel(params, bucket_cap_mb=1e-5)  # a bucket each
    seen = []
    for _ in range(2):  # the first pass, then the rebuilt buckets
        h = mg.tensor(rng.normal(size=(3, 4)))
        h = _Probe.apply(h @ params[0], model, seen)
        for w in params[1:]:
            h = mg.tanh(h) @ w
        h.sum().backward()
    # when backward reached the first layer, the last three parameters' buckets had started
    assert seen == [3, 3]


def test_buckets_are_rebuilt_from_rank_0s_order(comm):
    rng = np.random.default_rng(1)
    a, b, c = (mg.tensor(rng.normal(size=(4, 4)), requires_grad=True) for _ in range(3))
    model = dist.DistributedDataParallel([a, b, c], bucket_cap_mb=1e-5)
    assert [bucket.positions for bucket in model._buckets] == [[2], [1], [0]]  # reversed
    x = mg.tensor(rng.normal(size=(3, 4)))
    # rank 0's gradients become ready in the order c, a, b; the other ranks' in another
    out = ((x @ b) @ a) @ c if comm.rank == 0 else ((x @ a) @ b) @ c
    out.sum().backward()
    assert [bucket.positions for bucket in model._buckets] == [[2], [0], [1]]
    grads = [p.grad.data.copy() for p in (a, b, c)]
    for p in (a, b, c):
        p.grad = None
    (((x @ b) @ a) @ c if comm.rank == 0 else ((x @ a) @ b) @ c).sum().backward()
    for p, g in zip((a, b, c), grads):  # the same averages through the rebuilt buckets
        np.testing.assert_allclose(p.grad.data, g, rtol=1e-14)


def test_parameters_are_rank_0s_after_construction(comm):
    model = mlp(comm.rank)
    expected = comm.bcast([p.data.copy() for p in model.parameters()], root=0)
    dist.DistributedDataParallel(model)
    for p, q in zip(model.parameters(), expected):
        assert p.data.tobytes() == q.tobytes()


@pytest.mark.min_ranks(2)
def test_a_rank_that_skips_backward_makes_the_others_raise(comm):
    model = dist.DistributedDataParallel(mlp(0), timeout=3)
    x, t = data(4)
    if comm.rank != comm.size - 1:
        with pytest.raises(
            (dist.DistTimeoutError, dist.DistributedError), match="every rank's gradients"
        ):
            squared_error(model, x, t, mean=True).backward()
        with pytest.raises(mg.autograd.BackwardError, match="this DDP is out of step"):
            squared_error(model, x, t, mean=True).backward()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"bucket_cap_mb": 0}, "bucket_cap_mb must be a positive number, got 0"),
        ({"bucket_cap_mb": "big"}, "bucket_cap_mb must be a positive number, got 'big'"),
        ({"timeout": -1}, "timeout must be a positive number of seconds, got -1"),
    ],
)
def test_bad_options_raise_on_every_rank(comm, kwargs, error):
    with pytest.raises(ValueError, match=rf"DistributedDataParallel: rank \d: {error}"):
        dist.DistributedDataParallel(mlp(0), **kwargs)


def test_bad_parameters_raise(comm):
    with pytest.raises(ValueError, match="rank 0: no parameters"):
        dist.DistributedDataParallel([])
    w = mg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"parameter 0 is not a leaf \(grad_fn=<MulBackward"):
        dist.DistributedDataParallel([w * 2])
    with pytest.raises(ValueError, match="parameter 0 has dtype float16: float32 and float64 only"):
        dist.DistributedDataParallel([mg.tensor(np.ones(3, np.float16), requires_grad=True)])
    with pytest.raises(TypeError, match="parameter 1 is a ndarray, expected a Tensor"):
        dist.DistributedDataParallel([w, np.ones(3)])
    with pytest.raises(TypeError, match="has no module to call"):
        dist.DistributedDataParallel([w])(np.ones(3))


def test_a_large_gradient_is_averaged_in_its_own_array(comm):
    rng = np.random.default_rng(comm.rank)
    w = mg.tensor(rng.normal(size=(8, 4)), requires_grad=True)
    arrays = []
    w.register_post_accumulate_grad_hook(lambda p: arrays.append(p.grad.data))  # before DDP's
    model = dist.DistributedDataParallel([w], bucket_cap_mb=1e-5)  # w alone: 256 B >= the cap
    x = mg.tensor(rng.normal(size=(3, 4)))
    mg.linear(x, w).sum().backward()
    assert model._buckets[0].alone
    assert w.grad.data is arrays[0]  # reduced and divided where the engine left it
    expected = sum(comm.allgather(x.data.sum(axis=0))) / comm.size
    np.testing.assert_allclose(w.grad.data, np.broadcast_to(expected, (8, 4)), rtol=1e-14)


@pytest.mark.parametrize("cap", CAPS)
def test_gradients_of_other_layouts_on_some_ranks_are_averaged_element_by_element(comm, cap):
    rng = np.random.default_rng(9)
    w = mg.tensor(rng.normal(size=(6, 5)), requires_grad=True)
    model = dist.DistributedDataParallel([w], bucket_cap_mb=cap)
    x = rng.normal(size=(4 * comm.size, 5))
    mine = mg.tensor(shard(x, comm.rank, comm.size))
    # the same function; through w.T the gradient is a transposed (column-major) array
    out = mine @ w.T if comm.rank % 2 else mg.linear(mine, w)
    (mg.tanh(out) ** 2).sum().backward()
    reference = mg.tensor(w.data.copy(), requires_grad=True)
    (mg.tanh(mg.linear(mg.tensor(x), reference)) ** 2).sum().backward()
    np.testing.assert_allclose(w.grad.data * comm.size, reference.grad.data, rtol=1e-13)
    assert model._buckets[0].alone == (cap == CAPS[-1])  # 240 B: alone under a cap of 10 B
