"""Point-to-point transfers of mpigrad.distributed, at any world size (rank 0 with itself at 1).

Each test runs on its own duplicate of COMM_WORLD (the harness's ``comm``): mpigrad is
initialized on it before the test and destroyed after it.
"""

import re
import time

import numpy as np
import pytest
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.distributed import comm as dist_comm
from mpigrad.distributed import messages, transport

DTYPES = [np.float32, np.float64, np.int64, np.bool_]
# 0-d, empty, inline-sized and payload-sized (see Note [inline payloads] in messages.py).
SHAPES = [(), (0,), (3, 0), (1,), (5,), (4, 6), (2, 3, 4), (70,), (33, 17), (2, 3, 5, 7)]


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def _data(dtype, shape, rank):
    """Values that depend on the sending rank, so a message from the wrong rank shows."""
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) * 1.5 + rank * 1000
    if np.dtype(dtype) == np.bool_:
        return (np.arange(int(np.prod(shape))).reshape(shape) + rank) % 3 == 0
    return values.astype(dtype)


def _check(tensor, expected):
    assert isinstance(tensor, mg.Tensor)
    assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
    assert not tensor.requires_grad and tensor.grad_fn is None
    np.testing.assert_array_equal(tensor.data, expected)


def test_rank_and_size(comm):
    assert (dist.get_rank(), dist.get_world_size()) == (comm.rank, comm.size)


def test_init_again_with_the_same_comm_is_a_no_op_and_another_raises(comm):
    dist.init(comm)
    with pytest.raises(RuntimeError, match="already initialized on another communicator"):
        dist.init(MPI.COMM_WORLD)


@pytest.mark.parametrize("timeout", [0, -1.0, "soon", float("nan")])
def test_init_refuses_a_timeout_that_is_not_seconds(comm, timeout):
    # Checked before anything else, initialized or not: nothing is left half done.
    initialized = dist.is_initialized()
    with pytest.raises(ValueError, match=r"^init: timeout must be a positive number of seconds"):
        dist.init(comm, timeout=timeout)
    assert dist.is_initialized() == initialized


def test_destroy_drops_what_was_never_received_and_init_takes_up_the_same_communicators(comm):
    # See Note [reusing communicators]: the drained communicators come back, empty.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    kept = dist_comm.get().duplicates()
    sent = [dist.isend(np.full(n, -1.0), dest, tag=3) for n in (2, 4096)]  # inline, payload
    pending = dist.irecv(source, tag=4)
    comm.Barrier()
    dist.destroy()
    with pytest.raises(RuntimeError, match=r"\(tag 4\) was cancelled: .*destroy\(\) ran"):
        pending.wait()
    dist.init(comm)
    assert all(a is b for a, b in zip(dist_comm.get().duplicates(), kept))
    for request in sent:  # destroy received them
        request.wait(timeout=5)
    request = dist.isend(np.full(3, float(rank)), dest, tag=3)
    _check(dist.recv(source, tag=3), np.full(3, float(source)))
    request.wait()


@pytest.mark.skipif(
    MPI.Get_library_version().startswith("Open MPI"),
    reason="Open MPI 4.1.4's MPI_Comm_dup of a communicator of some ranks crashed (SIGSEGV) in "
    "about one full run of tests/mpi in three, never in this file alone nor in plain mpi4py loops",
)
def test_communicators_kept_over_other_ranks_meanwhile_do_not_stop_the_reuse(comm):
    # In between, rank 0 initializes alone and the others together, over their own
    # communicator: each set is kept for its own ranks.
    half = comm.Split(int(comm.rank > 0), comm.rank)
    kept, inside = dist_comm.get().duplicates(), None
    for _ in range(2):
        dist.destroy()
        dist.init(half)
        mine = dist_comm.get().duplicates()
        assert inside is None or all(a is b for a, b in zip(mine, inside))
        inside = mine
        dist.destroy()
        dist.init(comm)
        assert all(a is b for a, b in zip(dist_comm.get().duplicates(), kept))
    half.Free()


