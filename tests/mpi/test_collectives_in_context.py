"""Collectives inside a dist_autograd context, mixed with send and recv, at any world size.

Programs are written once against a "world" (``_MPIWorld``: this rank's part, with mpigrad's
communication; ``_SerialWorld``: every rank's part on one process, as lists by rank), so that
the gradients of the distributed program can be compared with those of the same program on one
process.  Derivatives of reduce and gather, and second derivatives (``create_graph``), are
checked against central differences of the whole distributed objective (the sum over the ranks
of each rank's roots).  Every rank draws every rank's data from one shared seed.
"""

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.distributed import collective

EPS, TOL = 1e-6, 1e-7


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


# --- one program, two worlds ----------------------------------------------------------------------


class _MPIWorld:
    """This rank's part of a program: values are this rank's Tensors."""

    def __init__(self, comm):
        self.rank, self.size = comm.rank, comm.size

    def each(self, fn, *values):
        return fn(self.rank, *values)

    def ring(self, x):
        """What rank r - 1 passed (a send to r + 1 and a receive from r - 1)."""
        request = dist.isend(x, (self.rank + 1) % self.size)
        received = dist.recv((self.rank - 1) % self.size)
        request.wait()
        return received

    def all_reduce(self, x, op):
        return dist.all_reduce(x, op)

    def broadcast(self, x, src):
        return dist.broadcast(x, src)

    def reduce(self, x, dst, op):
        return dist.reduce(x, dst, op)

    def all_gather(self, x):
        return dist.all_gather(x)

    def gather(self, x, dst):
        return dist.gather(x, dst)

    def scatter(self, xs, src):
        return dist.scatter(xs if self.rank == src else None, src)


class _SerialWorld:
    """Every rank's part of a program on one process: values are lists of Tensors by rank."""

    def __init__(self, size):
        self.size = size

    def each(self, fn, *values):
        return [fn(r, *[v[r] for v in values]) for r in range(self.size)]

    def ring(self, xs):
        return [xs[(r - 1) % self.size] for r in range(self.size)]

    def _reduction(self, xs, op):
        if op in ("max", "min"):
            return (mg.max if op == "max" else mg.min)(mg.stack(xs), axis=0)
        total = xs[0]
        for x in xs[1:]:
            total = total * x if op == "prod" else total + x
        return total / float(self.size) if op == "avg" else total

    def all_reduce(self, xs, op):
        return [self._reduction(xs, op)] * self.size

    def broadcast(self, xs, src):
        return [xs[src]] * self.size

    def reduce(self, xs, dst, op):
        return [self._reduction(xs, op) if r == dst else None for r in range(self.size)]

    def all_gather(self, xs):
        return [list(xs)] * self.size

    def gather(self, xs, dst):
        return [list(xs) if r == dst else None for r in range(self.size)]

    def scatter(self, xss, src):
        return list(xss[src])


def _mixed(w, xs):
    """Local ops, a ring of messages and collectives of every kind, mixed; some ranks' roots
    leave some collective outputs unused.  Returns each rank's list of roots."""
    a = w.each(lambda r, x: mg.sin(x) * x + float(r), xs)
    b = w.ring(a)
    c = w.all_reduce(w.each(lambda r, b, x: b * x, b, xs), "sum")
    m = w.all_reduce(w.each(lambda r, x: x * 1.5, xs), "max")
    d = w.broadcast(w.each(lambda r, c, m: c * m, c, m), 0)
    gs = w.all_gather(w.each(lambda r, d, x: d + x, d, xs))
    e = w.each(lambda r, gs: sum((g * float(j + 1) for j, g in enumerate(gs)), gs[0] * 0.0), gs)
    f = w.ring(w.each(lambda r, e, x: mg.cos(e) * x, e, xs))
    red = w.reduce(w.each(lambda r, f: f * f, f), 0, "sum")
    got = w.gather(w.each(lambda r, f, x: f * x, f, xs), w.size - 1)
    piece = w.scatter(w.each(lambda r, x: [x * float(j + 2) for j in range(w.size)], xs), 0)
    unused = w.all_reduce(w.each(lambda r, x: x * x, xs), "prod")  # no root uses it

    def roots(r, c, f, red, got, piece, unused):
        out = [(f * f).sum() + (piece * c).sum()]
        if red is not None:
            out.append((mg.sin(red) * 0.5).sum())
        if got is not None:
            out.append(sum((mg.cos(g) * float(j) for j, g in enumerate(got)), got[0] * 0.0).sum())
        return out if r != 1 else []  # rank 1 has no root of its own

    return w.each(roots, c, f, red, got, piece, unused)


