#!/usr/bin/env python3
"""Data-parallel training steps: mpigrad's DistributedDataParallel against torch DDP and by hand.

One training step of an MLP 784-1024-1024-1024-10 (ReLU, float32), batch 64 per rank on data
made here (each rank its own): ``zero_grad``, forward, ``cross_entropy``, backward, gradient
averaging, then SGD (lr 0.01, momentum 0.9).  Subjects, timed in the same rounds:

- ``mpigrad DDP``: ``mpigrad.distributed.DistributedDataParallel`` with its defaults (the
  weights, 1 MiB or more, each reduced in its own ``.grad``, the biases fused in a bucket), the
  averaging started from the engine's hooks during backward;
- ``hand Allreduce``: the same mpigrad model without DDP; after backward, an mpi4py
  ``Allreduce`` (in place, ``MPI.SUM``) of each gradient in parameter order, then a division by
  the number of ranks (what a user writes by hand);
- ``torch DDP``: ``torch.nn.parallel.DistributedDataParallel`` (default buckets) over the gloo
  backend on CPU, started with a ``FileStore`` in a temporary folder, ranks from MPI, and
  ``torch.optim.SGD``; skipped, with one line saying so, where torch is not installed (or with
  ``--no-torch``);
- ``one rank`` (and ``torch one rank``): the same step with no communication on rank 0 alone,
  while the other ranks wait idle in an ``Ibarrier``: ``efficiency`` is its time over the
  N-rank subject's (weak scaling: the same batch per rank).

Every model starts from the same parameters (drawn as ``mpigrad.nn.Linear`` draws them, seed 0,
copied into torch's).  Before timing, one step of each checks that the mpigrad DDP's averaged
gradients equal the hand-written average, and torch DDP's, to 1e-5 relative (largest difference
over the largest gradient entry, per parameter, float32) on every rank, or the script exits
non-zero.

Threads: ``--threads N`` (default 1) sets BLAS and OpenMP threads (before numpy loads), torch's
intra-op threads and mpigrad's kernel threads alike: one each is a rank's share at 2 ranks on a
2-core machine.  gloo runs its transfers on threads of its own, as torch does everywhere.

Each call is one step from a barrier, and a round counts its slowest rank, per part: ``fwd``
(the model and the loss), ``bwd`` (backward, including the averaging each subject does in it),
``comm`` (the hand-written ``Allreduce`` calls and division; for the mpigrad DDP, the time
backward spends in the DDP's wait for its allreduces at the end of backward, measured by
wrapping the instance's ``_wait`` method: part of ``bwd``), and ``step`` (the optimizer).
``wait %`` is the median wait over the median step.  Ratios: the mpigrad DDP's median step
over torch DDP's and over the hand-written one's (below 1 mpigrad is faster); the targets are
at most 1 for both.  The plot shows time per step against ranks, the one-rank subjects at 1.

    mpiexec -n 2 python benchmarks/bench_ddp.py [--quick] [--reps N] [--threads N]
        [--no-torch] [--plot PATH | --no-plot]
    mpiexec -n 4 python benchmarks/bench_ddp.py --quick
"""

import os
import shutil
import tempfile

import _common


def parse_args():
    p = _common.parser(__doc__, plot=True)
    p.add_argument("--threads", type=_common.positive, default=1, help="threads (default 1)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even where installed")
    return p.parse_args()


ARGS = parse_args()
_common.prepare(ARGS.threads)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import mpigrad as mg  # noqa: E402
import mpigrad.distributed as dist  # noqa: E402
from mpigrad import kernels  # noqa: E402

WIDTHS = (784, 1024, 1024, 1024, 10)
BATCH, LR, MOMENTUM = 64, 0.01, 0.9
CHECK_TOL = 1e-5
CASE = f"MLP {'-'.join(map(str, WIDTHS))} ReLU float32, batch {BATCH} per rank, SGD momentum 0.9"
PARTS = ("forward", "backward", "comm", "step")
TORCH_OF = {  # each subject's torch counterpart, for the x torch column
    "mpigrad DDP": "torch DDP",
    "hand Allreduce": "torch DDP",
    "one rank": "torch one rank",
}
ALONE_OF = {  # each N-rank subject's one-rank counterpart, for the efficiency
    "mpigrad DDP": "one rank",
    "hand Allreduce": "one rank",
    "torch DDP": "torch one rank",
}

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def batch():
    """This rank's batch: inputs (float32) and class indices, the same every step."""
    rng = np.random.default_rng(1000 + rank)
    x = rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32)
    return x, rng.integers(0, WIDTHS[-1], BATCH)


def mpigrad_model():
    """The MLP, the same parameters on every rank and in every call."""
    rng = np.random.default_rng(0)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(mg.nn.Linear(n_in, n_out, generator=rng))
        if i < len(WIDTHS) - 2:
            layers.append(mg.nn.ReLU())
    return mg.nn.Sequential(*layers)


def torch_model(torch):
    """The MLP in torch with ``mpigrad_model``'s parameters."""
    source = mpigrad_model()
    layers = []
    for i, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p, q in zip(model.parameters(), source.parameters()):
            p.copy_(torch.from_numpy(q.data))
    return model


