"""Distributed autograd's failures at any world size: they raise on every rank, never hang.

Each failing pass is followed by a normal one in a new context, whose gradients must be right:
state left over from a failed pass must not leak into the next. Errors are checked by their
words (the failing rank, the context and message ids, the original message), not their class.
"""

import contextlib
import re
import time

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

TOL = 1e-12
# Ranks that wait for a failed peer must raise within this many seconds (4 ranks on 2 cores).
PROMPT = 10.0
FAILURE = "backward failed on purpose"


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


def _each_rank(n=4):
    """Ranks 0 to n - 1 as parameters, each skipped where the world is too small."""
    return [pytest.param(k, marks=pytest.mark.min_ranks(k + 1), id=f"rank{k}") for k in range(n)]


def _leaf(array):
    return mg.tensor(array, dtype=np.float64, requires_grad=True)


def _assert_a_normal_pass_works(comm):
    """A new context after whatever went before: a ring exchange with the right gradients."""
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.array([0.25, -0.5]) + rank)
    with dist_autograd.context() as context_id:
        request = dist.isend(x * x, dest)
        y = dist.recv(source)
        request.wait()
        dist_autograd.backward(context_id, [(y * 3.0).sum()])
        grads = dist_autograd.get_gradients(context_id)
    # The next rank's root is sum(3 x^2): gradient 6x.
    assert list(map(id, grads)) == [id(x)]
    np.testing.assert_allclose(grads[x].data, 6.0 * x.data, rtol=TOL, atol=TOL)


class FailingBackward(mg.Function):
    """out = x; backward raises"""

    @staticmethod
    def forward(ctx, x):
        return x.data.copy()

    @staticmethod
    def backward(ctx, grad):
        raise ValueError(FAILURE)


def _failing_hook(grad):
    raise ValueError(FAILURE)


# --- a failure in one rank's part of backward ----------------------------------------------------


@pytest.mark.parametrize("how", ["function", "hook"])
@pytest.mark.parametrize("k", _each_rank())
def test_a_failure_on_one_rank_raises_on_every_rank(comm, k, how):
    # A pipeline 0 -> 1 -> ... -> size - 1 with a root on every rank; rank k's part of backward
    # raises, so ranks below k never get their gradient and ranks above k have finished theirs.
    rank, size = comm.rank, comm.size
    x = _leaf(np.linspace(-1, 1, 4) + rank)
    with dist_autograd.context() as context_id:
        h = x * 1.0 if rank == 0 else dist.recv(rank - 1) + x
        h = mg.sin(h)
        if rank == k:
            if how == "function":
                h = FailingBackward.apply(h)
            else:
                h = h * 1.0
                h.register_hook(_failing_hook)
        if rank < size - 1:
            dist.send(h, rank + 1)
        comm.Barrier()
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, [(h * h).sum()])
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert FAILURE in message, message
    assert re.search(rf"\brank {k}\b", message), message
    assert elapsed < PROMPT, f"backward raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


# --- ranks that disagree -------------------------------------------------------------------------


def _enter_as_many_contexts_as_the_others(comm, entered):
    """After a test that made ranks enter different contexts: empty contexts until every rank
    has entered as many as the others, so that the ranks' contexts match again."""
    for _ in range(max(comm.allgather(entered)) - entered):
        with dist_autograd.context():
            pass


@pytest.mark.min_ranks(2)
@pytest.mark.parametrize("sender", ["outside-a-context", "in-another-context"])
def test_receiving_a_tensor_of_another_context_names_both_ids(comm, sender):
    # Rank 1 sends a small tensor (it leaves at once, so rank 1 never waits) and tells rank 0
    # its context id; rank 0 receives the tensor in a context of its own. Rank 1's context, when
    # it has one, is its second alone, so the ids differ.
    rank = comm.rank
    entered = 0
    if rank == 1:
        x = _leaf(np.ones(3))
        if sender == "outside-a-context":
            dist.send(x * 2.0, 0)
            theirs = -1
        else:
            with dist_autograd.context():
                pass
            with dist_autograd.context() as theirs:
                dist.send(x * 2.0, 0)
            entered = 2
        comm.send(theirs, dest=0)
    elif rank == 0:
        with dist_autograd.context() as context_id:
            with pytest.raises(Exception) as info:
                dist.recv(1)
        entered = 1
        theirs = comm.recv(source=1)
        assert theirs != context_id
        message = str(info.value)
        assert re.search(rf"(?<![\d-]){context_id}\b", message), message
        if sender == "outside-a-context":
            assert re.search(r"-1\b|outside|no context|not in a context", message), message
        else:
            assert re.search(rf"(?<![\d-]){theirs}\b", message), message
    _enter_as_many_contexts_as_the_others(comm, entered)
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_receiving_outside_a_context_a_tensor_sent_in_one_raises(comm):
    rank = comm.rank
    entered = 0
    if rank == 1:
        with dist_autograd.context() as theirs:
            dist.send(_leaf(np.ones(3)) * 2.0, 0)
        entered = 1
        comm.send(theirs, dest=0)
    elif rank == 0:
        with pytest.raises(Exception) as info:
            dist.recv(1)
        theirs = comm.recv(source=1)
        message = str(info.value)
        assert re.search(rf"(?<![\d-]){theirs}\b", message), message
    _enter_as_many_contexts_as_the_others(comm, entered)
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_backward_in_different_contexts_raises_on_every_rank(comm):
    # Rank 1 enters one context more than the others first, so its context id differs; there
    # is no message to tell, only backward itself.
    rank = comm.rank
    entered = 0
    if rank == 1:
        with dist_autograd.context():
            entered += 1
    x = _leaf(np.ones(2) + rank)
    with dist_autograd.context() as context_id:
        entered += 1
        ids = comm.allgather(context_id)
        assert ids[1] != ids[0]
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, [(x * x).sum()])
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert re.search(rf"(?<![\d-]){ids[0]}\b", message), message
    assert re.search(rf"(?<![\d-]){ids[1]}\b", message), message
    assert elapsed < PROMPT, f"backward raised after {elapsed:.1f} s"
    _enter_as_many_contexts_as_the_others(comm, entered)
    _assert_a_normal_pass_works(comm)