def _dist_gradients(comm, program, arrays, create_graph=False):
    """This rank's gradients of program's roots, by dist_autograd (None where unused)."""
    leaves = [mg.tensor(a, requires_grad=True) for a in arrays]
    with dist_autograd.context() as context_id:
        dist_autograd.backward(context_id, program(_MPIWorld(comm), *leaves))
        gradients = dist_autograd.get_gradients(context_id)
        return [None if x not in gradients else gradients[x].data for x in leaves]


def _serial_gradients(comm, program, every_rank_arrays):
    """The gradients of the same program on one process, for this rank's leaves."""
    size = comm.size
    leaves = [[mg.tensor(a, requires_grad=True) for a in arrays] for arrays in every_rank_arrays]
    by_rank = [list(column) for column in zip(*leaves)]  # argument i: its value on every rank
    roots = [root for rank_roots in program(_SerialWorld(size), *by_rank) for root in rank_roots]
    total = sum(roots[1:], roots[0])
    mine = leaves[comm.rank]
    grads = mg.autograd.grad(total, mine, allow_unused=True)
    return [None if g is None else g.data for g in grads]


def _same(got, expected):
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or not np.any(g)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)  # sums in other orders


@pytest.mark.parametrize("seed", range(3))
def test_a_program_mixing_messages_and_collectives_matches_one_process(comm, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 4, rng.integers(1, 3)))
    every = [[rng.uniform(0.5, 1.5, shape)] for _ in range(comm.size)]
    got = _dist_gradients(comm, _mixed, every[comm.rank])
    _same(got, _serial_gradients(comm, _mixed, every))


def test_a_collective_output_unused_on_some_ranks_still_gets_their_zeros(comm):
    rank, size = comm.rank, comm.size
    x = mg.tensor(np.arange(3.0) + rank, requires_grad=True)
    with dist_autograd.context() as context_id:
        y = dist.all_reduce(x * x)
        dist.all_reduce(x * 2.0)  # no rank uses it: every rank contributes zeros
        roots = [(y * y).sum()] if rank == size - 1 else []
        dist_autograd.backward(context_id, roots)
        grad = dist_autograd.get_gradients(context_id)[x]
    total = sum((np.arange(3.0) + r) ** 2 for r in range(size))
    np.testing.assert_allclose(grad.data, 4 * total * x.data, rtol=1e-14)


# Rank 0 enters the adjoint of the all_reduce first (its root is the all_reduce's output), while
# rank 1 can reach that adjoint only once rank 0 has sent it a gradient, which rank 0 computes
# from a gradient that rank 1 sends it: a design whose adjoint collectives block the engine
# would wait forever.
@pytest.mark.min_ranks(2)
def test_collectives_and_messages_interleaved_so_that_blocking_would_deadlock(comm):
    rank, size = comm.rank, comm.size
    xs = [np.linspace(0.1, 0.9, 4) + r for r in range(size)]
    x = mg.tensor(xs[rank], requires_grad=True)
    with dist_autograd.context() as context_id:
        k = dist.all_reduce(x * x)
        if rank == 0:
            t = dist.recv(1)
            dist.send(mg.sin(t) * x, 1)
            roots = [k.sum()]
        elif rank == 1:
            request = dist.isend(k * x, 0)
            v = dist.recv(0)
            request.wait()
            roots = [(v * v).sum()]
        else:
            roots = [k.sum()]
        dist_autograd.backward(context_id, roots, timeout=30)
        grad = dist_autograd.get_gradients(context_id)[x].data

    leaves = [mg.tensor(a, requires_grad=True) for a in xs]
    ks = sum((leaf * leaf for leaf in leaves[1:]), leaves[0] * leaves[0])
    v = mg.sin(ks * leaves[1]) * leaves[0]
    total = (v * v).sum() + ks.sum() * float(size - 1)
    expected = mg.autograd.grad(total, [leaves[rank]])[0].data
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


