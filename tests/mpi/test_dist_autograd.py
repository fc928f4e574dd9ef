"""Distributed autograd at any world size: contexts, send/recv functions, backward, gradients.

Every test draws its data from a seed that all ranks share, so every rank knows every rank's
data and can run the whole computation on its own with plain mpigrad (``_reference``). The
gradients ``get_gradients`` gives for this rank's leaves must equal that local computation's
to 1e-12 in float64, under the loss convention of ``mpigrad.distributed``: the objective is the
sum of the roots passed to ``backward`` on all ranks.

Sends that may go to this rank itself (rings at size 1) use ``isend``, waited after the
matching receive, as MPI requires.
"""

import gc
import time
import tracemalloc

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

TOL = 1e-12


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def _leaf(array):
    return mg.tensor(array, dtype=np.float64, requires_grad=True)


def _pass_around(tensor, dest, source):
    """Send ``tensor`` to ``dest`` and return the tensor ``source`` sent (a ring at any size)."""
    request = dist.isend(tensor, dest)
    received = dist.recv(source)
    request.wait()
    return received


def _reference(objective, arrays):
    """The gradients of objective(*leaves) for leaves holding arrays, on this rank alone.

    A list of arrays, None where the objective does not use the leaf (or where objective
    returns None: no root on any rank).
    """
    leaves = [_leaf(a) for a in arrays]
    total = objective(*leaves)
    if total is None:
        return [None] * len(leaves)
    grads = mg.autograd.grad(total, leaves, allow_unused=True)
    return [None if g is None else g.data for g in grads]


def _check(grads, mine, expected):
    """grads (from get_gradients) against expected (from _reference) for this rank's leaves.

    mine maps the index of each leaf this rank holds (in the reference's order) to the leaf. A
    leaf the objective does not use may be missing from grads or have a zero gradient.
    """
    assert isinstance(grads, dict)
    ids = {id(leaf) for leaf in mine.values()}
    foreign = [key for key in grads if id(key) not in ids]
    assert not foreign, f"get_gradients holds tensors that are not this rank's leaves: {foreign}"
    for i, leaf in mine.items():
        assert leaf.grad is None, f"leaf {i}: gradients accumulate in the context, not .grad"
        got = next((g for key, g in grads.items() if key is leaf), None)
        if expected[i] is None:
            assert got is None or not np.any(got.data), f"leaf {i} is unused: {got}"
            continue
        assert got is not None, f"leaf {i} has no gradient in the context"
        assert isinstance(got, mg.Tensor) and got.shape == leaf.shape
        np.testing.assert_allclose(got.data, expected[i], rtol=TOL, atol=TOL, err_msg=f"leaf {i}")


def _ring(comm):
    rank, size = comm.rank, comm.size
    return rank, size, (rank + 1) % size, (rank - 1) % size


# --- contexts ------------------------------------------------------------------------------------


def test_context_ids_agree_across_ranks_and_differ_between_contexts(comm):
    ids = []
    for _ in range(3):
        with dist_autograd.context() as context_id:
            ids.append(context_id)
    everywhere = comm.allgather(ids)
    assert all(theirs == ids for theirs in everywhere), everywhere
    assert len(set(ids)) == len(ids), ids


@pytest.mark.filterwarnings("ignore::mpigrad.distributed.NoContextWarning")  # see test_dist_exit
def test_outside_a_context_send_and_recv_record_nothing(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.arange(3.0) + rank)
    y = _pass_around(x * 2.0, dest, source)
    assert y.grad_fn is None and not y.requires_grad
    np.testing.assert_array_equal(y.data, (np.arange(3.0) + source) * 2.0)
    # Nor after a context was left.
    with dist_autograd.context():
        pass
    request = dist.isend(x * 3.0, dest)
    y = dist.irecv(source).wait()
    request.wait()
    assert y.grad_fn is None and not y.requires_grad