@pytest.mark.min_ranks(2)
def test_ranks_that_do_not_all_hold_the_kept_communicators_make_new_ones(comm):
    # As after a destroy that timed out on rank 0 alone: init must agree to duplicate anew on
    # every rank, not take up a set that rank 0 lacks (a hang).
    rank, size = comm.rank, comm.size
    kept = dist_comm.get().duplicates()
    dist.destroy()
    if rank == 0:
        dist_comm._spares.clear()
    dist.init(comm)
    assert not any(a is b for a, b in zip(dist_comm.get().duplicates(), kept))
    dest, source = (rank + 1) % size, (rank - 1) % size
    _check(dist.sendrecv(np.full(2, float(rank)), dest, source), np.full(2, float(source)))


@pytest.mark.min_ranks(2)  # blocking send to oneself may wait forever, as MPI_Send may
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ring_send_recv(comm, dtype):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    for shape in SHAPES:
        if rank == 0:  # rank 0 starts the ring; the others pass it on
            dist.send(_data(dtype, shape, rank), dest)
            _check(dist.recv(source), _data(dtype, shape, source))
        else:
            received = dist.recv(source)
            dist.send(mg.tensor(_data(dtype, shape, rank)), dest)
            _check(received, _data(dtype, shape, source))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ring_isend_irecv(comm, dtype):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    receives = [dist.irecv(source, tag=i) for i in range(len(SHAPES))]
    sends = [dist.isend(_data(dtype, s, rank), dest, tag=i) for i, s in enumerate(SHAPES)]
    # Waited in reverse order: each receive still gets its own payload.
    for request, shape in reversed(list(zip(receives, SHAPES))):
        tensor = request.wait()
        _check(tensor, _data(dtype, shape, source))
        assert request.wait() is tensor
    for request in sends:
        request.wait()
        assert request.test()


