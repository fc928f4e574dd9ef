"""Forward mode through point-to-point messages, at any world size (rank 0 with itself at 1).

A tensor's tangents at every dual level, nested ones included, travel with it: the receiver's
tangents are the sender's, level for level by nesting depth. Checked against the same program on
one process, against central differences of the distributed objective (the sum over ranks of each
rank's root), and for second derivatives (forward over forward).
"""

import numpy as np
import pytest
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.autograd import forward_ad as fwAD
from mpigrad.distributed import messages

pytestmark = pytest.mark.timeout(120)

EPS = 1e-6
TOL = 1e-6
# Inline-sized, payload-sized, and one whose primal rides inline but not with its tangents.
SHAPES = [(), (3,), (2, 5), (40,), (30, 7)]
TRANSFERS = [
    pytest.param("send", marks=pytest.mark.min_ranks(2)),  # blocking send to oneself may hang
    "isend",
    "sendrecv",
]


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def _pass_on(how, tensor, dest, source, tag=0):
    """``tensor`` to ``dest``; returns what ``source`` passed on (every rank calls it)."""
    if how == "sendrecv":
        return dist.sendrecv(tensor, dest, source, sendtag=tag)
    if how == "isend":
        request = dist.isend(tensor, dest, tag)
        received = dist.irecv(source, tag).wait()
        request.wait()
        return received
    if dist.get_rank() == 0:  # around the ring one at a time: blocking sends cannot deadlock
        dist.send(tensor, dest, tag)
        return dist.recv(source, tag)
    received = dist.recv(source, tag)
    dist.send(tensor, dest, tag)
    return received


def _values(rank, shape, seed=0):
    return np.random.default_rng([seed, rank]).standard_normal(shape)


def _local(x):
    """Each rank's part of the program before the message."""
    return mg.sin(x) * x


def _program(how, x, comm):
    """The distributed program: rank r's root is sum(exp(received) * x_r), the received tensor
    being _local of rank r - 1's input."""
    rank, size = comm.rank, comm.size
    z = _pass_on(how, _local(x), (rank + 1) % size, (rank - 1) % size)
    return (mg.exp(z) * x).sum()


def _serial_program(xs):
    """The same program on one process: the root of every rank."""
    size = len(xs)
    return [(mg.exp(_local(xs[(r - 1) % size])) * xs[r]).sum() for r in range(size)]


def _objective(how, comm, values):
    return comm.allreduce(float(_program(how, mg.tensor(values), comm).data))


def _tree(tensor, levels):
    """{path of level depths: array} over the tangents ``tensor`` carries, nested included."""
    tree, todo = {}, [((), tensor)]
    while todo:
        path, t = todo.pop()
        tree[path] = t.data
        for depth, level in enumerate(levels):
            tangent = (t._fw or {}).get(level)
            if tangent is not None:
                todo.append(((*path, depth), tangent))
    return tree


def _assert_same_tree(got, expected, exact=True):
    assert sorted(got) == sorted(expected)
    for path, array in expected.items():
        assert got[path].dtype == array.dtype and got[path].shape == array.shape, path
        if exact:
            np.testing.assert_array_equal(got[path], array, err_msg=str(path))
        else:
            np.testing.assert_allclose(got[path], array, rtol=1e-12, atol=1e-12, err_msg=str(path))


