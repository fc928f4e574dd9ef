"""Data-parallel training of a small MLP: mpigrad on every rank, gradients averaged with MPI.

Run: ``mpiexec -n 2 python examples/demo.py`` (any number of ranks, 1 included).

Each rank draws its own shard of a synthetic 3-class problem (three noisy spiral arms), computes
the loss and its gradients with mpigrad's rank-local engine, and the ranks average the gradients
with one ``Allreduce`` per step before a momentum-SGD update, so every rank holds the same model.
Rank 0 prints the loss as it falls and the final accuracy on a held-out set.
"""

import numpy as np
from mpi4py import MPI

import mpigrad as mg

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def spirals(n, rng):
    """``n`` points on three noisy spiral arms, and their arm (class) index."""
    labels = rng.integers(0, 3, n)
    radius = rng.uniform(0.1, 1.0, n)
    angle = 6.0 * radius + labels * 2.0 * np.pi / 3 + rng.normal(0, 0.3, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points, labels


rng = np.random.default_rng(1234 + rank)
x_train, y_train = spirals(512, rng)
x_test, y_test = spirals(1024, np.random.default_rng(99))

init = np.random.default_rng(0)  # the same initial model on every rank
params = [
    mg.tensor(init.normal(0, 0.5, (2, 64)), requires_grad=True), mg.zeros(64, requires_grad=True),
    mg.tensor(init.normal(0, 0.2, (64, 64)), requires_grad=True), mg.zeros(64, requires_grad=True),
    mg.tensor(init.normal(0, 0.2, (64, 3)), requires_grad=True), mg.zeros(3, requires_grad=True),
]
velocity = [np.zeros_like(p.data) for p in params]


def model(x):
    w1, b1, w2, b2, w3, b3 = params
    h = mg.tanh(x @ w1 + b1)
    h = mg.relu(h @ w2 + b2)
    return h @ w3 + b3


for step in range(301):
    batch = rng.choice(len(x_train), 128, replace=False)
    loss = mg.cross_entropy(model(mg.tensor(x_train[batch])), y_train[batch])
    grads = mg.autograd.grad(loss, params)
    for p, g, v in zip(params, grads, velocity):
        total = np.ascontiguousarray(g.data)
        comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        v *= 0.9
        v += total / size
        p.data -= 0.1 * v
    mean_loss = comm.allreduce(loss.item(), op=MPI.SUM) / size
    if rank == 0 and step % 50 == 0:
        print(f"step {step:3d}  loss {mean_loss:.4f}", flush=True)

with mg.no_grad():
    accuracy = float(np.mean(np.argmax(model(mg.tensor(x_test)).data, axis=1) == y_test))
if rank == 0:
    print(f"{size} ranks, final test accuracy {accuracy:.3f}")
    if accuracy < 0.9:
        raise SystemExit(f"demo: accuracy {accuracy:.3f} is below 0.9: training did not work")