@pytest.mark.min_ranks(2)
def test_an_error_inside_an_adjoint_collective_on_one_rank_ends_every_rank(comm, monkeypatch):
    rank, size = comm.rank, comm.size
    x = mg.tensor(np.ones(3), requires_grad=True)

    def broken(call, array):
        raise ValueError("this rank's adjoint broke")

    with pytest.raises(dist_autograd.DistBackwardError, match=f"rank {size - 1}"):
        with dist_autograd.context() as context_id:
            y = dist.all_reduce(x * 2.0)
            if rank == size - 1:
                monkeypatch.setattr(collective, "all_reduce", broken)
            dist_autograd.backward(context_id, [(y * y).sum()], timeout=30)


@pytest.mark.min_ranks(2)
def test_a_rank_with_gradients_disabled_inside_a_context_raises_on_every_rank(comm):
    x = mg.tensor(np.ones(2), requires_grad=True)
    with dist_autograd.context():
        np.testing.assert_array_equal(dist.all_reduce(x.detach()).data, np.full(2, comm.size))
        with pytest.raises(
            RuntimeError, match=r"all_reduce: rank\(s\) \[0\] called it with gradients"
        ):
            if comm.rank == 0:
                with mg.no_grad():
                    dist.all_reduce(x)
            else:
                dist.all_reduce(x)
        with mg.no_grad():  # on every rank: nothing to record
            dist.all_reduce(x)


# --- reduce and gather inside contexts, against finite differences ------------------------------


def _objective(comm, program, arrays):
    """The whole distributed objective at this rank's ``arrays``, on every rank."""
    with mg.no_grad():
        roots = program(_MPIWorld(comm), *[mg.tensor(a) for a in arrays])
    return comm.allreduce(sum(float(root.data) for root in roots))


def _check_gradient(comm, program, arrays):
    """dist_autograd's gradient against central differences, moving one rank at a time."""
    rank = comm.rank
    grads = _dist_gradients(comm, program, arrays)
    for q in range(comm.size):
        rng = np.random.default_rng(100 + q)
        directions = [rng.standard_normal(a.shape) for a in arrays]
        moved = [
            [a + sign * EPS * d if rank == q else a for a, d in zip(arrays, directions)]
            for sign in (1, -1)
        ]
        expected = (_objective(comm, program, moved[0]) - _objective(comm, program, moved[1])) / (
            2 * EPS
        )
        mine = sum(
            float(np.sum(g * d)) for g, d in zip(grads, directions) if g is not None and rank == q
        )
        assert comm.allreduce(mine) == pytest.approx(expected, rel=TOL, abs=TOL), f"rank {q}"


def _weighted(r, out):
    """A smooth root of ``out`` (a Tensor, a list of them, or None), unlike on every rank."""
    if out is None:
        return []
    outs = out if isinstance(out, list) else [out]
    return [
        (mg.sin(o) * np.cos(np.arange(o.size).reshape(o.shape) + r + j)).sum() + (o * o).sum()
        for j, o in enumerate(outs)
    ]


@pytest.mark.parametrize("op", collective.OPS)
def test_reduce_gradients_inside_a_context(comm, op):
    rng = np.random.default_rng(5)
    arrays = [rng.uniform(0.5, 1.5, (2, 3)) for _ in range(comm.size)]

    def program(w, x):
        return w.each(_weighted, w.reduce(w.each(lambda r, x: x * 1.0, x), comm.size - 1, op))

    _check_gradient(comm, program, [arrays[comm.rank]])