def test_inside_a_context_the_received_tensor_has_a_recv_function(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        assert y.requires_grad and y.grad_fn is not None
        assert "recv" in type(y.grad_fn).__name__.lower(), type(y.grad_fn).__name__
        np.testing.assert_array_equal(y.data, (np.arange(3.0) + source) * 2.0)
        dist_autograd.backward(context_id, [(y * y).sum()])
        grads = dist_autograd.get_gradients(context_id)
    # This rank's x reaches only the next rank's root.
    _check(grads, {0: x}, _reference(lambda t: ((t * 2.0) * (t * 2.0)).sum(), [x.data]))


def test_retain_grad_fills_grad_in_a_distributed_backward(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        z = y * 3.0
        z.retain_grad()
        dist_autograd.backward(context_id, [(z * z).sum()])
        grads = dist_autograd.get_gradients(context_id)
    np.testing.assert_allclose(z.grad.data, 2.0 * z.data, rtol=TOL)  # d sum(z^2) / dz
    assert z.grad.data.flags.writeable
    assert y.grad is None  # not asked to retain
    _check(grads, {0: x}, _reference(lambda t: ((t * 2.0 * 3.0) ** 2).sum(), [x.data]))


def test_gradients_handed_out_are_writable_and_the_callers_own(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.arange(3.0) + rank)
    w = _leaf(np.ones(3))
    with dist_autograd.context() as context_id:
        y = _pass_around(x, dest, source)  # the leaf itself: its gradient is the received one
        dist_autograd.backward(context_id, [(y * w).sum() + (y * y).sum() * 0.5])
        grads = dist_autograd.get_gradients(context_id)
    for leaf in (x, w):
        g = grads[leaf].data
        assert g.flags.writeable
        assert not np.shares_memory(g, leaf.data)
        g /= 2.0  # in place, as a user averaging gradients would
    assert not np.shares_memory(grads[x].data, grads[w].data)


def test_leaving_a_context_frees_it(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.ones(2))
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        dist_autograd.backward(context_id, [y.sum()])
        assert len(dist_autograd.get_gradients(context_id)) == 1
    with pytest.raises(Exception, match=rf"\b{context_id}\b"):
        dist_autograd.get_gradients(context_id)


def test_1500_contexts_leave_memory_flat(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.full(2, rank + 1.0))

    def run(n):
        for i in range(n):
            with dist_autograd.context() as context_id:
                if i % 100 == 0:  # most contexts are only entered and left
                    y = _pass_around(x * 2.0, dest, source)
                    dist_autograd.backward(context_id, [(y * y).sum()])
                    (grad,) = dist_autograd.get_gradients(context_id).values()
                    np.testing.assert_allclose(grad.data, 8.0 * x.data, rtol=TOL)

    run(300)  # warm up: caches, buffers, interned objects
    tracemalloc.start()
    try:
        # A first traced run: CPython 3.10 allocates frames afresh while tracing (about 14 kB,
        # however many contexts), so growth is measured from its end.
        run(300)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        run(1500)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Less than 8 bytes a context: any per-context record (an id in a set, say) is more.
    assert grown < 1500 * 8, f"{grown} bytes still allocated after 1500 contexts"


# --- shapes of computations ----------------------------------------------------------------------


def test_pipeline_through_all_ranks(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, 4)
    ws = [rng.uniform(-1, 1, (4, 4)) for _ in range(size)]

    def objective(x, *w):
        h = x
        for r in range(size):
            h = mg.tanh(h @ w[r])
        return (h * h).sum()

    expected = _reference(objective, [x0, *ws])
    x, w = _leaf(x0), _leaf(ws[rank])
    with dist_autograd.context() as context_id:
        h = x if rank == 0 else dist.recv(rank - 1)
        h = mg.tanh(h @ w)
        if rank < size - 1:
            dist.send(h, rank + 1)
            roots = []
        else:
            roots = [(h * h).sum()]
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {0: x, 1 + rank: w} if rank == 0 else {1 + rank: w}, expected)


def test_ring_back_to_rank_0(comm):
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-1, 1, 3)
    cs = rng.uniform(0.5, 1.5, size)

    def objective(x):
        h = x
        for r in range(size):
            h = mg.sin(h * cs[r])
        return (h * x).sum()

    expected = _reference(objective, [x0])
    x = _leaf(x0) if rank == 0 else None
    with dist_autograd.context() as context_id:
        if rank == 0:
            request = dist.isend(mg.sin(x * cs[0]), dest)
            h = dist.recv(source)
            request.wait()
            roots = [(h * x).sum()]
        else:
            h = dist.recv(source)
            dist.send(mg.sin(h * cs[rank]), dest)
            roots = []
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {0: x} if rank == 0 else {}, expected)


