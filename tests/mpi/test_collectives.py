"""Collectives at any world size: values, derivatives in both modes, second derivatives, errors.

Derivatives are checked against central differences of the whole distributed objective (the sum
over the ranks of each rank's root: the loss convention of ``mpigrad.distributed``): for each
rank q in turn, rank q's inputs move along a random direction and every rank evaluates its root;
the reverse-mode gradients dotted with that direction (summed over the ranks), and the tangents
of the roots when only rank q's inputs carry one (summed over the ranks), must match.  Every
rank draws every rank's data from one shared seed.
"""

import time

import numpy as np
import pytest
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.autograd import forward_ad as fwAD
from mpigrad.distributed.collective import MAX_LEVELS, SLOT
from mpigrad.engine import BackwardError

EPS, TOL = 1e-6, 1e-7
OPS = ["sum", "avg", "max", "min", "prod"]


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def _root(outputs, rank):
    """This rank's root: a smooth function of the collective's outputs (a Tensor, a list of
    them, or None), weighted by the rank so that no two ranks' roots are alike."""
    if outputs is None:
        return mg.tensor(0.0)
    if isinstance(outputs, mg.Tensor):
        outputs = [outputs]
    total = mg.tensor(0.0)
    for j, out in enumerate(outputs):
        weights = np.cos(np.arange(out.size).reshape(out.shape) + rank + 2 * j)
        total = total + (mg.sin(out) * weights).sum() + (out * out).sum() * 0.1
    return total


def _objective(comm, fn, arrays):
    """The whole distributed objective at this rank's ``arrays``, on every rank."""
    with mg.no_grad():
        value = _root(fn(*[mg.tensor(a) for a in arrays]), comm.rank)
    return comm.allreduce(float(value.data))


def _check(comm, fn, arrays, modes=("rev", "fwd")):
    """fn's reverse and forward derivatives against central differences, rank by rank."""
    rank, size = comm.rank, comm.size
    leaves = [mg.tensor(a, requires_grad=True) for a in arrays]
    if "rev" in modes:
        # backward(), not grad(leaves): on a rank whose leaves do not reach the collective
        # (scatter's other ranks) grad would skip its adjoint, which every rank must run.
        _root(fn(*leaves), rank).backward()
        grads = [leaf.grad for leaf in leaves]
    for q in range(size):
        rng = np.random.default_rng(100 + q)
        directions = [rng.standard_normal(a.shape) for a in arrays]
        moving = rank == q
        shifted = [
            [a + sign * EPS * d if moving else a for a, d in zip(arrays, directions)]
            for sign in (1, -1)
        ]
        expected = (_objective(comm, fn, shifted[0]) - _objective(comm, fn, shifted[1])) / (2 * EPS)
        if "rev" in modes:
            mine = (
                sum(float(np.sum(g.data * d)) for g, d in zip(grads, directions) if g is not None)
                if moving
                else 0.0
            )
            got = comm.allreduce(mine)
            assert got == pytest.approx(expected, rel=TOL, abs=TOL), f"reverse, rank {q} moved"
        if "fwd" in modes:
            with fwAD.dual_level():
                inputs = [
                    fwAD.make_dual(mg.tensor(a), mg.tensor(d)) if moving else mg.tensor(a)
                    for a, d in zip(arrays, directions)
                ]
                tangent = fwAD.unpack_dual(_root(fn(*inputs), rank)).tangent
            got = comm.allreduce(0.0 if tangent is None else float(tangent.data))
            assert got == pytest.approx(expected, rel=TOL, abs=TOL), f"forward, rank {q} moved"


