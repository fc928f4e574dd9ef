"""Distributed autograd's failures at any world size: they raise on every rank, never hang.

Each failing pass is followed by a normal one in a new context, whose gradients must be right:
state left over from a failed pass must not leak into the next. Errors are checked by their
words (the failing rank, the context and message ids, the original message), not their class.
"""

import gc
import re
import time
import weakref

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.autograd import forward_ad as fwAD
from mpigrad.distributed import context as contexts

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


def _pass_around(tensor, dest, source):
    """Send ``tensor`` to ``dest`` and return the tensor ``source`` sent (a ring at any size)."""
    request = dist.isend(tensor, dest)
    received = dist.recv(source)
    request.wait()
    return received


def _assert_a_normal_pass_works(comm):
    """A new context after whatever went before: a ring exchange with the right gradients."""
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.array([0.25, -0.5]) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * x, dest, source)
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


def _step_again(comm):
    """After a test that put the ranks' contexts out of step: destroy and init, which starts
    every rank's context ids at the same value again."""
    dist.destroy()
    dist.init(comm)


@pytest.mark.min_ranks(2)
def test_receiving_in_a_context_a_tensor_sent_outside_names_both(comm):
    # Rank 1 sends a small tensor before the context (it leaves at once); rank 0 receives it in
    # the context. It can never match there: rank 0 finds it and raises, naming both sides.
    rank = comm.rank
    if rank == 1:
        dist.send(np.ones(3), 0)
    with dist_autograd.context() as context_id:
        if rank == 0:
            start = time.monotonic()
            with pytest.raises(Exception) as info:
                dist.recv(1)
            elapsed = time.monotonic() - start
    if rank == 0:
        message = str(info.value)
        assert re.search(
            rf"received a tensor from rank 1 \(tag 0\) sent outside any context, "
            rf"but this rank is in context {context_id}\b",
            message,
        ), message
        assert elapsed < PROMPT, f"recv raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_a_rank_in_another_context_than_backward_fails_every_rank(comm):
    # Rank 1 enters a context the others do not, so its ids run one ahead: it leaves its extra
    # context (id c) while the others run backward in theirs (id c too). Neither can finish;
    # both must raise promptly, each naming what the other does.
    rank = comm.rank
    x = _leaf(np.ones(2) + rank)
    start = time.monotonic()
    if rank == 1:
        with pytest.raises(Exception) as info:
            with dist_autograd.context() as context_id:
                pass
    else:
        with dist_autograd.context() as context_id:
            with pytest.raises(Exception) as info:
                dist_autograd.backward(context_id, [(x * x).sum()])
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert re.search(
        rf"rank 1 left context {context_id} after 0 backward pass\(es\), without "
        "calling this one",
        message,
    ), message
    if rank != 1:
        assert isinstance(info.value, dist_autograd.DistBackwardError), repr(info.value)
    assert elapsed < PROMPT, f"raised after {elapsed:.1f} s"
    _step_again(comm)
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_a_rank_waiting_in_another_context_is_found_by_asking(comm):
    # Rank 1 runs one context ahead: it leaves a context of its own (id c) while rank 0 waits in
    # a recv from it in the context every other rank entered (id c too). No message tells
    # either of the other: after about a second of waiting one asks the other what it waits in,
    # raises and tells every rank.
    rank = comm.rank
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        if rank == 1:
            with dist_autograd.context():
                pass  # its leaving agreement waits for rank 0, who never leaves this context
        with dist_autograd.context():
            if rank == 0:
                dist.recv(1)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "so it will never come" in message, message
    assert re.search(
        r"rank 0 waits in recv for this rank, which is in leaving the context|"
        r"rank 1 is in leaving the context \(context \d+\) and sends nothing",
        message,
    ), message
    assert elapsed < PROMPT, f"raised after {elapsed:.1f} s"
    _step_again(comm)
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


BAD_ROOTS = {  # what rank k passes as its roots, and the words of its error
    "not-a-scalar": (lambda root, y, x: [y * x], "roots[0] has shape (3,); roots must be scalars"),
    "no-grad": (lambda root, y, x: [mg.tensor(1.0)], "roots[0] does not require grad"),
    "a-number": (lambda root, y, x: [1.0], "roots[0] is a float, not a Tensor"),
    "a-generator": (
        lambda root, y, x: (r for r in [root]),
        "roots must be a Tensor or a list or tuple of Tensors, got generator",
    ),
    "a-set": (
        lambda root, y, x: {root},
        "roots must be a Tensor or a list or tuple of Tensors, got set",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_ROOTS))