class MpigradStep:
    """One training step of the mpigrad model: with ``ddp`` through DistributedDataParallel,
    else averaged by hand with ``Allreduce`` where ``average``, else on this rank alone."""

    def __init__(self, ddp=False, average=False):
        self.model = mpigrad_model()
        self.ddp, self.average, self.waited = ddp, average, 0.0
        if ddp:
            self.model = dist.DistributedDataParallel(self.model)
            self.model._wait = self.timed(self.model._wait)
        self.optimizer = mg.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        x, self.targets = batch()
        self.x = mg.tensor(x)

    def timed(self, wait):
        """The DDP's ``_wait``, adding the seconds each call takes to ``self.waited``."""

        def timed_wait(*args, **kwargs):
            start = MPI.Wtime()
            try:
                return wait(*args, **kwargs)
            finally:
                self.waited += MPI.Wtime() - start

        return timed_wait

    def backward(self):
        """zero_grad, forward, backward and the averaging: the parts' seconds."""
        start = MPI.Wtime()
        self.optimizer.zero_grad()
        loss = mg.cross_entropy(self.model(self.x), self.targets)
        forward = MPI.Wtime()
        self.waited = 0.0
        loss.backward()
        backward = MPI.Wtime()
        parts = {"forward": forward - start, "backward": backward - forward}
        if self.ddp:
            parts["comm"] = self.waited
        elif self.average:
            for p in self.model.parameters():
                grad = p.grad.data
                comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
                np.divide(grad, size, out=grad)
            parts["comm"] = MPI.Wtime() - backward
        return parts

    def __call__(self):
        return _step(self)

    def gradients(self):
        return [p.grad.data for p in self.model.parameters()]


class TorchStep:
    """One training step of the torch model, through torch DDP unless ``alone``."""

    def __init__(self, torch, alone=False):
        self.torch = torch
        model = torch_model(torch)
        self.model = model if alone else torch.nn.parallel.DistributedDataParallel(model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        x, targets = batch()
        self.x, self.targets = torch.from_numpy(x), torch.from_numpy(targets)

    def backward(self):
        """zero_grad, forward, and backward (torch DDP's averaging in it): the parts' seconds."""
        start = MPI.Wtime()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.targets)
        forward = MPI.Wtime()
        loss.backward()
        return {"forward": forward - start, "backward": MPI.Wtime() - forward}

    def __call__(self):
        return _step(self)

    def gradients(self):
        return [p.grad.numpy() for p in self.model.parameters()]


def _step(subject):
    """One training step of ``subject``: its parts' seconds, and ``time``, the whole step's."""
    start = MPI.Wtime()
    parts = subject.backward()
    stepping = MPI.Wtime()
    subject.optimizer.step()
    end = MPI.Wtime()
    return {**parts, "step": end - stepping, "time": end - start}


def on_rank_0(subject):
    """``subject`` on rank 0 alone while the other ranks wait idle; its parts (zeros
    elsewhere, so that the slowest rank's are rank 0's)."""

    def alone():
        parts = (
            subject() if rank == 0 else dict.fromkeys(("forward", "backward", "step", "time"), 0.0)
        )
        _common.release_idle(comm, rank == 0, 0.005)
        return parts

    return alone


def check(subjects):
    """One backward of each subject (``{name: subject}``, the mpigrad DDP first) from the same
    parameters; exits on every rank unless the DDP's gradients equal each other's to CHECK_TOL
    on every rank.  Then one optimizer step each.  Returns the worst error per reference."""
    for subject in subjects.values():
        subject.backward()
    ddp, *references = subjects
    got = subjects[ddp].gradients()
    errors = {
        name: max(
            float(np.max(np.abs(g - w)) / np.max(np.abs(w)))
            for g, w in zip(got, subjects[name].gradients())
        )
        for name in references
    }
    everyone = comm.allgather(errors)
    worst = {name: max(e[name] for e in everyone) for name in references}
    if not all(error <= CHECK_TOL for error in worst.values()):
        raise SystemExit(
            f"bench_ddp: rank {rank}: the mpigrad DDP's averaged gradients differ from the "
            f"references' (largest relative difference over the ranks: {worst}, tolerance "
            f"{CHECK_TOL:.0e})"
        )
    for subject in subjects.values():
        subject.optimizer.step()
    return worst


def load_torch():
    """(torch, None, cleanup) with torch's threads set and a gloo process group over this job's
    ranks, or (None, why, None) where torch is not installed or ``--no-torch``."""
    if ARGS.no_torch:
        return None, "torch skipped (--no-torch): torch rows left out", None
    try:
        import torch
        import torch.distributed
    except ImportError:
        return None, "torch is not installed: torch rows left out (make torch installs it)", None
    torch.set_num_threads(ARGS.threads)
    folder = comm.bcast(tempfile.mkdtemp(prefix="bench_ddp.") if rank == 0 else None, root=0)
    store = torch.distributed.FileStore(os.path.join(folder, "store"), size)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=size)

    def cleanup():
        torch.distributed.destroy_process_group()
        comm.Barrier()
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)

    return torch, None, cleanup