def _check_second(comm, fn, arrays):
    """The directional second derivative of the distributed objective through fn: reverse over
    reverse (create_graph) against central differences of the gradient."""
    rank = comm.rank
    rng = np.random.default_rng(7 + rank)
    d = [rng.standard_normal(a.shape) for a in arrays]
    w = [rng.standard_normal(a.shape) for a in arrays]

    def gradient_dot_w(values):
        leaves = [mg.tensor(a, requires_grad=True) for a in values]
        grads = mg.autograd.grad(_root(fn(*leaves), rank), leaves, allow_unused=True)
        return comm.allreduce(sum(float(np.sum(g.data * v)) for g, v in zip(grads, w)))

    leaves = [mg.tensor(a, requires_grad=True) for a in arrays]
    grads = mg.autograd.grad(_root(fn(*leaves), rank), leaves, create_graph=True)
    inner = sum(((g * v).sum() for g, v in zip(grads, w)), mg.tensor(0.0))
    second = mg.autograd.grad(inner, leaves, allow_unused=True)
    got = comm.allreduce(sum(float(np.sum(h.data * v)) for h, v in zip(second, d) if h is not None))
    expected = (
        gradient_dot_w([a + EPS * v for a, v in zip(arrays, d)])
        - gradient_dot_w([a - EPS * v for a, v in zip(arrays, d)])
    ) / (2 * EPS)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def _first_derivative(comm, fn, arrays, directions):
    """The derivative of the distributed objective along ``directions``, by forward mode."""
    with fwAD.dual_level():
        inputs = [fwAD.make_dual(mg.tensor(a), mg.tensor(d)) for a, d in zip(arrays, directions)]
        tangent = fwAD.unpack_dual(_root(fn(*inputs), comm.rank)).tangent
    return comm.allreduce(0.0 if tangent is None else float(tangent.data))