@pytest.mark.parametrize("k", _each_rank())
def test_bad_roots_on_one_rank_raise_on_every_rank(comm, k, bad):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(mg.sin(x), dest, source)
        comm.Barrier()  # the forward is done everywhere: a failure can only stop backward
        roots = [(y * x).sum()]
        make, words = BAD_ROOTS[bad]
        if rank == k:
            roots = make(roots[0], y, x)
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, roots)
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert re.search(rf"\brank {k}\b", message), message
    assert f"rank {k}: {words}" in message, message
    assert elapsed < PROMPT, f"backward raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


@pytest.mark.parametrize("how", ["a-tensor", "a-tuple", "an-empty-list"])
def test_roots_may_be_one_tensor_or_any_sequence(comm, how):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        loss = (y * y).sum()
        roots = {"a-tensor": loss, "a-tuple": (loss,), "an-empty-list": []}[how]
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    if how == "an-empty-list":
        assert grads == {}
    else:  # the next rank's root is sum((2x)^2): gradient 8x
        np.testing.assert_allclose(grads[x].data, 8.0 * x.data, rtol=TOL)


# --- timeout -------------------------------------------------------------------------------------


@pytest.mark.min_ranks(3)
def test_a_timeout_on_one_rank_ends_every_rank(comm):
    # Rank 0 sends to rank 1 and calls backward with a timeout; rank 1 enters backward only
    # LATE seconds later; the others call it at once. Ranks 1 and up set no timeout of their own.
    # Rank 0 raises at its timeout, naming the message it waits for and the rank that has not
    # entered; the others raise within a second of that, naming rank 0 and what it waited for;
    # rank 1 raises as soon as it enters. Then a new context works, with no destroy and init.
    rank = comm.rank
    timeout, late = 1.5, 3.5
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
        start = time.monotonic()
        if rank == 1:
            time.sleep(late)
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, roots, timeout=timeout if rank == 0 else None)
        elapsed = time.monotonic() - start
    message = str(info.value)
    if rank == 0:
        assert isinstance(info.value, dist_autograd.BackwardTimeoutError), repr(info.value)
        assert timeout * 0.9 <= elapsed < timeout + 2, f"raised after {elapsed:.2f} s: {message}"
    else:
        assert isinstance(info.value, dist_autograd.DistBackwardError), repr(info.value)
        if rank == 1:
            assert late <= elapsed < late + 1, f"raised after {elapsed:.2f} s: {message}"
        else:
            assert timeout <= elapsed < timeout + 3, f"raised after {elapsed:.2f} s: {message}"
        assert re.search(r"failed on rank\(s\) \[0\]", message), message
    # Every rank's message carries rank 0's: what it waited for, and who had not come.
    assert re.search(
        rf"rank 0: dist_autograd.backward in context {context_id} timed out after "
        rf"{timeout:g} s still waiting for: message id 0 from rank 1;",
        message,
    ), message
    assert re.search(
        r"ranks not waiting in mpigrad \(they have not entered this backward, or "
        r"are computing their part of it\): \[1\]",
        message,
    ), message
    _assert_a_normal_pass_works(comm)


def test_a_rank_that_has_received_a_failure_does_not_wait_out_its_timeout(comm):
    # Rank 0's part of backward fails at once; every other rank waits with a long timeout of
    # its own, and must raise promptly with rank 0's error, not wait out the timeout.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 1.0, dest, source)
        comm.Barrier()  # the forward is done everywhere: a failure can only stop backward
        h = FailingBackward.apply(y) if rank == 0 else y
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            dist_autograd.backward(context_id, [(h * h).sum()], timeout=60)
        elapsed = time.monotonic() - start
    assert FAILURE in str(info.value), str(info.value)
    assert elapsed < PROMPT, f"raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


# --- leaving a context ---------------------------------------------------------------------------


@pytest.mark.min_ranks(2)
def test_a_tensor_never_received_is_reported_when_its_context_is_left(comm):
    # Rank 1 sends rank 0 a tensor without gradient that rank 0 never receives: leaving the
    # context fails on every rank, and rank 0 names the tensor. The next context is not blamed.
    rank = comm.rank
    with pytest.raises(dist.DistributedError) as info:
        with dist_autograd.context() as context_id:
            if rank == 1:
                dist.isend(np.arange(3.0), 0, tag=7).wait()
    message = str(info.value)
    assert (
        f"rank {rank}: leaving context {context_id}: tensors sent in it were never received "
        "(rank 0 received 0 of the 1 sent to it)"
    ) in message, message
    if rank == 0:
        assert (
            "rank 1 sent rank 0 a tensor of shape (3,) and dtype float64 with tag 7, never received"
        ) in message, message
    _assert_a_normal_pass_works(comm)


