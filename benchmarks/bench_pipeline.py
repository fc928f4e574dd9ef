#!/usr/bin/env python3
"""Training steps per second of the pipeline-parallel MLP, against the same model on one rank.

The model, data and training step are ``examples/pipeline_mlp.py``'s (model and data from
``examples/_training.py``; the example is a script, so its step is rebuilt here): an MLP
2 -> H -> H -> H -> 3 with tanh (``mg.nn.Linear`` and ``Tanh``), cut into stages, rank r holding
layers ``4 r // size`` up to ``4 (r + 1) // size``; a step draws a batch of 128 points
of the three-spiral problem, splits it into 4 micro-batches that stage r receives with
``dist.irecv`` (posted up front) and sends on with ``dist.isend`` as soon as each is computed,
roots the micro-batch cross-entropies / 4 on the last stage, runs ``dist_autograd.backward`` and
takes an ``mg.optim.Adam`` step (lr 0.01) on each stage's layers with ``step(context_id)``.
H = 32 is the example; wider models (``--widths``, default 32, 256 and 1024; ``--quick``: 32 and
256) show where compute starts to outweigh the messages.

Baseline, timed in the same run and taking turns with the pipeline: the same model and training
step on rank 0 alone with mpigrad's rank-local engine (``backward`` of the batch loss, then
``step()``), while the other ranks wait idle in an ``Ibarrier``.  Before timing, the pipeline
and the one-rank model train 3 steps from the same weights on the same batches, and their losses
must agree to 1e-10, or the benchmark exits non-zero.

A timed repetition is a chunk of training steps (as many as take about 0.1 s on one rank, 2 to
50), timed as a whole from a barrier; the pipeline counts its slowest rank.  ``ratio`` is the
pipeline's time per step over the one-rank model's: below 1 the pipeline is faster.  The plot
shows steps per second against the width.

    mpiexec -n N python benchmarks/bench_pipeline.py [--quick] [--widths H ...] [--reps R]
        [--plot PATH | --no-plot]
"""

import os
import sys

import _common

_common.prepare()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import mpigrad as mg  # noqa: E402
import mpigrad.distributed as dist  # noqa: E402
import mpigrad.distributed.autograd as dist_autograd  # noqa: E402

# The example's data set and model (examples/_training.py), so both train the same way.
sys.path.insert(0, os.path.join(_common.ROOT, "examples"))
from _training import mlp_stage, spirals  # noqa: E402

BATCH, MICRO_BATCHES, LEARNING_RATE = 128, 4, 0.01  # as in the example
WIDTHS = (32, 256, 1024)
QUICK_WIDTHS = (32, 256)
CHECK_STEPS, CHECK_TOL = 3, 1e-10
CHUNK_SECONDS = 0.1

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
first, last = rank == 0, rank == size - 1
X_TRAIN, Y_TRAIN = spirals(2048, np.random.default_rng(1234))


class Model:
    """Layers ``begin`` to ``end`` (exclusive) of the MLP 2 -> H -> H -> H -> 3, their Adam (None
    without layers), and the batches: every instance of a width draws the same initial weights and
    the same batches."""

    def __init__(self, width, begin, end):
        self.stage = mlp_stage([2, width, width, width, 3], begin, end)
        params = list(self.stage.parameters())
        self.optimizer = mg.optim.Adam(params, lr=LEARNING_RATE) if params else None
        self.batches = np.random.default_rng(7)

    def next_batch(self):
        return np.array_split(
            self.batches.choice(len(X_TRAIN), BATCH, replace=False), MICRO_BATCHES
        )