def test_fan_out_from_rank_0(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (2, 3))
    ws = [rng.uniform(-1, 1, (3, 2)) for _ in range(size)]

    def objective(x, *w):
        t = mg.exp(x * 0.5)
        return sum((mg.sin(t @ w[r]) * (r + 1.0)).sum() for r in range(size))

    expected = _reference(objective, [x0, *ws])
    x, w = _leaf(x0), _leaf(ws[rank])
    with dist_autograd.context() as context_id:
        if rank == 0:
            t = mg.exp(x * 0.5)
            for r in range(1, size):
                dist.send(t, r, tag=r)
        else:
            t = dist.recv(0, tag=rank)
        root = (mg.sin(t @ w) * (rank + 1.0)).sum()
        dist_autograd.backward(context_id, [root])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {0: x, 1: w} if rank == 0 else {1 + rank: w}, expected)


def test_fan_in_to_rank_0(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(4)
    xs = [rng.uniform(-1, 1, 5) for _ in range(size)]

    def objective(*x):
        total = x[0] * 1.0
        for r in range(1, size):
            total = total + mg.sin(x[r]) * r
        return (total * total).sum()

    expected = _reference(objective, xs)
    x = _leaf(xs[rank])
    with dist_autograd.context() as context_id:
        if rank == 0:
            total = x * 1.0
            for r in range(1, size):
                total = total + dist.recv(r)
            roots = [(total * total).sum()]
        else:
            dist.send(mg.sin(x) * rank, 0)
            roots = []
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: x}, expected)


@pytest.mark.min_ranks(3)
@pytest.mark.parametrize("join", ["on-the-source", "on-the-last-rank"])
def test_diamond_whose_paths_cross_different_ranks(comm, join):
    # Rank 0 sends u to ranks 1 and 2; each computes its path; the paths join on rank 0 or on
    # the last rank (rank 2 itself at size 3). Other ranks take part with no roots.
    rank, size = comm.rank, comm.size
    join_rank = 0 if join == "on-the-source" else size - 1
    rng = np.random.default_rng(5)
    x0, a0, b0 = (rng.uniform(-1, 1, 3) for _ in range(3))

    def objective(x, a, b):
        u = mg.exp(x * 0.5)
        p = mg.sin(u * a)
        q = u * u * b
        return (p * q).sum()

    expected = _reference(objective, [x0, a0, b0])
    x, a, b = _leaf(x0), _leaf(a0), _leaf(b0)
    with dist_autograd.context() as context_id:
        p = q = None
        if rank == 0:
            u = mg.exp(x * 0.5)
            dist.send(u, 1, tag=1)
            dist.send(u, 2, tag=2)
        if rank == 1:
            p = mg.sin(dist.recv(0, tag=1) * a)
            if join_rank != 1:
                dist.send(p, join_rank, tag=3)
        if rank == 2:
            u = dist.recv(0, tag=2)
            q = u * u * b
            if join_rank != 2:
                dist.send(q, join_rank, tag=4)
        roots = []
        if rank == join_rank:
            p = dist.recv(1, tag=3) if p is None else p
            q = dist.recv(2, tag=4) if q is None else q
            roots = [(p * q).sum()]
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    mine = {0: {0: x}, 1: {1: a}, 2: {2: b}}.get(rank, {})
    _check(grads, mine, expected)


@pytest.mark.parametrize("offsets", [(1, 1), (1, 2)], ids=["twice-to-one-rank", "to-two-ranks"])
def test_the_same_tensor_sent_twice(comm, offsets):
    # Every rank sends t to rank + offsets[0] (tag 1) and to rank + offsets[1] (tag 2): the same
    # rank twice, or two ranks (at size 2 one of them is the sender itself).
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(6)
    xs = [rng.uniform(-1, 1, 4) for _ in range(size)]
    o1, o2 = offsets

    def objective(*x):
        t = [mg.exp(xr * 0.3) for xr in x]
        return sum((t[(r - o1) % size] * mg.sin(t[(r - o2) % size])).sum() for r in range(size))

    expected = _reference(objective, xs)
    x = _leaf(xs[rank])
    with dist_autograd.context() as context_id:
        t = mg.exp(x * 0.3)
        requests = [
            dist.isend(t, (rank + o1) % size, tag=1),
            dist.isend(t, (rank + o2) % size, tag=2),
        ]
        y1 = dist.recv((rank - o1) % size, tag=1)
        y2 = dist.recv((rank - o2) % size, tag=2)
        for request in requests:
            request.wait()
        dist_autograd.backward(context_id, [(y1 * mg.sin(y2)).sum()])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: x}, expected)


