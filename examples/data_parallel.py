"""Data-parallel training of a digit classifier: each rank trains on its own shard of the data.

Run: ``mpiexec -n 4 python examples/data_parallel.py`` (1 to 46 ranks: each step takes 32 of the
1500 training images on each rank). It needs scikit-learn for the data set (``python -m pip
install ".[examples]"`` from the source tree): the 1797 8x8 images of handwritten digits that
``sklearn.datasets.load_digits`` ships, so nothing is downloaded.

Every rank holds out the same 297 images for testing and keeps its own share of the other 1500.
The model, an MLP 64 -> 64 -> 10 with ReLU, is wrapped in ``dist.DistributedDataParallel``, which
copies rank 0's initial parameters to every rank; each backward then leaves in ``.grad`` the
gradient averaged over the ranks, so every rank takes the same SGD step and the ranks keep
bitwise-identical models. Rank 0 prints the training loss after each epoch and the held-out
accuracy, and the program exits non-zero if that accuracy is below 0.9 or if the ranks' final
parameters differ.
"""

import hashlib

import numpy as np
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist

try:
    from sklearn.datasets import load_digits
except ImportError:
    raise SystemExit(
        "data_parallel.py needs scikit-learn: pip install scikit-learn, or '.[examples]' from "
        "the source tree"
    ) from None

EPOCHS, BATCH, TEST = 20, 32, 297  # BATCH images per rank and step
LEARNING_RATE, MOMENTUM = 0.05, 0.9
THRESHOLD = 0.9

comm = MPI.COMM_WORLD
dist.init(comm)
rank, size = dist.get_rank(), dist.get_world_size()

# The same shuffle on every rank; rank r keeps every size-th training image from the r-th on.
images, labels = load_digits(return_X_y=True)
images = (images / 16).astype(np.float32)  # pixels 0..16 -> 0..1
order = np.random.default_rng(0).permutation(len(labels))
test, train = order[:TEST], order[TEST:]
shard = train[rank::size]

# Each rank draws its own initial weights; DistributedDataParallel replaces them with rank 0's.
init = np.random.default_rng(rank)
model = dist.DistributedDataParallel(
    mg.nn.Sequential(
        mg.nn.Linear(64, 64, generator=init), mg.nn.ReLU(), mg.nn.Linear(64, 10, generator=init)
    )
)
optimizer = mg.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

# Every rank must take the same number of steps (each backward averages with all the others).
# The gradient averaged over the ranks is that of the mean of the ranks' mean losses; with
# batches of the same size on every rank, that is the mean loss over the step's BATCH * size
# images. (Shards differ in size by at most one; the images a shard has left over in an epoch
# wait for a later shuffle.)
steps = len(train) // (BATCH * size)
rng = np.random.default_rng(1000 + rank)  # each rank shuffles its shard its own way
start = MPI.Wtime()
for epoch in range(EPOCHS):
    total = 0.0
    for batch in rng.permutation(shard)[: steps * BATCH].reshape(steps, BATCH):
        optimizer.zero_grad()
        loss = mg.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()  # the gradients are averaged over the ranks while backward runs
        optimizer.step()
        total += loss.item()
    total = comm.allreduce(total) / (size * steps)  # the mean loss over every rank's images
    if rank == 0:
        print(f"epoch {epoch:2d}  loss {total:.4f}", flush=True)
seconds = MPI.Wtime() - start

with mg.no_grad():
    predictions = np.argmax(model(images[test]).data, axis=1)
accuracy = float(np.mean(predictions == labels[test]))

# The ranks' parameters must be bitwise the same: compare a digest of their bytes.
digest = hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest()
digests = comm.allgather(digest)
if rank == 0:
    print(
        f"{size} ranks, {EPOCHS} epochs of {steps} steps in {seconds:.1f} s, "
        f"test accuracy {accuracy:.3f}"
    )
    if len(set(digests)) != 1:
        differ = [r for r in range(size) if digests[r] != digests[0]]
        raise SystemExit(f"data_parallel: ranks {differ} end with parameters unlike rank 0's")
    print("parameters bitwise identical on every rank")
    if accuracy < THRESHOLD:
        raise SystemExit(
            f"data_parallel: accuracy {accuracy:.3f} is below {THRESHOLD}: training did not work"
        )