class Pipeline(Model):
    """This rank's stage; ``step`` is one training step of the example, on every rank."""

    def __init__(self, width):
        count = 4
        super().__init__(width, count * rank // size, count * (rank + 1) // size)

    def forward(self, inputs):
        count = len(inputs)
        incoming = [] if first else [dist.irecv(rank - 1, tag=m) for m in range(count)]
        outgoing, outputs = [], []
        for m in range(count):
            h = mg.tensor(inputs[m]) if first else incoming[m].wait()
            h = self.stage(h)
            if last:
                outputs.append(h)
            else:
                outgoing.append(dist.isend(h, rank + 1, tag=m))
        for request in outgoing:
            request.wait()
        return outputs if last else None

    def step(self):
        """One training step; returns the batch loss on the last stage (None elsewhere)."""
        batch = self.next_batch()
        with dist_autograd.context() as context_id:
            logits = self.forward([X_TRAIN[b] for b in batch])
            roots = []
            if last:
                roots = [
                    mg.cross_entropy(z, Y_TRAIN[b]) / MICRO_BATCHES for z, b in zip(logits, batch)
                ]
            dist_autograd.backward(context_id, roots)
            if self.optimizer:
                self.optimizer.step(context_id)
        return sum(r.item() for r in roots) if last else None


class OneRank(Model):
    """The whole model on one process, trained with the rank-local engine (the baseline)."""

    def __init__(self, width):
        super().__init__(width, 0, 4)

    def step(self):
        batch = self.next_batch()
        losses = [
            mg.cross_entropy(self.stage(mg.tensor(X_TRAIN[b])), Y_TRAIN[b]) / MICRO_BATCHES
            for b in batch
        ]
        loss = losses[0]
        for other in losses[1:]:
            loss = loss + other
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


def check(width):
    """The pipeline's losses over CHECK_STEPS steps equal the one-rank model's."""
    pipeline = Pipeline(width)
    losses = [pipeline.step() for _ in range(CHECK_STEPS)]
    losses = comm.bcast(losses, root=size - 1)
    reference = None
    if rank == 0:
        one = OneRank(width)
        reference = [one.step() for _ in range(CHECK_STEPS)]
    _common.release_idle(comm, rank == 0, 0.005)
    reference = comm.bcast(reference, root=0)
    error = max(abs(a - b) / abs(b) for a, b in zip(losses, reference))
    if not error <= CHECK_TOL:
        raise SystemExit(
            f"bench_pipeline: width {width}: the pipeline's losses {losses} differ from the "
            f"one-rank model's {reference} (relative {error:.2e}, tolerance {CHECK_TOL:.0e})"
        )
    return error


def run_width(width, reps):
    """Rank 0: (slowest-rank samples of the pipeline and the one-rank model, steps per chunk,
    check error); None elsewhere."""
    error = check(width)
    pipeline = Pipeline(width)
    one = OneRank(width) if rank == 0 else None
    chunk = None
    if rank == 0:  # calibrate the chunk on the baseline (while the others wait idle)
        one.step()
        start = MPI.Wtime()
        one.step()
        chunk = int(min(50, max(2, CHUNK_SECONDS / (MPI.Wtime() - start))))
    _common.release_idle(comm, rank == 0, 0.005)
    chunk = comm.bcast(chunk, root=0)

    def run_pipeline():
        for _ in range(chunk):
            pipeline.step()

    def run_one():
        """Rank 0's seconds; 0.0 on the other ranks, which wait idle."""
        seconds = 0.0
        if rank == 0:
            start = MPI.Wtime()
            for _ in range(chunk):
                one.step()
            seconds = MPI.Wtime() - start
        _common.release_idle(comm, rank == 0, 0.005)
        return seconds

    subjects = {"pipeline": run_pipeline, "one rank": run_one}
    samples = _common.interleave(subjects, reps, warmup=1, clock=MPI.Wtime, comm=comm)
    slowest = _common.slowest_rank(samples, comm)
    return slowest and (slowest, chunk, error)


def main():
    p = _common.parser(__doc__, plot=True)
    p.add_argument("--widths", type=_common.positive, nargs="+", help="hidden widths H")
    args = p.parse_args()
    dist.init(comm)
    widths = args.widths or (QUICK_WIDTHS if args.quick else WIDTHS)
    reps = args.reps or (5 if args.quick else 9)
    if rank == 0:
        report = _common.Report(args, comm)
        table = _common.Table(
            "width:6 subject:9 median:9.3f q1:9.3f q3:9.3f steps/s:8.1f ratio:6.2f",
            note=f"{size} ranks; ms per training step (the pipeline's slowest rank); ratio: "
            "pipeline / one rank",
        )
    rates = {"pipeline": [], "one rank": []}
    for width in widths:
        found = run_width(width, reps)
        if rank != 0:
            continue
        slowest, chunk, error = found
        stats = {name: _common.summary(slowest[name]["time"], 1e3 / chunk) for name in rates}
        ratio = round(stats["pipeline"]["median"] / stats["one rank"]["median"], 3)
        for name, st in stats.items():
            rates[name].append(round(1e3 / st["median"], 2))
            compared = {"baseline": "one rank", "ratio": ratio} if name == "pipeline" else {}
            model = f"MLP 2-{width}-{width}-{width}-3 tanh, batch {BATCH} in {MICRO_BATCHES}"
            report.record(
                case=model,
                subject=name,
                width=width,
                reps=reps,
                steps_per_rep=chunk,
                unit="ms per step",
                **st,
                steps_per_s=rates[name][-1],
                **compared,
                check_error=error,
            )
            table.row(
                width,
                name,
                st["median"],
                st["q1"],
                st["q3"],
                rates[name][-1],
                compared.get("ratio"),
            )
    if rank == 0:
        lines = {name: (widths, r) for name, r in rates.items()}
        xlabel = "hidden width H (MLP 2-H-H-H-3, batch 128 in 4 micro-batches)"
        panel = _common.Panel(xlabel, "training steps per second (median)", lines)
        report.plot(f"mpigrad pipeline MLP, {size} ranks vs one rank", [panel])
        report.close()


if __name__ == "__main__":
    main()