def measure(torch, reps):
    """Check, then time every subject; rank 0: (the slowest rank's samples, check errors)."""
    subjects = {
        "mpigrad DDP": MpigradStep(ddp=True),
        "hand Allreduce": MpigradStep(average=True),
    }
    if torch is not None:
        subjects["torch DDP"] = TorchStep(torch)
    errors = check(subjects)
    subjects["one rank"] = on_rank_0(MpigradStep() if rank == 0 else None)
    if torch is not None:
        subjects["torch one rank"] = on_rank_0(TorchStep(torch, alone=True) if rank == 0 else None)
    samples = _common.interleave(subjects, reps, warmup=2, clock=MPI.Wtime, comm=comm)
    slowest = _common.slowest_rank(samples, comm)
    return slowest and (slowest, errors)


def main():
    dist.init(comm)
    kernels.set_num_threads(ARGS.threads)
    torch, skipped, cleanup = load_torch()
    reps = ARGS.reps or (5 if ARGS.quick else 40)
    found = measure(torch, reps)
    if cleanup is not None:
        cleanup()
    if rank != 0:
        return
    samples, errors = found
    report = _common.Report(ARGS, comm, threads=ARGS.threads)
    threads = f"{ARGS.threads} thread{'s' if ARGS.threads > 1 else ''} per rank"
    if skipped:
        print(skipped)
    print(
        "check: the mpigrad DDP's averaged gradients against "
        + ", ".join(f"{name}'s: {error:.1e}" for name, error in errors.items())
        + f" (relative, tolerance {CHECK_TOL:.0e})"
    )
    table = _common.Table(
        "subject:14 median:7.2f q1:7.2f q3:7.2f fwd:7.2f bwd:7.2f comm:7.2f step:6.2f "
        "wait_%:6.1f faults:6.0f x_torch:7.2f x_hand:6.2f eff:5.2f",
        note=f"{CASE}; {size} ranks, {threads} (BLAS, OpenMP, torch, mpigrad kernels); ms per "
        "step, median over rounds of the slowest rank; fwd, bwd, comm, step: medians of the "
        "parts (mpigrad DDP: comm = its wait at the end of backward, inside bwd); wait %: "
        "comm / step; x torch: over the torch counterpart; x hand: over hand Allreduce; eff: "
        "one rank's step over this one's",
    )
    stats = {name: _common.summary(s["time"], 1e3) for name, s in samples.items()}
    medians = {name: st["median"] for name, st in stats.items()}
    for name, st in stats.items():
        parts = {
            part: _common.summary(samples[name][part], 1e3)["median"]
            for part in PARTS
            if part in samples[name]
        }
        faults = _common.summary(samples[name]["faults"])["median"]
        wait = round(parts["comm"] / st["median"], 4) if name == "mpigrad DDP" else None
        x_torch = _ratio(medians, name, TORCH_OF.get(name))
        x_hand = _ratio(medians, name, "hand Allreduce" if name == "mpigrad DDP" else None)
        efficiency = _ratio(medians, ALONE_OF.get(name), name)
        compared = {}
        if x_hand is not None:
            compared.update(baseline="hand Allreduce", baseline_median=medians["hand Allreduce"])
            compared["ratio"] = x_hand
        if x_torch is not None:
            compared.update(torch_baseline=TORCH_OF[name], torch_ratio=x_torch)
        report.record(
            case=CASE,
            subject=name,
            ranks=size,
            threads=ARGS.threads,
            reps=reps,
            unit="ms per step",
            **st,
            parts_ms=parts,
            faults=faults,
            **({} if wait is None else {"wait_fraction": wait}),
            **compared,
            **({} if efficiency is None else {"efficiency": efficiency}),
            check_errors=errors,
        )
        table.row(
            name,
            st["median"],
            st["q1"],
            st["q3"],
            *(parts.get(part) for part in PARTS),
            None if wait is None else 100 * wait,
            faults,
            x_torch,
            x_hand,
            efficiency,
        )
    for baseline in ("torch DDP", "hand Allreduce"):
        if baseline in medians:
            ratio = medians["mpigrad DDP"] / medians[baseline]
            noise = _common.noise(ratio, stats["mpigrad DDP"], stats[baseline])
            report.target(f"mpigrad DDP / {baseline}", ratio, "<= 1.0", noise)
    lines = {
        name: ([1, size], [medians[alone], medians[name]])
        for name, alone in ALONE_OF.items()
        if name in medians
    }
    panel = _common.Panel("ranks", "ms per training step (median, slowest rank)", lines, logy=False)
    report.plot(f"{CASE}: {threads}", [panel])
    report.close()


def _ratio(medians, name, baseline):
    """medians[name] / medians[baseline] to 3 places, None where either is missing."""
    if name not in medians or baseline not in medians:
        return None
    return round(medians[name] / medians[baseline], 3)


if __name__ == "__main__":
    main()
