"""Pipeline-parallel training of an MLP whose layers live on different ranks.

Run: ``mpiexec -n 4 python examples/pipeline_mlp.py`` (any number of ranks, 1 included).

The model (2 -> 32 -> 32 -> 32 -> 3, tanh) is cut into stages: rank r holds the layers
``LAYERS * r // size`` up to ``LAYERS * (r + 1) // size``, an ``mg.nn.Sequential`` of ``Linear``
and ``Tanh`` that ``mlp_stage`` (examples/_training.py) builds (with more ranks than layers, a
rank without layers only passes activations on). Each step splits a batch of a synthetic 3-class
problem (three noisy spiral arms, drawn from a seed every rank shares) into micro-batches. Stage r
receives each micro-batch's activations from stage r - 1, applies its layers and sends the result
on with ``dist.isend`` at once, so while stage r + 1 works on micro-batch m, stage r already works
on m + 1. The last stage's roots are the micro-batch losses divided by their number, so the
objective is the batch's mean loss; ``dist_autograd.backward`` follows the gradients back through
every stage, and each rank takes an ``mg.optim.Adam`` step on its own layers with
``step(context_id)``, which reads the gradients ``get_gradients(context_id)`` gives. The model,
the data and so the losses are the same at any world size.

The last stage prints the loss as it falls and the accuracy on a held-out set, and exits non-zero
if that accuracy is below 0.9.
"""

import numpy as np
from _training import mlp_stage, spirals  # examples/_training.py, next to this script
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

WIDTHS = [2, 32, 32, 32, 3]
LAYERS = len(WIDTHS) - 1
STEPS, BATCH, MICRO_BATCHES = 301, 128, 4
LEARNING_RATE = 0.01
THRESHOLD = 0.9

comm = MPI.COMM_WORLD
dist.init(comm)
rank, size = dist.get_rank(), dist.get_world_size()
first, last = rank == 0, rank == size - 1


# Every rank draws the same data, the same initial model and the same batches, and keeps only
# what its stage needs: the first stage the inputs, the last the labels, each its own layers.
x_train, y_train = spirals(2048, np.random.default_rng(1234))
x_test, y_test = spirals(1024, np.random.default_rng(99))
stage = mlp_stage(WIDTHS, LAYERS * rank // size, LAYERS * (rank + 1) // size)
params = list(stage.parameters())


def forward(inputs):
    """Run ``inputs`` (a list of micro-batches; used on the first stage) through the pipeline.

    Returns the logits of each micro-batch on the last stage (None elsewhere). Receives for every
    micro-batch are posted up front (tag m for micro-batch m), and each output is sent on with
    ``isend`` as soon as it is computed.
    """
    count = len(inputs)
    incoming = [] if first else [dist.irecv(rank - 1, tag=m) for m in range(count)]
    outgoing, outputs = [], []
    for m in range(count):
        h = mg.tensor(inputs[m]) if first else incoming[m].wait()
        h = stage(h)
        if last:
            outputs.append(h)
        else:
            outgoing.append(dist.isend(h, rank + 1, tag=m))
    for request in outgoing:
        request.wait()
    return outputs if last else None


# A rank without layers (more ranks than layers) has nothing to optimize.
optimizer = mg.optim.Adam(params, lr=LEARNING_RATE) if params else None
batches = np.random.default_rng(7)  # the same batches on every rank
start = MPI.Wtime()
for step in range(STEPS):
    batch = np.array_split(batches.choice(len(x_train), BATCH, replace=False), MICRO_BATCHES)
    with dist_autograd.context() as context_id:
        logits = forward([x_train[b] for b in batch])
        roots = []
        if last:
            roots = [mg.cross_entropy(z, y_train[b]) / MICRO_BATCHES for z, b in zip(logits, batch)]
        dist_autograd.backward(context_id, roots)
        if optimizer:
            optimizer.step(context_id)  # the gradients of get_gradients(context_id)
    if last and step % 50 == 0:
        print(f"step {step:3d}  loss {sum(r.item() for r in roots):.4f}", flush=True)
seconds = MPI.Wtime() - start

# Held-out accuracy: the test set through the pipeline in micro-batches, outside any context.
with mg.no_grad():
    logits = forward(np.array_split(x_test, MICRO_BATCHES))
accuracy = None
if last:
    predictions = np.argmax(np.concatenate([z.data for z in logits]), axis=1)
    accuracy = float(np.mean(predictions == y_test))
accuracy = comm.bcast(accuracy, root=size - 1)  # every rank knows how the run ended
if last:
    print(f"{size} stages, {STEPS} steps in {seconds:.1f} s, final test accuracy {accuracy:.3f}")
    if accuracy < THRESHOLD:
        raise SystemExit(
            f"pipeline_mlp: accuracy {accuracy:.3f} is below {THRESHOLD}: training did not work"
        )