def test_gather_gradients_inside_a_context_with_uneven_shapes(comm):
    rng = np.random.default_rng(6)
    arrays = [rng.uniform(-1, 1, (r + 1, 2)) for r in range(comm.size)]

    def program(w, x):
        return w.each(_weighted, w.gather(w.each(lambda r, x: x * 1.0, x), 0))

    _check_gradient(comm, program, [arrays[comm.rank]])


# --- second order (create_graph) ------------------------------------------------------------------


def _check_hessian_vector_product(comm, program, arrays):
    """A distributed Hessian-vector product by two dist_autograd passes (the first with
    create_graph) against central differences of the distributed gradient."""
    rank = comm.rank
    rng = np.random.default_rng(7 + rank)
    d = [rng.standard_normal(a.shape) for a in arrays]
    v = [rng.standard_normal(a.shape) for a in arrays]

    def gradient_dot_v(values):
        grads = _dist_gradients(comm, program, values)
        return comm.allreduce(sum(float(np.sum(g * u)) for g, u in zip(grads, v) if g is not None))

    leaves = [mg.tensor(a, requires_grad=True) for a in arrays]
    with dist_autograd.context() as context_id:
        dist_autograd.backward(context_id, program(_MPIWorld(comm), *leaves), create_graph=True)
        first = dict(dist_autograd.get_gradients(context_id))
        inner = [
            sum(((first[x] * u).sum() for x, u in zip(leaves, v) if x in first), mg.tensor(0.0))
        ]
        dist_autograd.backward(context_id, [root for root in inner if root.requires_grad])
        both = dist_autograd.get_gradients(context_id)
        hvp = [both[x].data - first[x].data if x in first else None for x in leaves]
    got = comm.allreduce(sum(float(np.sum(h * u)) for h, u in zip(hvp, d) if h is not None))
    expected = (
        gradient_dot_v([a + EPS * u for a, u in zip(arrays, d)])
        - gradient_dot_v([a - EPS * u for a, u in zip(arrays, d)])
    ) / (2 * EPS)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_distributed_hessian_vector_product_through_messages_and_collectives(comm):
    rng = np.random.default_rng(11)
    arrays = [rng.uniform(0.5, 1.5, (3,)) for _ in range(comm.size)]

    def program(w, x):
        a = w.ring(w.each(lambda r, x: mg.sin(x) * x, x))
        c = w.all_reduce(w.each(lambda r, a, x: a * x, a, x), "sum")
        d = w.broadcast(w.each(lambda r, c: c * c, c), 0)
        return w.each(lambda r, d, x: [(d * mg.cos(x)).sum()], d, x)

    _check_hessian_vector_product(comm, program, [arrays[comm.rank]])


@pytest.mark.parametrize("name", ["broadcast", "scatter", "reduce", "gather", "all_reduce max"])
def test_second_derivatives_through_rooted_collectives_inside_a_context(comm, name):
    size = comm.size
    rng = np.random.default_rng(12)
    arrays = [rng.uniform(0.5, 1.5, (2,)) for _ in range(size)]
    collectives = {
        "broadcast": lambda w, y: w.broadcast(y, size - 1),
        "scatter": lambda w, y: w.scatter(
            w.each(lambda r, y: [y * float(j + 1) for j in range(size)], y), 0
        ),
        "reduce": lambda w, y: w.reduce(y, 0, "prod"),
        "gather": lambda w, y: w.gather(y, size - 1),
        "all_reduce max": lambda w, y: w.all_reduce(y, "max"),
    }

    def program(w, x):
        out = collectives[name](w, w.each(lambda r, x: x * x * float(r + 1), x))
        return w.each(lambda r, out: _weighted(r, out), out)

    _check_hessian_vector_product(comm, program, [arrays[comm.rank]])