def test_a_received_tensor_sent_on(comm):
    # Rank 0 sends t around the ring; every other rank uses what it receives in a root and sends
    # the received tensor itself on; rank 0 gets it back.
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(7)
    x0 = rng.uniform(-1, 1, 3)
    cs = [rng.uniform(-1, 1, 3) for _ in range(size)]

    def objective(x):
        t = mg.sin(x)
        return sum((t * cs[r]).sum() for r in range(1, size)) + (t * cs[0] + t * t).sum()

    expected = _reference(objective, [x0])
    x = _leaf(x0) if rank == 0 else None
    with dist_autograd.context() as context_id:
        if rank == 0:
            t = mg.sin(x)
            request = dist.isend(t, dest)
            back = dist.recv(source)
            request.wait()
            roots = [(back * cs[0] + t * t).sum()]
        else:
            y = dist.recv(source)
            dist.send(y, dest)
            roots = [(y * cs[rank]).sum()]
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {0: x} if rank == 0 else {}, expected)


def test_sends_whose_result_no_root_uses_do_not_hang(comm):
    # Each rank sends three tensors to the next: one feeds the next rank's root, one is received
    # and dropped, and one comes from a leaf nothing else uses. Rank 0 has no root at all, so its
    # received tensors are all unreachable (at size 1 there is no root anywhere).
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(8)
    xs = [rng.uniform(-1, 1, 3) for _ in range(size)]
    zs = [rng.uniform(-1, 1, 3) for _ in range(size)]

    def objective(*leaves):
        x, roots = leaves[:size], []
        for r in range(1, size):
            v = x[(r - 1) % size] * 2.0
            roots.append((v * v).sum())
        return sum(roots) if roots else None

    expected = _reference(objective, xs + zs)
    x, z = _leaf(xs[rank]), _leaf(zs[rank])
    with dist_autograd.context() as context_id:
        requests = [
            dist.isend(x * 2.0, dest, tag=0),
            dist.isend(mg.sin(x), dest, tag=1),
            dist.isend(z * 3.0, dest, tag=2),
        ]
        v = dist.recv(source, tag=0)
        dist.recv(source, tag=1)
        dist.recv(source, tag=2)
        for request in requests:
            request.wait()
        roots = [] if rank == 0 else [(v * v).sum()]
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: x, size + rank: z}, expected)


def test_no_roots_anywhere(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.ones(3))
    with dist_autograd.context() as context_id:
        request = dist.isend(x * 2.0, dest)
        dist.recv(source)
        request.wait()
        dist_autograd.backward(context_id, [])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {0: x}, [None])


def test_roots_on_several_ranks_add_up(comm):
    # Every rank has a root, rank 0 two: the objective is their sum over all ranks.
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(9)
    xs = [rng.uniform(-1, 1, (2, 2)) for _ in range(size)]

    def objective(*x):
        total = (x[0] * x[0]).sum() * 0.5
        for r in range(size):
            total = total + (mg.sin(x[(r - 1) % size]) @ x[r]).sum()
        return total

    expected = _reference(objective, xs)
    x = _leaf(xs[rank])
    with dist_autograd.context() as context_id:
        y = _pass_around(mg.sin(x), dest, source)
        roots = [(y @ x).sum()]
        if rank == 0:
            roots.append((x * x).sum() * 0.5)
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: x}, expected)


