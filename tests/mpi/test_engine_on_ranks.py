"""The rank-local engine inside an MPI job: every rank runs its own engine, with no MPI of its own.

Data parallelism is the simplest use: each rank differentiates the loss of its shard, the ranks sum
the gradients with Allreduce, and the result must equal the full-batch gradient.
"""

import os

import numpy as np
from mpi4py import MPI

import mpigrad as mg
from mpigrad import kernels


def _loss(w, b, x, y):
    return mg.cross_entropy(mg.tanh(mg.tensor(x) @ w + b), y) * np.float64(len(y))


def test_sharded_gradients_sum_to_the_full_batch_gradient(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(7)  # the same data and model on every rank
    x, y = rng.standard_normal((6 * size, 5)), rng.integers(0, 3, 6 * size)
    w0, b0 = rng.standard_normal((5, 3)), rng.standard_normal(3)

    w, b = mg.tensor(w0, requires_grad=True), mg.tensor(b0, requires_grad=True)
    shard = slice(6 * rank, 6 * (rank + 1))
    _loss(w, b, x[shard], y[shard]).backward()
    summed = [np.empty_like(p.grad.data) for p in (w, b)]
    for p, out in zip((w, b), summed):
        comm.Allreduce(np.ascontiguousarray(p.grad.data), out, op=MPI.SUM)

    wf, bf = mg.tensor(w0, requires_grad=True), mg.tensor(b0, requires_grad=True)
    full = mg.autograd.grad(_loss(wf, bf, x, y), [wf, bf])
    for got, want in zip(summed, full):
        np.testing.assert_allclose(got, want.data, rtol=1e-12, atol=1e-12)


def test_kernel_threads_count_every_rank_of_the_job(comm):
    # All ranks of these runs share one node; the launcher says how many there are, and the
    # kernels' thread policy must see them so parallel kernels never compete with spinning ranks.
    assert kernels.threads.local_ranks(os.environ) == comm.size
    cores = len(os.sched_getaffinity(0))
    assert kernels.get_num_threads() == max(1, cores // comm.size)