def _check_forward_over_forward(comm, fn, arrays):
    """The second derivative of the distributed objective along u then v, with two nested dual
    levels through fn (each input carries u at the outer, v at the inner level, and the mixed
    tangent travels too), against central differences along v of the derivative along u."""
    rng = np.random.default_rng(9 + comm.rank)
    us = [rng.standard_normal(a.shape) for a in arrays]
    vs = [rng.standard_normal(a.shape) for a in arrays]
    with fwAD.dual_level() as outer, fwAD.dual_level() as inner:
        inputs = [
            fwAD.make_dual(
                fwAD.make_dual(mg.tensor(a), mg.tensor(v), level=inner), mg.tensor(u), level=outer
            )
            for a, u, v in zip(arrays, us, vs)
        ]
        first = fwAD.unpack_dual(_root(fn(*inputs), comm.rank), outer).tangent
        second = None if first is None else fwAD.unpack_dual(first, inner).tangent
    got = comm.allreduce(0.0 if second is None else float(second.data))
    expected = (
        _first_derivative(comm, fn, [a + EPS * v for a, v in zip(arrays, vs)], us)
        - _first_derivative(comm, fn, [a - EPS * v for a, v in zip(arrays, vs)], us)
    ) / (2 * EPS)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def _data(comm, shape_of, seed):
    """This rank's array, drawn with every rank's from one seed (shape_of(rank) gives shapes)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, shape_of(r)) for r in range(comm.size)]
    return arrays[comm.rank], arrays


def _shape(seed, ndim_max=3):
    rng = np.random.default_rng(seed)
    return tuple(int(n) for n in rng.integers(1, 4, rng.integers(0, ndim_max + 1)))


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, name",
    [(op, op) for op in OPS]
    + [(MPI.SUM, "sum"), (MPI.MAX, "max"), (MPI.MIN, "min"), (MPI.PROD, "prod")],
)
def test_all_reduce_values(comm, op, name):
    mine, every = _data(comm, lambda r: (2, 3), 1)
    expected = {"sum": np.sum, "avg": np.mean, "max": np.max, "min": np.min, "prod": np.prod}[name](
        every, axis=0
    )
    out = dist.all_reduce(mine, op)
    assert isinstance(out, mg.Tensor) and out.dtype == np.float64
    np.testing.assert_allclose(out.data, expected, rtol=1e-14)
    ints = dist.all_reduce(np.arange(4, dtype=np.int32) + comm.rank, "max" if name == "avg" else op)
    assert ints.dtype == np.int32


@pytest.mark.parametrize("op", ["sum", "avg"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_reduce_values_with_and_without_the_agreement(comm, op, dtype):
    # float64 data of at most SLOT values is reduced with the call's agreement, the rest apart.
    for n in (0, 1, SLOT, SLOT + 1):
        every = np.random.default_rng(n).standard_normal((comm.size, n)).astype(dtype)
        out = dist.all_reduce(every[comm.rank].reshape(n, 1), op)
        assert out.shape == (n, 1) and out.dtype == dtype
        expected = every.sum(0) / (comm.size if op == "avg" else 1)
        tol = 1e-5 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(out.data[:, 0], expected, rtol=tol, atol=tol)


def test_the_other_collectives_move_the_right_values(comm):
    rank, size = comm.rank, comm.size
    mine, every = _data(comm, lambda r: (r + 1, 2), 2)
    root = size - 1
    np.testing.assert_array_equal(
        dist.broadcast(mine[:1] * 0 + rank, root).data, np.full((1, 2), root)
    )
    reduced = dist.reduce(np.full(3, rank + 1.0), root, "prod")
    assert (reduced is None) == (rank != root)
    if rank == root:
        np.testing.assert_array_equal(reduced.data, np.full(3, float(np.prod(range(1, size + 1)))))
    for pieces in (dist.all_gather(mine), dist.gather(mine, 0)):
        if pieces is None:
            assert rank != 0
            continue
        assert len(pieces) == size
        for piece, expected in zip(pieces, every):
            np.testing.assert_array_equal(piece.data, expected)
    xs = [np.full((j + 1,), 10.0 * rank + j) for j in range(size)]
    np.testing.assert_array_equal(
        dist.scatter(xs, root).data, np.full(rank + 1, 10.0 * root + rank)
    )
    pieces = None if rank else [np.full(2, j) for j in range(size)]
    np.testing.assert_array_equal(dist.scatter(pieces, 0).data, np.full(2, rank))
    received = dist.all_to_all(xs)
    for j, piece in enumerate(received):
        np.testing.assert_array_equal(piece.data, np.full(rank + 1, 10.0 * j + rank))
    for op, reduce_ in [("sum", np.sum), ("max", np.max), ("prod", np.prod)]:
        parts = [np.full(2, 1.0 + rank + j) for j in range(size)]
        expected = reduce_([1.0 + r + rank for r in range(size)])
        np.testing.assert_allclose(dist.reduce_scatter(parts, op).data, np.full(2, expected))
    dist.barrier(timeout=60)


# --- derivatives ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_all_reduce_derivatives(comm, op, seed):
    mine, _ = _data(comm, lambda r: _shape(seed), 10 + seed)
    _check(comm, lambda x: dist.all_reduce(x * 1.5, op), [mine])


@pytest.mark.parametrize("op", OPS)
def test_all_reduce_second_derivatives(comm, op):
    mine, _ = _data(comm, lambda r: (3,), 20)
    _check_second(comm, lambda x: dist.all_reduce(x * x, op), [mine])


@pytest.mark.parametrize("seed", [0, 1])
def test_broadcast_derivatives(comm, seed):
    mine, _ = _data(comm, lambda r: _shape(seed), 30 + seed)
    _check(comm, lambda x: dist.broadcast(mg.sin(x), seed % comm.size), [mine])


@pytest.mark.parametrize("seed", [0, 1])
def test_all_gather_derivatives_with_uneven_shapes(comm, seed):
    mine, _ = _data(comm, lambda r: (r + 1 + seed, 2), 40 + seed)
    _check(comm, lambda x: dist.all_gather(x * x), [mine])
    _check_second(comm, lambda x: dist.all_gather(x * x), [mine])


@pytest.mark.parametrize("op", OPS)
def test_reduce_scatter_derivatives(comm, op):
    size = comm.size
    arrays = [_data(comm, lambda r, j=j: (j + 1, 2), 50 + j)[0] for j in range(size)]
    _check(comm, lambda *xs: dist.reduce_scatter([x * 1.0 for x in xs], op), arrays)
    if op in ("sum", "max"):
        _check_second(comm, lambda *xs: dist.reduce_scatter([x * x for x in xs], op), arrays)


def test_all_to_all_derivatives(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(60 + rank)
    arrays = [rng.uniform(-1, 1, (rank + j + 1,)) for j in range(size)]
    _check(comm, lambda *xs: dist.all_to_all([x * 1.0 for x in xs]), arrays)
    _check_second(comm, lambda *xs: dist.all_to_all([x * x for x in xs]), arrays)


def test_scatter_derivatives(comm):
    rank, size = comm.rank, comm.size
    src = size - 1
    rng = np.random.default_rng(70)
    arrays = [rng.uniform(-1, 1, (j + 2,)) for j in range(size)]

    def fn(*xs):
        return dist.scatter([x * 1.0 for x in xs] if rank == src else None, src)

    _check(comm, fn, arrays)


@pytest.mark.parametrize("op", OPS)
def test_reduce_and_gather_forward_mode_and_their_reverse_mode_raises(comm, op):
    rank, size = comm.rank, comm.size
    mine, _ = _data(comm, lambda r: (2, 2), 80)
    _check(comm, lambda x: dist.reduce(x * 1.0, 0, op), [mine], modes=("fwd",))
    _check(comm, lambda x: dist.gather(x * 1.0, size - 1), [mine], modes=("fwd",))
    x = mg.tensor(mine, requires_grad=True)
    out = dist.reduce(x, 0, op)
    if rank == 0:
        with pytest.raises(RuntimeError, match="Use all_reduce, which is differentiable"):
            out.sum().backward()


def _every_collective(comm):
    """(name, fn, arrays): each differentiable collective on this rank's data, smooth inputs."""
    rank, size = comm.rank, comm.size
    mine, _ = _data(comm, lambda r: (r + 2, 2), 90)
    pieces = [_data(comm, lambda r, j=j: (j + 1, 2), 91 + j)[0] for j in range(size)]
    cases = [
        (f"all_reduce {op}", lambda x, op=op: dist.all_reduce(x * x, op), [mine[:2]]) for op in OPS
    ]
    cases += [
        ("broadcast", lambda x: dist.broadcast(mg.sin(x), size - 1), [mine[:2]]),
        ("all_gather", lambda x: dist.all_gather(x * x), [mine]),
        ("reduce", lambda x: dist.reduce(x * x, 0), [mine[:2]]),
        ("gather", lambda x: dist.gather(x * x, size - 1), [mine]),
        ("reduce_scatter", lambda *xs: dist.reduce_scatter([x * x for x in xs]), pieces),
        ("all_to_all", lambda *xs: dist.all_to_all([x * x for x in xs]), pieces),
        (
            "scatter",
            lambda *xs: dist.scatter([x * x for x in xs] if rank == 0 else None, 0),
            pieces,
        ),
    ]
    return cases