@pytest.mark.parametrize("how", TRANSFERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_receiver_gets_the_senders_tangent(comm, how, dtype, shape):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    with fwAD.dual_level():
        x = fwAD.make_dual(
            mg.tensor(_values(rank, shape).astype(dtype)),
            mg.tensor(_values(rank, shape, seed=1).astype(dtype)),
        )
        y = _pass_on(how, x * 3.0, dest, source)
        primal, tangent = fwAD.unpack_dual(y)
        expected = fwAD.unpack_dual(
            fwAD.make_dual(
                mg.tensor(_values(source, shape).astype(dtype)),
                mg.tensor(_values(source, shape, seed=1).astype(dtype)),
            )
            * 3.0
        )
        np.testing.assert_array_equal(primal.data, expected.primal.data)
        assert tangent.dtype == np.dtype(dtype) and tangent.shape == shape
        np.testing.assert_array_equal(tangent.data, expected.tangent.data)
        assert not y.requires_grad and tangent._fw is None
    assert y._fw is None  # leaving the level removed the tangent it brought, as for any tensor


@pytest.mark.parametrize("how", TRANSFERS)
@pytest.mark.parametrize("shape", [(4,), (30, 7)], ids=str)
def test_jvp_matches_one_process_and_finite_differences(comm, how, shape):
    rank, size = comm.rank, comm.size
    xs = [_values(r, shape) for r in range(size)]
    vs = [_values(r, shape, seed=1) for r in range(size)]
    with fwAD.dual_level():
        root = _program(how, fwAD.make_dual(mg.tensor(xs[rank]), mg.tensor(vs[rank])), comm)
        got = fwAD.unpack_dual(root).tangent
        serial = _serial_program(
            [fwAD.make_dual(mg.tensor(x), mg.tensor(v)) for x, v in zip(xs, vs)]
        )
        expected = fwAD.unpack_dual(serial[rank]).tangent
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-12)
    forward = comm.allreduce(float(got.data))
    difference = (
        _objective(how, comm, xs[rank] + EPS * vs[rank])
        - _objective(how, comm, xs[rank] - EPS * vs[rank])
    ) / (2 * EPS)
    assert forward == pytest.approx(difference, rel=TOL, abs=TOL)


@pytest.mark.parametrize("how", TRANSFERS)
@pytest.mark.parametrize("shape", [(3,), (30, 7)], ids=str)
def test_forward_over_forward_gives_second_derivatives(comm, how, shape):
    # Two nested levels: the received tensor carries the whole tree of tangents (four arrays:
    # outer, inner, and the mixed term under each), and the second directional derivative of
    # the distributed objective matches one process and differences of the first derivative.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    xs = [_values(r, shape) for r in range(size)]
    us = [_values(r, shape, seed=1) for r in range(size)]
    vs = [_values(r, shape, seed=2) for r in range(size)]

    def dual(r, outer, inner):
        x = fwAD.make_dual(mg.tensor(xs[r]), mg.tensor(vs[r]), level=inner)
        return fwAD.make_dual(x, mg.tensor(us[r]), level=outer)

    with fwAD.dual_level() as outer, fwAD.dual_level() as inner:
        levels = [outer, inner]
        sent = _local(dual(rank, outer, inner))
        received = _pass_on(how, sent, dest, source)
        _assert_same_tree(
            _tree(received, levels), _tree(_local(dual(source, outer, inner)), levels)
        )
        assert len(_tree(received, levels)) == 5

        root = (mg.exp(received) * dual(rank, outer, inner)).sum()
        first = fwAD.unpack_dual(root, outer).tangent
        second = fwAD.unpack_dual(first, inner).tangent
        serial = _serial_program([dual(r, outer, inner) for r in range(size)])[rank]
        serial_first = fwAD.unpack_dual(serial, outer).tangent
        np.testing.assert_allclose(first.data, serial_first.data, rtol=1e-12)
        np.testing.assert_allclose(
            second.data, fwAD.unpack_dual(serial_first, inner).tangent.data, rtol=1e-12
        )
        # Unpacked the other way round: the same second derivative.
        other = fwAD.unpack_dual(fwAD.unpack_dual(root, inner).tangent, outer).tangent
        np.testing.assert_allclose(other.data, second.data, rtol=1e-12)

    def first_derivative(values):
        with fwAD.dual_level():
            x = fwAD.make_dual(mg.tensor(values), mg.tensor(us[rank]))
            return comm.allreduce(float(fwAD.unpack_dual(_program(how, x, comm)).tangent.data))

    difference = (
        first_derivative(xs[rank] + EPS * vs[rank]) - first_derivative(xs[rank] - EPS * vs[rank])
    ) / (2 * EPS)
    assert comm.allreduce(float(second.data)) == pytest.approx(difference, rel=TOL, abs=TOL)


