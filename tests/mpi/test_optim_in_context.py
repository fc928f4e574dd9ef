"""``Optimizer.step(context_id)`` takes the gradients of a distributed autograd context.

Each rank's parameters feed a ring: its W reaches the next rank's root through a send, its b
its own root, and a third parameter no root at all.  Stepping with the context id must give the
parameters that ``step()`` gives a twin optimizer whose parameters hold the context's gradients
in ``.grad``, ignore ``.grad`` itself, and leave the parameter without a gradient alone.
"""

import numpy as np
import pytest

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
from mpigrad.optim import SGD, Adam, AdamW


@pytest.fixture(autouse=True)
def initialized(comm):
    dist.init(comm)
    yield comm
    dist.destroy()


@pytest.mark.parametrize(
    "cls, options",
    [
        (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
        (Adam, dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
        (AdamW, dict(lr=0.1)),
    ],
    ids=["SGD", "Adam", "AdamW"],
)
def test_step_with_a_context_id_takes_the_context_s_gradients(comm, cls, options):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size
    rng = np.random.default_rng(7 + rank)
    x = mg.tensor(rng.normal(size=(5, 3)))
    params = [mg.tensor(rng.normal(size=s), requires_grad=True) for s in [(3, 4), (4,), (2,)]]
    w, b, unused = params
    initial = [p.data.copy() for p in params]
    twins = [mg.tensor(p.data, requires_grad=True) for p in params]
    optimizer, reference = cls(params, **options), cls(twins, **options)
    for _ in range(3):
        for p in params:
            p.grad = mg.full(p.shape, 1e3)  # what step(context_id) must not read
        with dist_autograd.context() as context_id:
            request = dist.isend(mg.tanh(x @ w), dest)
            received = dist.recv(source)
            request.wait()
            dist_autograd.backward(context_id, [((received + b) ** 2).sum()])
            optimizer.step(context_id)
            grads = dist_autograd.get_gradients(context_id)
        assert unused not in grads and w in grads and b in grads
        for p, twin in zip(params, twins):
            twin.grad = grads.get(p)
        reference.step()
        for p, twin in zip(params, twins):
            np.testing.assert_array_equal(p.data, twin.data)
    np.testing.assert_array_equal(unused.data, initial[2])
    assert unused not in optimizer.state
    assert not np.allclose(w.data, initial[0]) and not np.allclose(b.data, initial[1])