def test_forward_over_forward_through_every_collective(comm):
    for name, fn, arrays in _every_collective(comm):
        try:
            _check_forward_over_forward(comm, fn, arrays)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# --- ties and zeros -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["max", "min"])
def test_ties_share_the_gradient_and_average_the_tangents(comm, op):
    rank, size = comm.rank, comm.size
    # Entry 0: every rank ties; entry 1: ranks 0 and the last tie (one rank at size 1);
    # entry 2: rank 0 alone holds the extreme.
    sign = 1.0 if op == "max" else -1.0
    values = np.array([5.0, 4.0 if rank in (0, size - 1) else 0.0, 3.0 if rank == 0 else 0.0])
    x = mg.tensor(sign * values, requires_grad=True)
    dist.all_reduce(x, op).sum().backward()
    holders = [size, 1 if size == 1 else 2, 1]
    held = [True, rank in (0, size - 1), rank == 0]
    expected = [size / n if h else 0.0 for n, h in zip(holders, held)]
    np.testing.assert_allclose(x.grad.data, expected, rtol=1e-15)
    with fwAD.dual_level():
        tangent = np.full(3, float(rank))
        out = dist.all_reduce(fwAD.make_dual(mg.tensor(sign * values), mg.tensor(tangent)), op)
        got = fwAD.unpack_dual(out).tangent.data
    winners = [list(range(size)), sorted({0, size - 1}), [0]]
    np.testing.assert_allclose(got, [np.mean(w) for w in winners], rtol=1e-15)