# --- context ids ---------------------------------------------------------------------------------


def test_an_unknown_context_id_raises(comm):
    unknown = 987654321
    with pytest.raises(Exception, match=rf"\b{unknown}\b"):
        dist_autograd.get_gradients(unknown)
    with pytest.raises(Exception, match=rf"\b{unknown}\b"):
        dist_autograd.backward(unknown, [])
    with dist_autograd.context() as context_id:
        with pytest.raises(Exception, match=rf"\b{unknown}\b"):
            dist_autograd.get_gradients(unknown)
        assert dist_autograd.get_gradients(context_id) == {}
    _assert_a_normal_pass_works(comm)


def test_backward_in_an_exited_context_raises(comm):
    # get_gradients of an exited context: see test_leaving_a_context_frees_it.
    with dist_autograd.context() as context_id:
        pass
    x = _leaf(np.ones(2))
    with pytest.raises(Exception, match=rf"\b{context_id}\b"):
        dist_autograd.backward(context_id, [(x * x).sum()])
    _assert_a_normal_pass_works(comm)


# --- bad roots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["not-a-scalar", "no-grad", "a-number"])
@pytest.mark.parametrize("k", _each_rank())
def test_bad_roots_on_one_rank_raise_on_every_rank(comm, k, bad):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        request = dist.isend(mg.sin(x), dest)
        y = dist.recv(source)
        request.wait()
        root = (y * x).sum()
        if rank == k:
            root = {"not-a-scalar": y * x, "no-grad": mg.tensor(1.0), "a-number": 1.0}[bad]
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, [root])
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert re.search(rf"\brank {k}\b", message), message
    if rank == k:
        words = {"not-a-scalar": "scalar", "no-grad": "require", "a-number": "Tensor"}[bad]
        assert words in message, message
    assert elapsed < PROMPT, f"backward raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


# --- timeout -------------------------------------------------------------------------------------


@pytest.mark.min_ranks(2)
def test_timeout_lists_what_a_stalled_rank_waits_for(comm):
    # Rank 0 sends to rank 1, which calls backward only after rank 0's timeout has passed:
    # rank 0 must raise, listing the message it waits for and the peer. Rank 1 and the others
    # may then fail or not; each has a timeout of its own, so nothing hangs. After it, mpigrad
    # is destroyed and initialized again.
    rank = comm.rank
    timeout, late = 1.0, 4.0
    x = _leaf(np.ones(3))
    with dist_autograd.context() as context_id:
        if rank == 0:
            dist.send(x * 2.0, 1)
            roots = []
        elif rank == 1:
            y = dist.recv(0)
            roots = [(y * y).sum()]
        else:
            roots = []
        comm.Barrier()
        if rank == 0:
            start = time.monotonic()
            with pytest.raises(Exception) as info:
                dist_autograd.backward(context_id, roots, timeout=timeout)
            elapsed = time.monotonic() - start
        elif rank == 1:
            time.sleep(late)
            with contextlib.suppress(Exception):
                dist_autograd.backward(context_id, roots, timeout=timeout)
        else:
            with contextlib.suppress(Exception):
                dist_autograd.backward(context_id, roots, timeout=late + timeout)
    comm.Barrier()
    dist.destroy()
    dist.init(comm)
    _assert_a_normal_pass_works(comm)
    if rank == 0:  # checked last, so that a failure here leaves no rank blocked
        message = str(info.value)
        assert timeout * 0.9 <= elapsed < late - 0.5, f"raised after {elapsed:.2f} s: {message}"
        assert re.search(r"\brank 1\b", message), message
        assert re.search(r"message ids?\b", message), message
        assert re.search(rf"\b{context_id}\b", message), message