def test_four_nested_levels_travel_whole_and_five_are_refused(comm):
    # Four levels of full tangents are 64 arrays, as many as a message carries; five are refused
    # before anything is sent (see Note [tangents on the wire] in messages.py).
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size

    def dual_exp(r, levels):
        x = mg.tensor(_values(r, (2,)))
        for i, level in enumerate(levels):
            x = fwAD.make_dual(x, mg.full((2,), float(i + 1)), level=level)
        return mg.exp(x)

    with fwAD.dual_level() as a, fwAD.dual_level() as b, fwAD.dual_level() as c:
        with fwAD.dual_level() as d:
            levels = [a, b, c, d]
            received = dist.sendrecv(dual_exp(rank, levels), dest, source)
            tree = _tree(received, levels)
            assert len(tree) == messages.MAX_TANGENTS + 1
            _assert_same_tree(tree, _tree(dual_exp(source, levels), levels))
            with fwAD.dual_level() as e:
                with pytest.raises(ValueError) as info:
                    dist.isend(dual_exp(rank, [*levels, e]), dest)
    assert (
        f"isend: rank {rank}: the tensor carries 325 tangents over 5 nested dual levels; a "
        f"message carries at most {messages.MAX_TANGENTS}"
    ) in str(info.value)
    # Nothing went out: the next exchange gets the next tensor.
    out = dist.sendrecv(np.full(2, float(rank)), dest, source, sendtag=9)
    np.testing.assert_array_equal(out.data, np.full(2, float(source)))


@pytest.mark.parametrize("shape", [(3, 4), (40, 30)], ids=str)
def test_non_contiguous_tangents_arrive_intact(comm, shape):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size

    def dual(r):
        big = _values(r, (shape[1], 2 * shape[0]), seed=1)
        tangent = mg.from_numpy(big[:, ::2].T)  # a strided, transposed view
        assert not tangent.data.flags.c_contiguous
        return fwAD.make_dual(mg.tensor(_values(r, shape)), tangent), big[:, ::2].T

    with fwAD.dual_level():
        x, _ = dual(rank)
        received = dist.sendrecv(x.T.T, dest, source)  # tangents of views are views too
        np.testing.assert_array_equal(fwAD.unpack_dual(received).tangent.data, dual(source)[1])


@pytest.mark.parametrize("how", TRANSFERS)
def test_only_the_levels_that_carry_tangents_come(comm, how):
    # The sender's tangent at its inner level arrives at the receiver's inner level; a tensor
    # without tangents is a constant at every level.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    with fwAD.dual_level() as outer, fwAD.dual_level() as inner:
        x = fwAD.make_dual(mg.tensor(np.full(3, float(rank))), mg.ones(3), level=inner)
        received = _pass_on(how, x * 2.0, dest, source)
        assert fwAD.unpack_dual(received, outer).tangent is None
        np.testing.assert_array_equal(
            fwAD.unpack_dual(received, inner).tangent.data, np.full(3, 2.0)
        )
        plain = _pass_on(how, mg.tensor(np.full(3, float(rank))), dest, source, tag=1)
        assert plain._fw is None


@pytest.mark.min_ranks(2)
@pytest.mark.parametrize("how", ["isend", "sendrecv"])
def test_mismatched_levels_raise_naming_both_ranks(comm, how):
    # Rank r opens 1 + r % 2 levels and sends a tensor with a tangent at its outermost one: a
    # rank whose source has another number of levels open raises, naming both ranks and counts;
    # the message was consumed, so the next exchange works.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    mine, theirs = 1 + rank % 2, 1 + source % 2
    levels = [fwAD.enter_dual_level() for _ in range(mine)]
    try:
        x = fwAD.make_dual(mg.tensor(np.arange(50.0)), mg.ones(50), level=levels[0])
        if mine == theirs:  # an odd size has one such pair
            received = _pass_on(how, x, dest, source)
            assert fwAD.unpack_dual(received, levels[0]).tangent is not None
        else:
            with pytest.raises(dist.DistributedError) as info:
                _pass_on(how, x, dest, source)
            assert (
                f"{how if how == 'sendrecv' else 'irecv'}: rank {rank} received a tensor carrying "
                f"forward-mode tangents from rank {source} (tag 0), which had {theirs} dual "
                f"level(s) open, but rank {rank} has {mine}: levels are matched by nesting depth"
            ) in str(info.value), str(info.value)
    finally:
        for level in reversed(levels):
            fwAD.exit_dual_level(level)
    comm.Barrier()  # every send above has been received
    out = dist.sendrecv(np.full(2, float(rank)), dest, source, sendtag=9)
    np.testing.assert_array_equal(out.data, np.full(2, float(source)))