def test_prod_with_zeros(comm):
    rank, size = comm.rank, comm.size
    # Entry 0: a zero on rank 0 only; entry 1: zeros on two ranks (one at size 1); entry 2: none.
    values = np.array([0.0 if rank == 0 else 2.0, 0.0 if rank in (0, size - 1) else 3.0, 1.5])
    _check(comm, lambda x: dist.all_reduce(x, "prod"), [values])
    x = mg.tensor(values, requires_grad=True)
    dist.all_reduce(x, "prod").sum().backward()
    others = [
        np.prod([0.0 if r == 0 else 2.0 for r in range(size) if r != rank]),
        np.prod([0.0 if r in (0, size - 1) else 3.0 for r in range(size) if r != rank]),
        1.5 ** (size - 1),
    ]
    np.testing.assert_allclose(x.grad.data, size * np.array(others), rtol=1e-15)


# --- the SPMD rule outside contexts -------------------------------------------------------------


def test_a_rank_whose_input_needs_no_grad_still_takes_part_in_backward(comm):
    rank = comm.rank
    x = mg.tensor(np.arange(3.0) + rank, requires_grad=rank == 0)
    y = dist.all_reduce(x, "sum")
    assert y.requires_grad
    (y * y).sum().backward()
    if rank == 0:
        total = sum(np.arange(3.0) + r for r in range(comm.size))
        np.testing.assert_allclose(x.grad.data, 2 * comm.size * total)


@pytest.mark.parametrize("create_graph", [False, True])
def test_grad_with_inputs_runs_collectives_no_input_needs(comm, create_graph):
    # Rank 0 asks for x's gradient, the other ranks for w's, which lies after the all_reduce:
    # their passes still run its adjoint, which rank 0's gradient needs, and none waits.
    rank, size = comm.rank, comm.size
    x = mg.tensor(np.arange(3.0) + rank, requires_grad=True)
    w = mg.tensor(np.array([1.0, -2.0, 0.5]) * (rank + 1), requires_grad=True)
    loss = (dist.all_reduce(x * 2.0) * w).sum()
    wanted = x if rank == 0 else w
    (g,) = mg.autograd.grad(loss, [wanted], create_graph=create_graph)
    if rank == 0:
        expected = 2.0 * sum(np.array([1.0, -2.0, 0.5]) * (r + 1) for r in range(size))
    else:
        expected = 2.0 * sum(np.arange(3.0) + r for r in range(size))
    np.testing.assert_allclose(g.data, expected, rtol=1e-14)
    assert x.grad is None and w.grad is None


def test_data_parallel_gradient_average(comm):
    # The replicated-loss convention: every rank holds the same loss and it counts once.
    rank, size = comm.rank, comm.size
    w = mg.tensor(np.array([0.5, -1.0]), requires_grad=True)
    batch = np.array([[1.0 + rank, 2.0]])
    local = ((batch @ w.data) ** 2).sum()
    loss = dist.all_reduce(((mg.tensor(batch) @ w) ** 2).sum(), "avg")
    np.testing.assert_allclose(loss.data, comm.allreduce(local) / size)
    (loss / size).backward()
    # Each rank's replica of w reaches the loss through its own term only.
    np.testing.assert_allclose(w.grad.data, 2 * (batch[0] @ w.data) * batch[0] / size, rtol=1e-14)
    # Summing the replicas' gradients gives the gradient of the loss in the shared w.
    expected = (
        sum(2 * (np.array([1.0 + r, 2.0]) @ w.data) * np.array([1.0 + r, 2.0]) for r in range(size))
        / size
    )
    np.testing.assert_allclose(dist.all_reduce(w.grad).data, expected, rtol=1e-14)