def test_retain_graph_lets_backward_run_again_and_gradients_accumulate(comm):
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(10)
    xs = [rng.uniform(-1, 1, 3) for _ in range(size)]

    def objective(*x):
        return sum((mg.exp(x[(r - 1) % size] * 0.5) * x[r]).sum() for r in range(size))

    (expected,) = _reference(objective, xs)[rank : rank + 1]
    x = _leaf(xs[rank])
    with dist_autograd.context() as context_id:
        y = _pass_around(mg.exp(x * 0.5), dest, source)
        root = (y * x).sum()
        dist_autograd.backward(context_id, [root], retain_graph=True)
        _check(dist_autograd.get_gradients(context_id), {0: x}, [expected])
        dist_autograd.backward(context_id, [root], retain_graph=True)
        _check(dist_autograd.get_gradients(context_id), {0: x}, [2 * expected])
        dist_autograd.backward(context_id, [root])
        _check(dist_autograd.get_gradients(context_id), {0: x}, [3 * expected])


def test_backward_twice_without_retain_graph_raises_on_every_rank(comm):
    rank, size, dest, source = _ring(comm)
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * x, dest, source)
        root = (mg.sin(y) * x).sum()
        dist_autograd.backward(context_id, [root])
        start = time.monotonic()
        with pytest.raises(Exception, match="retain_graph"):
            dist_autograd.backward(context_id, [root])
        assert time.monotonic() - start < 10


def test_sendrecv_halo_exchange(comm):
    # A periodic 1-D field split over the ranks; each rank exchanges one boundary value with
    # each neighbour and takes a three-point stencil over its part and the halos.
    rank, size, right, left = _ring(comm)
    rng = np.random.default_rng(11)
    us = [rng.uniform(-1, 1, 5) for _ in range(size)]

    def local_loss(u, left_halo, right_halo):
        ext = mg.cat([left_halo, u, right_halo])
        lap = ext[2:] - ext[1:-1] * 2.0 + ext[:-2]
        return (lap * lap).sum() + mg.sin(left_halo * right_halo).sum()

    def objective(*u):
        return sum(
            local_loss(u[r], u[(r - 1) % size][-1:], u[(r + 1) % size][:1]) for r in range(size)
        )

    expected = _reference(objective, us)
    u = _leaf(us[rank])
    with dist_autograd.context() as context_id:
        left_halo = dist.sendrecv(u[-1:], dest=right, source=left)
        right_halo = dist.sendrecv(u[:1], dest=left, source=right, sendtag=1)
        dist_autograd.backward(context_id, [local_loss(u, left_halo, right_halo)])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: u}, expected)


def test_isend_irecv_waited_in_any_order(comm):
    # Three messages in flight at once around the ring, one with a payload too large to ride
    # inline (see Note [inline payloads] in messages.py), waited in reverse order.
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(12)
    shapes = [(3,), (100,), (2, 4)]
    xs = [[rng.uniform(-1, 1, s) for s in shapes] for _ in range(size)]
    flat = [a for per_rank in xs for a in per_rank]

    def objective(*leaves):
        total = None
        for r in range(size):
            theirs = leaves[3 * ((r - 1) % size) : 3 * ((r - 1) % size) + 3]
            mine = leaves[3 * r : 3 * r + 3]
            term = sum((mg.sin(t) * m).sum() for t, m in zip(theirs, mine))
            total = term if total is None else total + term
        return total

    expected = _reference(objective, flat)
    mine = [_leaf(a) for a in xs[rank]]
    with dist_autograd.context() as context_id:
        receives = [dist.irecv(source, tag=i) for i in range(3)]
        sends = [dist.isend(mg.sin(m), dest, tag=i) for i, m in enumerate(mine)]
        received = [None] * 3
        for i in reversed(range(3)):
            received[i] = receives[i].wait()
            assert received[i].requires_grad
        for request in sends:
            request.wait()
        root = sum((t * m).sum() for t, m in zip(received, mine))
        dist_autograd.backward(context_id, [root])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {3 * rank + i: m for i, m in enumerate(mine)}, expected)


def test_self_send_at_any_size(comm):
    # Each rank sends to itself inside the context: the adjoint goes to itself too.
    rank = comm.rank
    x = _leaf(np.array([0.5, -1.0, 2.0]) + rank)
    with dist_autograd.context() as context_id:
        request = dist.isend(mg.exp(x * 0.25), rank)
        y = dist.recv(rank)
        request.wait()
        dist_autograd.backward(context_id, [(y * x).sum()])
        grads = dist_autograd.get_gradients(context_id)
    expected = _reference(lambda t: (mg.exp(t * 0.25) * t).sum(), [x.data])
    _check(grads, {0: x}, expected)