@pytest.mark.min_ranks(2)
def test_mismatched_levels_in_a_context_fail_it_on_every_rank(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    with pytest.raises(dist.DistributedError) as info:
        with dist_autograd.context():
            with fwAD.dual_level():
                levels = 1 if rank == 0 else 2
                inner = fwAD.enter_dual_level() if levels == 2 else None
                try:
                    x = fwAD.make_dual(mg.tensor(np.arange(3.0)), mg.ones(3))
                    dist.sendrecv(x, dest, source)
                finally:
                    if inner is not None:
                        fwAD.exit_dual_level(inner)
    # Ranks 0 and 1 receive from a rank with another number of levels; each finds the mismatch
    # itself or, if the other's failure notice comes first, is told of it. Other ranks are told,
    # while they wait in sendrecv or when they leave.
    text = str(info.value)
    where = [f"sendrecv on rank {rank}: context", f"leaving the context on rank {rank}: context"]
    if rank in (0, 1):
        where.append(f"sendrecv: rank {rank} received a tensor carrying forward-mode tangents")
    assert any(place in text for place in where), text
    assert "received a tensor carrying forward-mode tangents" in text, text


@pytest.mark.parametrize("how", TRANSFERS)
def test_a_dual_tensor_that_requires_grad_is_recorded_and_keeps_its_tangent(comm, how):
    # Reverse mode through the primal as without tangents, the tangent alongside; and reverse
    # over forward: a tangent that requires grad gets send and recv functions of its own, so the
    # gradient of a function of the received tangent reaches the sender's leaf.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    xs = [_values(r, (4,)) for r in range(size)]
    vs = [_values(r, (4,), seed=1) for r in range(size)]
    with dist_autograd.context() as context_id:
        leaf = mg.tensor(xs[rank], requires_grad=True)
        with fwAD.dual_level():
            y = _pass_on(how, _local(fwAD.make_dual(leaf, mg.tensor(vs[rank]))), dest, source)
            primal, tangent = fwAD.unpack_dual(y)
            assert y.requires_grad and tangent.requires_grad
            root = (primal * primal).sum() + (tangent * primal).sum()
        dist_autograd.backward(context_id, [root], timeout=60)
        (grad,) = dist_autograd.get_gradients(context_id).values()
    # One process: rank r's leaf reaches rank r + 1's root only.
    serial_leaf = mg.tensor(xs[rank], requires_grad=True)
    with fwAD.dual_level():
        p, t = fwAD.unpack_dual(_local(fwAD.make_dual(serial_leaf, mg.tensor(vs[rank]))))
        ((p * p).sum() + (t * p).sum()).backward()
    np.testing.assert_allclose(grad.data, serial_leaf.grad.data, rtol=1e-12)


def test_proc_null_sends_nothing_and_gives_no_tangent(comm):
    # A non-periodic chain: the ends send to and receive from PROC_NULL; sendrecv from PROC_NULL
    # gives zeros without a tangent (a constant).
    rank, size = comm.rank, comm.size
    dest = rank + 1 if rank + 1 < size else MPI.PROC_NULL
    source = rank - 1 if rank > 0 else MPI.PROC_NULL
    with fwAD.dual_level():
        x = fwAD.make_dual(mg.tensor(np.full(3, float(rank))), mg.full((3,), float(rank + 1)))
        y = dist.sendrecv(x, dest, source)
        if source == MPI.PROC_NULL:
            np.testing.assert_array_equal(y.data, np.zeros(3))
            assert fwAD.unpack_dual(y).tangent is None
        else:
            np.testing.assert_array_equal(fwAD.unpack_dual(y).tangent.data, np.full(3, rank))
        dist.isend(x, MPI.PROC_NULL).wait()
        assert dist.recv(MPI.PROC_NULL) is None