@pytest.mark.min_ranks(2)
def test_mismatched_backward_raises_on_every_rank(comm):
    rank = comm.rank
    x = mg.tensor(np.arange(3.0), requires_grad=True)
    y = dist.all_reduce(x * 2.0)
    z = dist.all_reduce(x * 3.0)
    root = (y * z).sum() if rank == 0 else z.sum()  # only rank 0's backward reaches y
    start = time.monotonic()
    # Rank 0 raises in backward (the engine wraps the error), the others in barrier.
    with pytest.raises((dist.DistributedError, BackwardError)) as info:
        root.backward()
        dist.barrier()  # where the other ranks find rank 0 in y's adjoint
    text = str(info.value)
    assert "the ranks' calls do not match: the ranks are in different collective calls" in text
    assert "in the backward of collective call" in text and f"this is rank {rank}" in text
    assert time.monotonic() - start < 30


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("shape", marks=pytest.mark.min_ranks(2)),  # one rank cannot disagree
        pytest.param("slot-shape", marks=pytest.mark.min_ranks(2)),
        pytest.param("dtype", marks=pytest.mark.min_ranks(2)),
        pytest.param("reduction", marks=pytest.mark.min_ranks(2)),
        pytest.param("root", marks=pytest.mark.min_ranks(2)),
        pytest.param("count", marks=pytest.mark.min_ranks(2)),
        "op",
        "src",
        "list-length",
        "scatter-list",
        "type",
        "timeout",
    ],
)
def test_bad_input_on_one_rank_raises_on_every_rank(comm, case):
    rank, size = comm.rank, comm.size
    bad = rank == size - 1
    x = np.zeros(3)
    call, error, words = {
        "shape": (
            lambda: dist.all_reduce(np.zeros(2) if bad else x),
            dist.DistributedError,
            f"the shapes differ: rank{'s' if size > 2 else ''} ",
        ),
        "slot-shape": (  # the good ranks' data is reduced with the agreement, the bad one's not
            lambda: dist.all_reduce(np.zeros(SLOT + 1) if bad else np.zeros(SLOT)),
            dist.DistributedError,
            "the shapes differ",
        ),
        "dtype": (
            lambda: dist.all_gather(x.astype(np.float32) if bad else x),
            dist.DistributedError,
            "the dtypes differ",
        ),
        "reduction": (
            lambda: dist.all_reduce(x, "max" if bad else "sum"),
            dist.DistributedError,
            "the ops differ",
        ),
        "root": (
            lambda: dist.broadcast(x, 1 if bad else 0),
            dist.DistributedError,
            "the roots differ",
        ),
        "count": (  # as if the bad rank had made one more call
            lambda: _one_call_ahead(bad, lambda: dist.all_reduce(x)),
            dist.DistributedError,
            "the ranks have made different numbers of collective calls before this one",
        ),
        "op": (
            lambda: dist.all_reduce(x, "mean" if bad else "sum"),
            ValueError,
            f"all_reduce: rank {size - 1}: op 'mean' is not a reduction",
        ),
        "src": (
            lambda: dist.broadcast(x, size if bad else 0),
            ValueError,
            f"broadcast: rank {size - 1}: broadcast: src {size} is not a rank",
        ),
        "list-length": (
            lambda: dist.all_to_all([x] * (size + bad)),
            ValueError,
            f"all_to_all: rank {size - 1}: xs must be a list of world_size ({size})",
        ),
        "scatter-list": (
            lambda: dist.scatter([x], size - 1) if size > 1 else dist.scatter(x, 0),
            ValueError,
            f"scatter: rank {size - 1}: xs must be a list",
        ),
        "type": (
            lambda: dist.all_reduce([1.0] if bad else x),
            TypeError,
            f"all_reduce: rank {size - 1}: expected a Tensor or a numpy array, got list",
        ),
        "timeout": (
            lambda: dist.barrier(timeout=-1 if bad else None),
            ValueError,
            "barrier: timeout must be a positive number",
        ),
    }[case]
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
    assert f"(raised on every rank; this is rank {rank})" in str(info.value)
    dist.barrier()  # the ranks are still in step


def _one_call_ahead(ahead, call):
    comms = dist.comm.get()
    comms.collective_calls += ahead
    try:
        return call()
    finally:
        comms.collective_calls -= ahead


