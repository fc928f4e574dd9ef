#!/usr/bin/env python3
"""Training steps per second of the pipeline-parallel MLP, against the same model on one rank.

The model, data and training step are ``examples/pipeline_mlp.py``'s (the example is a script,
so they are rebuilt here, unchanged): an MLP 2 -> H -> H -> H -> 3 with tanh, cut into stages,
rank r holding layers ``4 r // size`` up to ``4 (r + 1) // size``; a step draws a batch of 128
points of the three-spiral problem, splits it into 4 micro-batches that stage r receives with
``dist.irecv`` (posted up front) and sends on with ``dist.isend`` as soon as each is computed,
roots the micro-batch cross-entropies / 4 on the last stage, runs ``dist_autograd.backward`` and
takes an Adam step (lr 0.01) on each stage's layers with the gradients of ``get_gradients``.
H = 32 is the example; the wider models (``--widths``, default 32, 256 and 1024; ``--quick``: 32
and 256) show where compute starts to outweigh the messages.

Baseline, measured in the same run and taking turns with the pipeline: the same model and
training step (same micro-batches, same Adam) on rank 0 alone with mpigrad's rank-local engine
(``mg.autograd.grad`` of the batch loss), while the other ranks wait in an ``Ibarrier`` tested
every 5 ms with a sleep between, so that they leave rank 0 its core (a rank in a blocking MPI
call busy-polls and would take one).

Check before timing: the pipeline and the one-rank model, started from the same weights, train
3 steps on the same batches and their losses must agree to 1e-10, or the benchmark exits
non-zero.

Method, as mpi4py's demo/osu_bw.py: barrier, warm-up, a timed loop with ``MPI.Wtime``. A
repetition is a chunk of training steps (as many as take about 0.1 s on one rank, 2 to 50) timed
as a whole from a barrier; the pipeline counts its slowest rank. Pipeline and baseline chunks
alternate, the order swapped every repetition. Medians and quartiles of the time per step. BLAS
runs on one thread, so that one rank uses one core.

Output: rank 0 prints one JSON line per width on stdout (``median`` etc.: ms per training step
of the pipeline; ``steps_per_s``; ``baseline_*``: the one-rank model; ``ratio``: pipeline time
per step / one-rank time per step, so below 1 the pipeline is faster; ``speedup`` = 1 / ratio;
``loadavg``), a table on stderr, and a plot of steps per second against the width (``--plot``,
default ``benchmarks/results/bench_pipeline.png``) when matplotlib is importable.

    mpiexec -n N python benchmarks/bench_pipeline.py [--quick] [--widths H ...] [--reps R]
        [--plot PATH | --no-plot]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

try:
    import mpigrad as mg
except ImportError:  # run from a source tree: benchmarks/ sits next to mpigrad/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mpigrad as mg
from _common import quartiles, release_idle, save_figure  # noqa: E402

import mpigrad.distributed as dist  # noqa: E402
import mpigrad.distributed.autograd as dist_autograd  # noqa: E402

# The example's data set and optimizer (examples/_training.py), so both train the same way.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
from _training import Adam, spirals  # noqa: E402

BATCH, MICRO_BATCHES, LEARNING_RATE = 128, 4, 0.01  # as in the example
WIDTHS = (32, 256, 1024)
QUICK_WIDTHS = (32, 256)
CHECK_STEPS, CHECK_TOL = 3, 1e-10
CHUNK_SECONDS = 0.1
DEFAULT_PLOT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "bench_pipeline.png"
)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
first, last = rank == 0, rank == size - 1
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


X_TRAIN, Y_TRAIN = spirals(2048, np.random.default_rng(1234))


class Model:
    """Layers ``begin`` to ``end`` (exclusive) of the MLP 2 -> H -> H -> H -> 3, their Adam, and
    the batches: every instance of a width draws the same initial weights and the same batches."""

    def __init__(self, width, begin, end):
        self.widths = [2, width, width, width, 3]
        count = len(self.widths) - 1
        init = np.random.default_rng(0)
        self.layers = []
        for i in range(count):
            w = init.normal(0, 1 / np.sqrt(self.widths[i]), (self.widths[i], self.widths[i + 1]))
            if begin <= i < end:
                self.layers.append(
                    (
                        mg.tensor(w, requires_grad=True),
                        mg.zeros(self.widths[i + 1], requires_grad=True),
                    )
                )
        self.has_last_layer = end == count
        self.params = [p for layer in self.layers for p in layer]
        self.optimizer = Adam(self.params, LEARNING_RATE)
        self.batches = np.random.default_rng(7)

    def next_batch(self):
        return np.array_split(
            self.batches.choice(len(X_TRAIN), BATCH, replace=False), MICRO_BATCHES
        )

    def apply(self, h):
        """These layers: tanh after each but the model's last."""
        for j, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if not (self.has_last_layer and j == len(self.layers) - 1):
                h = mg.tanh(h)
        return h


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
            h = self.apply(h)
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
            self.optimizer.step(dist_autograd.get_gradients(context_id))
        return sum(r.item() for r in roots) if last else None


class OneRank(Model):
    """The whole model on one process, trained with the rank-local engine (the baseline)."""

    def __init__(self, width):
        super().__init__(width, 0, 4)

    def step(self):
        batch = self.next_batch()
        losses = [
            mg.cross_entropy(self.apply(mg.tensor(X_TRAIN[b])), Y_TRAIN[b]) / MICRO_BATCHES
            for b in batch
        ]
        loss = losses[0]
        for other in losses[1:]:
            loss = loss + other
        grads = mg.autograd.grad(loss, self.params)
        self.optimizer.step(dict(zip(self.params, grads)))
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
    release_idle(comm, rank == 0, 0.005)
    reference = comm.bcast(reference, root=0)
    error = max(abs(a - b) / abs(b) for a, b in zip(losses, reference))
    if not error <= CHECK_TOL:
        raise SystemExit(
            f"bench_pipeline: width {width}: the pipeline's losses {losses} differ from the "
            f"one-rank model's {reference} (relative {error:.2e}, tolerance {CHECK_TOL:.0e})"
        )
    return error