def test_same_tag_messages_arrive_in_order_whatever_the_wait_order(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    sizes = [1, 100, 3, 1000, 0]
    receives = [dist.irecv(source) for _ in sizes]
    sends = [dist.isend(np.full(n, 10.0 * rank + i), dest) for i, n in enumerate(sizes)]
    for i in (3, 0, 4, 1, 2):
        _check(receives[i].wait(), np.full(sizes[i], 10.0 * source + i))
    for request in sends:
        request.wait()


def test_sendrecv_ring(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    for shape in [(), (0,), (7,), (300, 30)]:
        out = dist.sendrecv(mg.tensor(_data(np.float64, shape, rank)), dest, source, sendtag=4)
        _check(out, _data(np.float64, shape, source))
    # The other way round, with distinct tags.
    out = dist.sendrecv(_data(np.int64, (50, 3), rank), source, dest, sendtag=1, recvtag=1)
    _check(out, _data(np.int64, (50, 3), dest))


@pytest.mark.min_ranks(2)
def test_64_mib_round_trip(comm):
    rank = comm.rank
    n = 64 * 2**20 // 8
    if rank == 0:
        sent = np.arange(n, dtype=np.float64)
        dist.send(sent, 1, tag=2)
        back = dist.recv(1, tag=3)
        assert back.shape == (n,) and back.dtype == np.float64
        np.testing.assert_array_equal(back.data, sent * 2)
    elif rank == 1:
        received = dist.recv(0, tag=2)
        assert received.shape == (n,) and received.data[-1] == n - 1
        dist.send(received.data * 2, 0, tag=3)


def test_tags_keep_messages_apart(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    sends = [
        dist.isend(np.full(3, rank + 0.25), dest, tag=1),
        dist.isend(np.full(200, rank + 0.5), dest, tag=2),
    ]
    _check(dist.recv(source, tag=2), np.full(200, source + 0.5))
    _check(dist.recv(source, tag=1), np.full(3, source + 0.25))
    for request in sends:
        request.wait()


def test_user_messages_on_the_same_communicator_do_not_mix(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    user = comm.Isend(np.full(4, -1.0), dest, tag=0)
    mine = dist.isend(np.full(4, float(rank)), dest, tag=0)
    _check(dist.recv(source), np.full(4, float(source)))
    theirs = np.empty(4)
    comm.Recv(theirs, source, tag=0)
    np.testing.assert_array_equal(theirs, -1.0)
    user.Wait()
    mine.wait()


# A negative rank that is none of MPI's named ones (PROC_NULL is -1 under MPICH, -2 under Open
# MPI; ANY_SOURCE and ROOT are negative too).
_NEGATIVE_RANK = min(MPI.PROC_NULL, MPI.ANY_SOURCE, MPI.ROOT) - 1


@pytest.mark.parametrize(
    "call",
    [
        lambda size: dist.send(np.zeros(2), size),
        lambda size: dist.isend(np.zeros(2), _NEGATIVE_RANK),
        lambda size: dist.recv(size + 3),
        lambda size: dist.irecv(MPI.ANY_SOURCE),
        lambda size: dist.sendrecv(np.zeros(2), size, 0),
        lambda size: dist.sendrecv(np.zeros(2), 0, MPI.ANY_SOURCE),
    ],
    ids=["send", "isend", "recv", "irecv-any-source", "sendrecv-dest", "sendrecv-any-source"],
)
def test_bad_peer_raises(comm, call):
    size = comm.size
    with pytest.raises(ValueError) as info:
        call(size)
    text = str(info.value)
    assert "is not a rank of the communicator" in text
    assert f"ranks are 0 to {size - 1} (world size {size}; this is rank {comm.rank})" in text


def test_bad_dtype_and_type_raise_before_sending(comm):
    with pytest.raises(ValueError, match="cannot send arrays of dtype <f2"):
        dist.isend(np.zeros(3, dtype=np.float16), comm.rank)
    with pytest.raises(TypeError, match="send: expected a Tensor or a numpy array, got list"):
        dist.send([1.0, 2.0], comm.rank)


def test_non_contiguous_input_arrives_correctly(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size

    def views(r):
        base = np.arange(60 * 80, dtype=np.float64).reshape(60, 80) + r
        return [base[:, ::3], base.T, base[::-2, 5:9], base[:4, :5].T, base[7]]

    sends = [dist.isend(v, dest, tag=i) for i, v in enumerate(views(rank))]
    for i, expected in enumerate(views(source)):
        _check(dist.recv(source, tag=i), expected)
    for request in sends:
        request.wait()


# --- ranks and tags ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [np.int32, np.int64, np.uint8, int])
def test_any_integer_type_names_a_rank_and_a_tag(comm, kind):
    rank, size = comm.rank, comm.size
    dest, source = kind((rank + 1) % size), kind((rank - 1) % size)
    request = dist.isend(np.full(2, float(rank)), dest, tag=kind(5))
    _check(dist.recv(source, tag=kind(5)), np.full(2, float((rank - 1) % size)))
    request.wait()
    out = dist.sendrecv(np.full(2, float(rank)), dest, source, sendtag=kind(6), recvtag=kind(6))
    _check(out, np.full(2, float((rank - 1) % size)))


@pytest.mark.parametrize(
    "call",
    [
        lambda tag: dist.isend(np.zeros(2), 0, tag=tag),
        lambda tag: dist.irecv(0, tag=tag),
        lambda tag: dist.recv(0, tag=tag),
        lambda tag: dist.sendrecv(np.zeros(2), 0, 0, sendtag=tag),
        lambda tag: dist.sendrecv(np.zeros(2), 0, 0, sendtag=1, recvtag=tag),
    ],
    ids=["isend", "irecv", "recv", "sendrecv-sendtag", "sendrecv-recvtag"],
)
@pytest.mark.parametrize(
    "tag",
    [-1, MPI.ANY_TAG, 2**62, True, 1.0, "1"],
    ids=["minus-1", "any-tag", "2**62", "bool", "float", "str"],
)
def test_a_bad_tag_raises_the_same_way_everywhere(comm, call, tag):
    upper = comm.Get_attr(MPI.TAG_UB)
    with pytest.raises(ValueError) as info:
        call(tag)
    assert (
        f"{tag!r} is not a valid tag: tags are integers from 0 to {upper} (MPI's TAG_UB; "
        f"this is rank {comm.rank})"
    ) in str(info.value), str(info.value)


# --- a call that raises leaves nothing behind ----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, dest, source: dist.send(x.astype(np.float16), dest),
        lambda x, dest, source: dist.isend(x.reshape((1,) * 8 + (2,)), dest),
        lambda x, dest, source: dist.isend(x, dest, tag=-1),
        lambda x, dest, source: dist.sendrecv(x, dest, source, sendtag=-1),
        lambda x, dest, source: dist.sendrecv(x, dest, comm_size_plus_one(), sendtag=3),
        lambda x, dest, source: dist.sendrecv(x.astype(np.float16), dest, source, sendtag=3),
    ],
    ids=[
        "send-float16",
        "isend-9-dims",
        "isend-negative-tag",
        "sendrecv-negative-tag",
        "sendrecv-bad-source",
        "sendrecv-float16",
    ],
)
def test_a_send_that_raises_records_and_posts_nothing(comm, bad):
    # Inside a context: the failed call must leave no send function (backward would wait for
    # its gradient) and no posted receive (it would take the next tensor sent with its tag);
    # leaving the context checks that no tensor went out.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = mg.tensor(np.arange(2.0) + rank, requires_grad=True)
    with dist_autograd.context() as context_id:
        with pytest.raises((ValueError, TypeError)):
            bad(x * 1.0, dest, source)
        request = dist.isend(x * 3.0, dest, tag=3)
        y = dist.recv(source, tag=3)
        request.wait()
        dist_autograd.backward(context_id, [(y * y).sum()], timeout=30)
        (grad,) = dist_autograd.get_gradients(context_id).values()
    np.testing.assert_allclose(grad.data, 18.0 * x.data)


def comm_size_plus_one():
    return dist.get_world_size() + 1


def test_a_malformed_message_is_refused_naming_both_ranks(comm):
    # A message mpigrad cannot read (another format version) on mpigrad's own communicator: the
    # receive raises, naming the ranks and the problem, and the next message is received.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    words = np.frombuffer(messages.pack(np.zeros(2))[0], np.int64).copy()
    words[0] = 99  # the format version
    comms = dist_comm.get()
    sending = transport.post_words(comms, comms.data_free, words.tobytes(), dest, 3)
    with pytest.raises(ValueError) as info:
        dist.recv(source, tag=3)
    assert (
        f"recv: rank {rank} received a malformed message from rank {source}: message format "
        "version 99 from the peer"
    ) in str(info.value), str(info.value)
    sending.wait()
    request = dist.isend(np.full(3, float(rank)), dest, tag=3)
    _check(dist.recv(source, tag=3), np.full(3, float(source)))
    request.wait()


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["recv", "irecv-wait", "sendrecv"])
def test_a_receive_that_times_out_is_cancelled(comm, call):
    # Nothing is sent with tag 7 until every rank's receive has timed out; the tensor sent then
    # must reach the next receive, not the cancelled one.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    start = time.monotonic()
    with pytest.raises(dist.DistTimeoutError) as info:
        if call == "recv":
            dist.recv(source, tag=7, timeout=0.3)
        elif call == "irecv-wait":
            dist.irecv(source, tag=7).wait(timeout=0.3)
        else:
            dist.sendrecv(np.zeros(1), dest, source, sendtag=8, recvtag=7, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5, elapsed
    assert (
        f"rank {rank}: {call.split('-')[0]} timed out after 0.3 s still waiting for: a tensor "
        f"from rank {source} with tag 7 (outside any context)"
    ) in str(info.value)
    comm.Barrier()
    if call == "sendrecv":
        _check(dist.recv(source, tag=8), np.zeros(1))  # the send went out as usual
    request = dist.isend(np.full(3, float(rank)), dest, tag=7)
    _check(dist.recv(source, tag=7), np.full(3, float(source)))
    request.wait()


@pytest.mark.min_ranks(2)
def test_a_send_that_waits_too_long_raises_and_can_be_waited_again(comm):
    # A 4 MiB send to rank 1 cannot complete before rank 1 receives it (rendezvous).
    rank = comm.rank
    n = 2**19
    if rank == 0:
        request = dist.isend(np.ones(n), 1, tag=5)
        with pytest.raises(dist.DistTimeoutError) as info:
            request.wait(timeout=0.3)
        assert "rank 1 to receive the tensor sent to it with tag 5" in str(info.value)
        comm.Barrier()
        request.wait(timeout=30)
    elif rank == 1:
        comm.Barrier()
        _check(dist.recv(0, tag=5), np.ones(n))
    else:
        comm.Barrier()


@pytest.mark.parametrize("timeout", [0, -1, "soon", float("nan")])
def test_a_timeout_that_is_not_a_positive_number_raises(comm, timeout):
    with pytest.raises(
        ValueError,
        match=r"recv: timeout must be a positive number of seconds, "
        rf"got {re.escape(repr(timeout))}",
    ):
        dist.recv(comm.rank, timeout=timeout)