def test_more_nested_levels_than_collectives_carry_raise(comm):
    levels = [fwAD.enter_dual_level() for _ in range(MAX_LEVELS + 1)]
    try:
        x = fwAD.make_dual(mg.tensor(np.ones(2)), mg.ones(2), level=levels[0])
        with pytest.raises(ValueError) as info:
            dist.all_reduce(x)
    finally:
        for level in reversed(levels):
            fwAD.exit_dual_level(level)
    assert (
        f"all_reduce: rank 0: collectives carry tangents of at most {MAX_LEVELS} nested dual "
        f"levels; {MAX_LEVELS + 1} are open (raised on every rank; this is rank {comm.rank})"
    ) in str(info.value)
    dist.barrier()


def test_int_avg_and_bool_reductions_are_refused(comm):
    with pytest.raises(ValueError, match="op 'avg' cannot reduce tensors of dtype int64"):
        dist.all_reduce(np.arange(3), "avg")
    with pytest.raises(ValueError, match="op 'sum' cannot reduce tensors of dtype bool"):
        dist.all_reduce(np.ones(3, bool))


@pytest.mark.min_ranks(2)
def test_a_collective_that_times_out_leaves_the_communicator_out_of_step(comm):
    rank = comm.rank
    if rank == 0:
        with pytest.raises(dist.DistTimeoutError, match="barrier timed out after 0.5 s"):
            dist.barrier(timeout=0.5)
        with pytest.raises(
            dist.DistributedError,
            match="out of step: call "
            r"mpigrad.distributed.destroy\(\) and init\(\)",
        ):
            dist.all_reduce(np.zeros(1))
    comm.Barrier()  # rank 0 has given up: the others join the barrier it left behind
    if rank != 0:
        dist.barrier()


# --- PROC_NULL -----------------------------------------------------------------------------------


def test_proc_null_peers(comm):
    x = mg.tensor(np.arange(3.0), requires_grad=True)
    with dist_autograd.context() as context_id:
        assert dist.send(x, dist.PROC_NULL) is None
        dist.isend(x, dist.PROC_NULL).wait()
        assert dist.recv(dist.PROC_NULL) is None
        assert dist.irecv(dist.PROC_NULL, tag=3).wait() is None
        zeros = dist.sendrecv(x * 2.0, dist.PROC_NULL, dist.PROC_NULL)
        np.testing.assert_array_equal(zeros.data, np.zeros(3))
        assert not zeros.requires_grad
        dist_autograd.backward(context_id, [(x * x).sum()])
        np.testing.assert_array_equal(dist_autograd.get_gradients(context_id)[x].data, 2 * x.data)


def test_non_periodic_halo_exchange(comm):
    rank, size = comm.rank, comm.size
    left = rank - 1 if rank > 0 else dist.PROC_NULL
    right = rank + 1 if rank < size - 1 else dist.PROC_NULL
    rng = np.random.default_rng(90)
    us = [rng.uniform(-1, 1, 4) for _ in range(size)]

    def local_loss(u, left_halo, right_halo):
        ext = mg.cat([left_halo, u, right_halo])
        lap = ext[2:] - ext[1:-1] * 2.0 + ext[:-2]
        return (lap * lap).sum() + mg.sin(u * left_halo).sum()

    leaves = [mg.tensor(u, requires_grad=True) for u in us]
    zero = mg.tensor(np.zeros(1))
    total = sum(
        local_loss(
            leaves[r],
            leaves[r - 1][-1:] if r > 0 else zero,
            leaves[r + 1][:1] if r < size - 1 else zero,
        )
        for r in range(size)
    )
    expected = mg.autograd.grad(total, leaves)[rank].data
    u = mg.tensor(us[rank], requires_grad=True)
    with dist_autograd.context() as context_id:
        left_halo = dist.sendrecv(u[-1:], dest=right, source=left)
        right_halo = dist.sendrecv(u[:1], dest=left, source=right, sendtag=1)
        dist_autograd.backward(context_id, [local_loss(u, left_halo, right_halo)])
        got = dist_autograd.get_gradients(context_id)[u].data
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