def test_a_receive_never_waited_for_is_reported_and_cancelled_when_its_context_is_left(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    with pytest.raises(dist.DistributedError) as info:
        with dist_autograd.context() as context_id:
            request = dist.irecv(source, tag=4)  # nothing is sent with tag 4 in the context
    message = str(info.value)
    assert (
        f"leaving context {context_id}: {size} receive(s) posted in it were not waited for "
        "in it, and were cancelled"
    ) in message, message
    assert f"rank {rank}: a receive from rank {source} with tag 4" in message, message
    with pytest.raises(RuntimeError, match="was cancelled: its context was left"):
        request.wait()
    # The cancelled receive takes nothing: this tensor goes to the next receive.
    sent = dist.isend(np.full(2, float(rank)), dest, tag=4)
    np.testing.assert_array_equal(dist.recv(source, tag=4).data, np.full(2, float(source)))
    sent.wait()


def test_a_receive_whose_tensor_came_is_completed_when_its_context_is_left(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    with dist_autograd.context():
        request = dist.irecv(source, tag=4)
        dist.isend(np.full(2, float(rank)), dest, tag=4).wait()
        comm.Barrier()
        time.sleep(0.05)  # the header has arrived; nobody waits for it in the context
    np.testing.assert_array_equal(request.wait().data, np.full(2, float(source)))


@pytest.mark.min_ranks(2)
def test_a_rank_that_leaves_by_an_exception_fails_the_others(comm):
    # Rank 1 raises in the forward, before it sends; rank 0 waits for its tensor; the others
    # leave. Every rank raises promptly, naming rank 1 and its exception.
    rank = comm.rank
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        with dist_autograd.context():
            if rank == 1:
                raise ValueError("the forward failed on purpose")
            if rank == 0:
                dist.recv(1)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "the forward failed on purpose" in message, message
    if rank != 1:
        assert re.search(
            r"failed on rank\(s\) \[1\]:\nrank 1: left context \d+ by an exception: "
            "ValueError",
            message,
        ), message
    assert elapsed < PROMPT, f"raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_a_rank_that_skips_backward_fails_the_others(comm):
    # Rank 0 catches an error in its forward and skips backward; the others call it. Every rank
    # raises promptly: rank 0 is seen leaving the context without the pass (by its leaving
    # agreement's first message, or by asking).
    rank = comm.rank
    x = _leaf(np.ones(2) + rank)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        with dist_autograd.context() as context_id:
            if rank != 0:
                dist_autograd.backward(context_id, [(x * x).sum()])
    elapsed = time.monotonic() - start
    message = str(info.value)
    # Whichever rank sees it first tells the others: by rank 0's leaving agreement, or by asking
    # what the others do (rank 0 may already be on in the next context when asked).
    assert re.search(
        rf"rank 0 (left|is leaving) context {context_id} after 0 backward "
        r"pass\(es\), without|rank \d+ runs backward pass 1 of context "
        rf"{context_id}, which this rank is leaving after 0|rank 0 waits in "
        rf"\S+ in context {context_id + 1}",
        message,
    ), message
    assert elapsed < PROMPT, f"raised after {elapsed:.1f} s"
    _assert_a_normal_pass_works(comm)


# --- a graph that crosses ranks, outside its pass ------------------------------------------------


@pytest.mark.parametrize("when", ["in-the-context", "after-it", "in-the-next-context"])
def test_a_backward_through_a_received_tensor_outside_its_pass_says_what_to_do(comm, when):
    # The pass is refused before it runs any node, so the graph is still whole: the distributed
    # backward the message asks for then works.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0))
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        loss = (y * y).sum()
        if when == "in-the-context":
            with pytest.raises(RuntimeError) as info:
                loss.backward()
            dist_autograd.backward(context_id, [loss])
            (grad,) = dist_autograd.get_gradients(context_id).values()
            np.testing.assert_allclose(grad.data, 8.0 * x.data, rtol=TOL)
        else:
            dist_autograd.backward(context_id, [], retain_graph=True)
    if when == "after-it":
        with pytest.raises(RuntimeError) as info:
            loss.backward()
    elif when == "in-the-next-context":
        with dist_autograd.context() as next_id:
            with pytest.raises(dist_autograd.DistBackwardError) as info:
                dist_autograd.backward(next_id, [loss])
    message = str(info.value)
    assert (
        f"this graph crosses ranks: it holds a tensor received from rank {source} in "
        f"context {context_id}, "
    ) in message, message
    if when == "in-the-context":
        assert (
            f"and no dist_autograd.backward of it is running: call dist_autograd.backward("
            f"{context_id}, roots) on every rank instead of a local backward"
        ) in message
    else:
        assert (
            "which has been left: gradients cross ranks only in the dist_autograd.backward "
            "of the context the tensor was received in"
        ) in message, message


def _refusal(node):
    """The text of the error ``node.apply`` raises (the error, and its traceback, dropped)."""
    with pytest.raises(RuntimeError) as info:
        node.apply([np.ones(3)])
    return str(info.value)


def test_a_recv_function_holds_its_context_weakly_and_runs_only_in_its_pass(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0))
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        node = y.grad_fn
        inside = _refusal(node)
        context = weakref.ref(contexts.current())
    gc.collect()
    assert context() is None, "the received tensor's recv function kept its context alive"
    after = _refusal(node)
    start = (
        f"rank {rank}: this graph crosses ranks: it holds a tensor received from rank "
        f"{source} in context {context_id}, "
    )
    assert inside.startswith(start + "and no dist_autograd.backward of it is running"), inside
    assert after.startswith(start + "which has been left"), after


def test_a_gradient_that_carries_tangents_fails_backward_on_every_rank(comm):
    # Forward-over-reverse across ranks needs tangents to travel with gradients: not yet.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    x = _leaf(np.arange(3.0) + rank)
    with dist_autograd.context() as context_id:
        y = _pass_around(x * 2.0, dest, source)
        comm.Barrier()
        with fwAD.dual_level():
            w = fwAD.make_dual(mg.tensor(np.ones(3)), mg.ones(3))
            with pytest.raises(dist_autograd.DistBackwardError) as info:
                dist_autograd.backward(context_id, [(y * w).sum()])
    assert "carries forward-mode tangents" in str(info.value), str(info.value)
    _assert_a_normal_pass_works(comm)


class SlowBackward(mg.Function):
    """out = x; backward sleeps SLOW seconds"""

    @staticmethod
    def forward(ctx, x):
        return x.data.copy()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(SLOW)
        return grad


SLOW = 2.0


@pytest.mark.min_ranks(2)
def test_a_rank_whose_pass_completed_learns_when_leaving_that_another_gave_up(comm):
    # Rank 0 computes its part for SLOW seconds; the others, done at once, send their share of
    # the agreement and time out waiting for rank 0's. Rank 0's agreement then completes with
    # no wait at all, from shares already there, and its pass returns: it must raise when it
    # leaves the context, naming the others.
    rank = comm.rank
    x = _leaf(np.arange(3.0) + rank)
    if rank == 0:
        with pytest.raises(dist.DistributedError) as info:
            with dist_autograd.context() as context_id:
                dist_autograd.backward(context_id, [SlowBackward.apply(x).sum()])
        message = str(info.value)
        assert re.search(rf"context {context_id} failed on rank\(s\) \[[1-9]", message), message
        assert "timed out after 0.5 s" in message, message
    else:  # each times out, or learns first that another has
        with dist_autograd.context() as context_id:
            with pytest.raises(
                (dist_autograd.BackwardTimeoutError, dist_autograd.DistBackwardError)
            ):
                dist_autograd.backward(context_id, [(x * 1.0).sum()], timeout=0.5)
    _assert_a_normal_pass_works(comm)


@pytest.mark.min_ranks(2)
def test_a_failure_told_while_a_tensor_arrives_is_raised_when_leaving(comm):
    # Every rank but the last fails right after its sendrecv.  The last rank's receive may read
    # their failure notice and then find its tensor come after all: it returns the tensor, and
    # leaving the context must still raise the failure (it once returned as if reported).  Or a
    # notice comes before the tensor does (another rank's, or on another channel): the receive
    # raises it.
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    for _ in range(20):
        with pytest.raises((ValueError, dist.DistributedError)) as info:
            with dist_autograd.context():
                dist.sendrecv(mg.tensor(np.arange(3.0)), dest, source)
                if rank != size - 1:
                    raise ValueError("this rank's part failed")
        if rank == size - 1:
            assert info.type is dist.DistributedError, info.value
            text = str(info.value)
            places = ("leaving the context", "sendrecv")
            assert any(f"{place} on rank {rank}: context" in text for place in places), text
            assert "this rank's part failed" in text, text
        dist.destroy()
        dist.init(comm)