def run_width(width, reps, warmup):
    """Seconds per training step per repetition: (pipeline, one rank) on rank 0; None elsewhere."""
    error = check(width)
    pipeline = Pipeline(width)
    one = OneRank(width) if rank == 0 else None
    chunk = None
    if rank == 0:  # calibrate the chunk on the baseline (while the others wait idle)
        for _ in range(warmup):
            one.step()
        start = MPI.Wtime()
        one.step()
        chunk = int(min(50, max(2, CHUNK_SECONDS / (MPI.Wtime() - start))))
    release_idle(comm, rank == 0, 0.005)
    chunk = comm.bcast(chunk, root=0)
    for _ in range(warmup):
        pipeline.step()

    def run_pipeline():
        comm.Barrier()
        start = MPI.Wtime()
        for _ in range(chunk):
            pipeline.step()
        return (MPI.Wtime() - start) / chunk

    def run_one():
        seconds = None
        if rank == 0:
            start = MPI.Wtime()
            for _ in range(chunk):
                one.step()
            seconds = (MPI.Wtime() - start) / chunk
        release_idle(comm, rank == 0, 0.005)
        return seconds

    piped, alone = [], []
    for i in range(reps):
        if i % 2 == 0:
            piped.append(run_pipeline())
            alone.append(run_one())
        else:
            alone.append(run_one())
            piped.append(run_pipeline())
    everyone = comm.gather(piped, root=0)
    if rank != 0:
        return None
    return list(np.max(everyone, axis=0)), alone, chunk, error


def record_for(width, reps, found):
    piped, alone, chunk, error = found
    q1, median, q3 = quartiles([s * 1e3 for s in piped])
    b_q1, b_median, b_q3 = quartiles([s * 1e3 for s in alone])
    return {
        "bench": "pipeline", "subject": "mpigrad pipeline (dist_autograd)",
        "model": f"MLP 2-{width}-{width}-{width}-3 tanh", "width": width, "ranks": size,
        "cores": CORES, "batch": BATCH, "micro_batches": MICRO_BATCHES, "reps": reps,
        "steps_per_rep": chunk, "unit": "ms per step",
        "median": round(median, 4), "q1": round(q1, 4), "q3": round(q3, 4),
        "steps_per_s": round(1e3 / median, 2),
        "baseline": "same model and step on one rank (rank-local engine)",
        "baseline_median": round(b_median, 4), "baseline_q1": round(b_q1, 4),
        "baseline_q3": round(b_q3, 4), "baseline_steps_per_s": round(1e3 / b_median, 2),
        "ratio": round(median / b_median, 3), "speedup": round(b_median / median, 3),
        "check_error": error, "loadavg": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def plot(records, path):
    """Steps per second against width; returns a note for stderr."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no plot"
    widths = [r["width"] for r in records]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot(widths, [r["steps_per_s"] for r in records], "r-o", label=f"pipeline, {size} ranks")
    ax.plot(widths, [r["baseline_steps_per_s"] for r in records], "k-s", label="one rank")
    for r in records:
        ax.annotate(f"x{r['speedup']:.2f}", (r["width"], r["steps_per_s"]),
                    textcoords="offset points", xytext=(5, 6), fontsize=8)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width H (MLP 2-H-H-H-3, batch 128 in 4 micro-batches)")
    ax.set_ylabel("training steps per second (median)")
    ax.set_title(f"mpigrad pipeline MLP, {size} ranks on {CORES} cores vs one rank")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI: widths 32 and 256, few repetitions")
    p.add_argument("--widths", type=int, nargs="+", help="hidden widths H")
    p.add_argument("--reps", type=int, help="timed repetitions (default 9; --quick 5)")
    p.add_argument("--plot", default=DEFAULT_PLOT, help=f"PNG path (default {DEFAULT_PLOT})")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be positive")
    if args.widths and min(args.widths) < 1:
        p.error("--widths must be positive")
    dist.init(comm)
    widths = args.widths or (QUICK_WIDTHS if args.quick else WIDTHS)
    reps = args.reps or (5 if args.quick else 9)
    warmup = 2 if args.quick else 3
    records = []
    if rank == 0:
        print(f"{size} ranks on {CORES} cores; ms per training step, median (q1-q3); "
              f"x: pipeline / one rank", file=sys.stderr)  # fmt: skip
        print(f"{'width':>6} {'pipeline':>22} {'steps/s':>9} {'one rank':>22} {'steps/s':>9}"
              f" {'x':>6}", file=sys.stderr, flush=True)  # fmt: skip
    for width in widths:
        found = run_width(width, reps, warmup)
        if rank != 0:
            continue
        r = record_for(width, reps, found)
        records.append(r)
        print(json.dumps(r), flush=True)
        print(f"{width:>6} {r['median']:>8.3f} ({r['q1']:.3f}-{r['q3']:.3f})"
              f" {r['steps_per_s']:>9.1f}"
              f" {r['baseline_median']:>8.3f} ({r['baseline_q1']:.3f}-{r['baseline_q3']:.3f})"
              f" {r['baseline_steps_per_s']:>9.1f} {r['ratio']:>6.2f}",
              file=sys.stderr, flush=True)  # fmt: skip
    if rank == 0 and not args.no_plot:
        print(plot(records, args.plot), file=sys.stderr)


if __name__ == "__main__":
    main()