def test_tensors_without_grad_travel_in_a_context_too(comm):
    # Integer indices and a float tensor that does not require grad go along with one that does.
    rank, size, dest, source = _ring(comm)
    rng = np.random.default_rng(13)
    xs = [rng.uniform(-1, 1, 6) for _ in range(size)]
    scales = [rng.uniform(-1, 1, 3) for _ in range(size)]
    indices = [rng.integers(0, 6, 3) for _ in range(size)]

    def objective(*x):
        return sum(
            (
                mg.index_select(mg.sin(x[(r - 1) % size]), 0, indices[(r - 1) % size])
                * scales[(r - 1) % size]
            ).sum()
            for r in range(size)
        )

    expected = _reference(objective, xs)
    x = _leaf(xs[rank])
    with dist_autograd.context() as context_id:
        requests = [
            dist.isend(mg.sin(x), dest, tag=0),
            dist.isend(indices[rank], dest, tag=1),
            dist.isend(mg.tensor(scales[rank]), dest, tag=2),
        ]
        y = dist.recv(source, tag=0)
        index = dist.recv(source, tag=1)
        scale = dist.recv(source, tag=2)
        for request in requests:
            request.wait()
        assert index.dtype == np.int64 and not index.requires_grad
        assert not scale.requires_grad
        root = (mg.index_select(y, 0, index.data) * scale).sum()
        dist_autograd.backward(context_id, [root])
        grads = dist_autograd.get_gradients(context_id)
    _check(grads, {rank: x}, expected)


def test_large_gradients_of_an_earlier_context_stay_intact(comm):
    # Gradients of 2 MiB arrive in a separate payload message; the gradients of the first
    # context, kept by the user, must not change when the second context receives its own.
    rank, size, dest, source = _ring(comm)
    n = 2**18
    kept = []
    for i in range(2):
        x = _leaf(np.full(n, rank + 1.0 + i))
        with dist_autograd.context() as context_id:
            y = _pass_around(x, dest, source)  # the leaf itself: its gradient is the received one
            dist_autograd.backward(context_id, [(y * y).sum() * 0.5])
            grads = dist_autograd.get_gradients(context_id)
        (grad,) = grads.values()
        np.testing.assert_array_equal(grad.data, x.data)  # d/dy of sum(y^2)/2 is y, sent back
        kept.append((grad, x.data.copy()))
    for grad, value in kept:
        np.testing.assert_array_equal(grad.data, value)


# --- reproducible bits ---------------------------------------------------------------------------


@pytest.mark.min_ranks(3)
def test_gradients_are_the_same_bits_whatever_order_they_arrive_in(comm):
    # Rank 0 sends its leaf twice to every other rank; their gradients all meet at the leaf,
    # arriving in an order that random delays shuffle. Their scales span 1e16, so a different
    # order of addition would give different bits.
    rank, size = comm.rank, comm.size
    n = 64
    scales = np.random.default_rng(7).choice([1e16, -1e16, 1.0, 3.0, -2.0], (size, 2, n))
    x = _leaf(np.linspace(-1.0, 1.0, n))
    results = set()
    for run in range(24):
        delays = np.random.default_rng([run, rank]).uniform(0, 3e-3, 2)
        with dist_autograd.context() as context_id:
            if rank == 0:
                requests = [dist.isend(x, r, tag=k) for r in range(1, size) for k in range(2)]
                roots = []
            else:
                roots = []
                for k in range(2):
                    y = dist.recv(0, tag=k)
                    roots.append((y * mg.tensor(scales[rank, k])).sum())
            time.sleep(delays[0])
            if rank == 0:
                for request in requests:
                    request.wait()
            else:  # the two gradients of a rank leave at different times too
                roots = [roots[0] + roots[1] * 1.0]
                time.sleep(delays[1])
            dist_autograd.backward(context_id, roots)
            if rank == 0:
                results.add(dist_autograd.get_gradients(context_id)[x].data.tobytes())
    if rank == 0:
        assert len(results) == 1, f"{len(results)} different results in 24 runs"
