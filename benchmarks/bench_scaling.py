#!/usr/bin/env python3
"""Weak and strong scaling of the heat adjoint: mpigrad against a hand-written mpi4py adjoint.

The problem is ``examples/heat_adjoint.py``'s: the periodic 1-D heat equation stepped with the
explicit scheme ``u[i] += r * (u[i-1] - 2 u[i] + u[i+1])`` (r = 0.4) on a grid split into one
contiguous block per rank, one halo cell exchanged with each neighbour by ``sendrecv`` before
each step, and the misfit J = 0.5 * sum((u(T) - u_obs)^2) differentiated with respect to the
initial condition u0. One repetition of a subject is a whole forward + backward:

- ``mpigrad``: the example's code (``mg.stencil`` of ``mg.cat`` of the halos and the block,
  ``dist.sendrecv`` halos) inside a ``dist_autograd.context``, then ``dist_autograd.backward``
  and ``get_gradients``. The target is this one's.
- ``mpigrad-ops``: the same with the step spelled in elementwise ops, ``u + r * (e[:-2] - 2.0 * u
  + e[2:])``: five ops, each a pass over the block with a fresh array, and their rules in
  backward (measured here at 1 Mi points: 2.4-3.0x the hand-written adjoint). Reported, as the
  price of not using the stencil op.
- ``mpigrad-fn``: the step as a user's ``Function`` (``NumpyStencil``: the stencil and its
  transpose in numpy), as an HPC user writes a hot kernel that mpigrad lacks.
- ``hand-written`` (the baseline): mpi4py ``Sendrecv`` halos into a block with two ghost cells,
  the stencil as in-place numpy on buffers allocated once, then the hand-written adjoint: the
  transposed stencil backwards in time, where each halo's gradient (r times the first or last
  cell's adjoint) goes back to the rank it came from and is added to that rank's boundary cell.
  The scheme is linear, so the adjoint needs no stored forward states.

Configurations (``--points`` grid points, default 1 Mi = 2**20; ``--steps`` time steps T):

- ``weak``: ``--points`` per rank (the global grid grows with the ranks);
- ``strong``: ``--points`` in all, split over the ranks.

T defaults to 50 (``--quick``: 256 Ki points, T = 10): the cost is linear in T and the
mpigrad / hand-written ratio barely depends on it, while mpigrad keeps a few arrays of the block's
size per step for backward (peak about 1.1 GB per process at 1 Mi points and T = 50). A full run
at 1 or 2 ranks takes 20 to 35 s on a 2-core machine; ``--quick`` about 2 s.

Parallel efficiency is measured in the same run, after the N-rank timings: rank 0 alone runs
forward + backward of ``--points`` grid points (weak: one rank's share; strong: the whole
problem) on one process (the halos are the periodic neighbours, no MPI; mpigrad's rank-local
engine; the hand-written code without ``Sendrecv``) while the other ranks wait in an
``Ibarrier`` tested every 10 ms with a sleep between (a rank spinning in a blocking MPI call
would take a core). Weak efficiency = t(1 rank) / t(N ranks); strong = t(1) / (N t(N)); each
subject against its own one-rank time. At N = 1 the "N ranks" run still goes through
``sendrecv`` to itself. A sweep over rank counts is several runs: ``--append FILE`` adds each
run's JSON lines to FILE, and ``--collect FILE ...`` (no MPI work; any number of ranks, rank 0
plots) plots time and efficiency against ranks from such files.

Check before timing: mpigrad's gradient equals the hand-written adjoint's to 1e-10 (max
difference over the global grid / max |gradient|), on the N-rank and the one-rank problem, or the
benchmark exits non-zero.

Method, as mpi4py's demo/osu_bw.py: barrier, warm-up, a timed loop with ``MPI.Wtime`` in which
mpigrad and the baseline take turns in an order that alternates every repetition; a repetition
counts the slowest rank; medians and quartiles. BLAS runs on one thread.

Output: rank 0 prints one JSON line per configuration and subject on stdout (seconds; ``ratio``:
mpigrad / hand-written; ``efficiency``), one per target (the example's code, ``mpigrad``, over
the hand-written adjoint at 1 Mi points per rank, goal <= 1.3: reported, not asserted), a table
on stderr, and a plot of time per forward + backward and efficiency against ranks (``--plot``,
default ``benchmarks/results/bench_scaling.png``) when matplotlib is importable.

    mpiexec -n N python benchmarks/bench_scaling.py [--quick] [--points P] [--steps T]
        [--reps R] [--mode weak|strong|both] [--append FILE] [--plot PATH | --no-plot]
        [--no-mallopt]
    python benchmarks/bench_scaling.py --collect FILE [FILE ...] [--plot PATH]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

try:
    import mpigrad as mg
except ImportError:  # run from a source tree: benchmarks/ sits next to mpigrad/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mpigrad as mg
from _common import (  # noqa: E402
    keep_freed_memory,
    quartiles,
    release_idle,
    save_figure,
    target_line,
)

import mpigrad.distributed as dist  # noqa: E402
import mpigrad.distributed.autograd as dist_autograd  # noqa: E402

MI = 1 << 20
R = 0.4  # k dt / dx^2, as in the example
LEFT_TO_RIGHT, RIGHT_TO_LEFT = 0, 1  # halo tags, so that with 2 ranks the directions stay apart
CHECK_TOL = 1e-10
TARGET = 1.3
DEFAULT_PLOT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "bench_scaling.png"
)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
left, right = (rank - 1) % size, (rank + 1) % size
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fields(n_global, block):
    """u0 and u_obs on ``block`` (a slice of the global grid), as in the example."""
    x = np.arange(block.start, block.stop) / n_global
    u0 = np.sin(2 * np.pi * x) + 0.5 * np.cos(7 * np.pi * x) ** 3
    u_obs = np.exp(-(((x - 0.5) / 0.1) ** 2))
    return u0, u_obs


def blocks(n_global, parts):
    """The contiguous blocks of np.array_split, as slices."""
    bounds = np.cumsum([0] + [len(b) for b in np.array_split(np.empty(n_global), parts)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# --- the subjects: each returns the gradient with respect to u0 ------------------------------


def step(u, halo_left, halo_right):
    """One explicit step: the example's ``step``."""
    return mg.stencil(mg.cat([halo_left, u, halo_right]), [R, 1 - 2 * R, R])


def elementwise_step(u, halo_left, halo_right):
    """The same step composed of elementwise mpigrad ops."""
    extended = mg.cat([halo_left, u, halo_right])
    return u + R * (extended[:-2] - 2.0 * u + extended[2:])


class NumpyStencil(mg.Function):
    """One explicit step as a user's Function: the stencil and its transpose in numpy, with the
    hand-written code's arithmetic (a fresh output array, as an op's result must be).

    out[i] = (1 - 2r) u[i] + r (u[i-1] + u[i+1]), with the halos as u[-1] and u[n];
    grad_u = the transposed stencil applied to grad; grad_halo = r * the boundary cell's grad.
    """

    @staticmethod
    def forward(ctx, u, halo_left, halo_right):
        return _three_point(u.data, halo_left.data[0], halo_right.data[0])

    @staticmethod
    def backward(ctx, grad):
        g = grad.data
        return (mg.Tensor(_three_point(g, 0.0, 0.0)), mg.Tensor(R * g[:1]),
                mg.Tensor(R * g[-1:]))


def _three_point(v, before, after):
    """(1 - 2r) v[i] + r (v[i-1] + v[i+1]) with v[-1] = before and v[n] = after (fresh array).

    The hand-written step's four passes, with its scratch array kept between calls, as a user's
    hot kernel keeps one: a fresh temporary of the block's size per call would cost more than
    the arithmetic (measured: 4 ms a call against 1.1 ms at 1 Mi points, as glibc hands each
    8 MiB temporary back to the kernel and the next one page-faults afresh).
    """
    out = np.multiply(v, 1 - 2 * R)
    if len(v) == 1:
        out[0] += R * (before + after)
        return out
    neighbours = _scratch(len(v))
    np.add(v[:-2], v[2:], out=neighbours[1:-1])
    neighbours[0], neighbours[-1] = before + v[1], v[-2] + after
    neighbours *= R
    out += neighbours
    return out


@functools.lru_cache(maxsize=2)
def _scratch(n):
    return np.empty(n)


STEPS = {"mpigrad": step, "mpigrad-ops": elementwise_step, "mpigrad-fn": NumpyStencil.apply}
"""The three ways the benchmark writes a step: mpigrad's stencil op (the example's), elementwise
mpigrad ops, or a Function with its own adjoint in numpy."""
TARGETED = "mpigrad"  # the variant the target is checked on: the example's code


def mpigrad_distributed(u0_array, u_obs, steps, variant="mpigrad"):
    """The example's distributed forward, then dist_autograd.backward."""
    one_step = STEPS[variant]
    u0 = mg.tensor(u0_array, requires_grad=True)
    with dist_autograd.context() as context_id:
        u = u0
        for _ in range(steps):
            halo_left = dist.sendrecv(u[-1:], dest=right, source=left, sendtag=LEFT_TO_RIGHT)
            halo_right = dist.sendrecv(u[:1], dest=left, source=right, sendtag=RIGHT_TO_LEFT)
            u = one_step(u, halo_left, halo_right)
        dist_autograd.backward(context_id, [0.5 * ((u - u_obs) ** 2).sum()])
        return dist_autograd.get_gradients(context_id)[u0].data


def mpigrad_serial(u0_array, u_obs, steps, variant="mpigrad"):
    """The same on one process: periodic halos, the rank-local engine."""
    one_step = STEPS[variant]
    u0 = mg.tensor(u0_array, requires_grad=True)
    u = u0
    for _ in range(steps):
        u = one_step(u, u[-1:], u[:1])
    (grad,) = mg.autograd.grad(0.5 * ((u - u_obs) ** 2).sum(), [u0])
    return grad.data


class HandWritten:
    """Forward and adjoint in mpi4py + numpy, on buffers allocated once per problem size.

    ``a`` and ``b`` hold the block with a ghost cell at each end. The halo exchanges are
    ``Sendrecv``s, or copies of the periodic neighbours when ``distributed`` is false.
    """

    def __init__(self, n, distributed):
        self.distributed = distributed
        self.a, self.b = np.empty(n + 2), np.empty(n + 2)
        self.tmp = np.empty(n)
        self.send, self.recv = np.empty(2), np.empty(2)  # [to the left, to the right]

    def _halos(self, a):
        """Fill a's ghost cells from the neighbours' boundary cells."""
        if not self.distributed:
            a[0], a[-1] = a[-2], a[1]
            return
        comm.Sendrecv([a[-2:-1], MPI.DOUBLE], right, LEFT_TO_RIGHT,
                      [a[0:1], MPI.DOUBLE], left, LEFT_TO_RIGHT)  # fmt: skip
        comm.Sendrecv([a[1:2], MPI.DOUBLE], left, RIGHT_TO_LEFT,
                      [a[-1:], MPI.DOUBLE], right, RIGHT_TO_LEFT)  # fmt: skip

    def _halo_adjoint(self, g_ghost_left, g_ghost_right, g):
        """The halo exchange reversed: a ghost cell's gradient goes back to the rank it came
        from and is added to that rank's boundary cell."""
        if not self.distributed:
            g[-1] += g_ghost_left
            g[0] += g_ghost_right
            return
        self.send[:] = g_ghost_left, g_ghost_right
        comm.Sendrecv([self.send[0:1], MPI.DOUBLE], left, LEFT_TO_RIGHT,
                      [self.recv[1:2], MPI.DOUBLE], right, LEFT_TO_RIGHT)  # fmt: skip
        comm.Sendrecv([self.send[1:2], MPI.DOUBLE], right, RIGHT_TO_LEFT,
                      [self.recv[0:1], MPI.DOUBLE], left, RIGHT_TO_LEFT)  # fmt: skip
        g[-1] += self.recv[1]
        g[0] += self.recv[0]

    def __call__(self, u0, u_obs, steps):
        a, b, tmp = self.a, self.b, self.tmp
        a[1:-1] = u0
        for _ in range(steps):  # forward: b = a + r (a[i-1] - 2 a[i] + a[i+1])
            self._halos(a)
            np.add(a[:-2], a[2:], out=b[1:-1])
            np.multiply(a[1:-1], 1 - 2 * R, out=tmp)
            b[1:-1] *= R
            b[1:-1] += tmp
            a, b = b, a
        # adjoint: g = dJ/du(T) = u(T) - u_obs; then each step transposed, last step first
        g = a
        np.subtract(a[1:-1], u_obs, out=g[1:-1])
        g[0] = g[-1] = b[0] = b[-1] = 0.0  # a ghost cell is no output: its adjoint is zero
        for _ in range(steps):
            inner = g[1:-1]
            ghost_left, ghost_right = R * inner[0], R * inner[-1]  # d step / d halo cells
            np.add(g[:-2], g[2:], out=b[1:-1])
            np.multiply(inner, 1 - 2 * R, out=tmp)
            b[1:-1] *= R
            b[1:-1] += tmp
            g, b = b, g
            self._halo_adjoint(ghost_left, ghost_right, g[1:-1])
        return g[1:-1].copy()


# --- timing ----------------------------------------------------------------------------------




def time_subjects(subjects, reps, warmup, alone):
    """Per subject name, seconds per repetition (the slowest rank; rank 0 only when ``alone``).

    Subjects take turns, the order alternating every repetition; each repetition starts from a
    barrier (``alone``: rank 0 only, the others released by ``release_idle`` at the end).
    """
    names = list(subjects)
    seconds = {name: [] for name in names}
    working = rank == 0 or not alone
    if working:
        for _ in range(warmup):
            for name in names:
                subjects[name]()
        for i in range(reps):
            for name in names if i % 2 == 0 else names[::-1]:
                if not alone:
                    comm.Barrier()
                start = MPI.Wtime()
                subjects[name]()
                seconds[name].append(MPI.Wtime() - start)
    if alone:
        release_idle(comm, working, 0.01)
        return seconds if rank == 0 else None
    everyone = comm.gather(seconds, root=0)
    if rank != 0:
        return None
    return {name: list(np.max([s[name] for s in everyone], axis=0)) for name in names}


def check(name, grad, reference, scale_global=True):
    """Max |grad - reference| / max |reference|, over every rank's block when ``scale_global``."""
    diff, scale = float(np.max(np.abs(grad - reference))), float(np.max(np.abs(reference)))
    if scale_global:
        diff = comm.allreduce(diff, op=MPI.MAX)
        scale = comm.allreduce(scale, op=MPI.MAX)
    error = diff / scale
    if not error <= CHECK_TOL:
        raise SystemExit(
            f"bench_scaling: {name}: rank {rank}: mpigrad's gradient differs from "
            f"the hand-written adjoint's by {error:.2e} (tolerance {CHECK_TOL:.0e})"
        )
    return error


def run_config(mode, points, steps, reps, warmup):
    """Records (rank 0; None elsewhere) of one configuration: the N-rank subjects and the
    one-rank reference of the same problem."""
    n_global = points * size if mode == "weak" else points
    if n_global < size:
        raise SystemExit(f"bench_scaling: {size} ranks, but only {n_global} grid points")
    block = blocks(n_global, size)[rank]
    u0, u_obs = fields(n_global, block)
    hand = HandWritten(block.stop - block.start, distributed=True)
    reference = hand(u0, u_obs, steps)
    error = max(check(f"{mode}, {size} ranks, {v}", mpigrad_distributed(u0, u_obs, steps, v),
                      reference) for v in STEPS)  # fmt: skip
    subjects = {v: (lambda v=v: mpigrad_distributed(u0, u_obs, steps, v)) for v in STEPS}
    subjects["hand"] = lambda: hand(u0, u_obs, steps)
    parallel = time_subjects(subjects, reps, warmup, alone=False)

    # The one-rank reference: the problem of one rank (weak) or the whole problem (strong).
    n_serial = points
    serial, serial_error = None, 0.0
    if rank == 0:
        s_u0, s_obs = fields(n_serial, slice(0, n_serial))
        s_hand = HandWritten(n_serial, distributed=False)
        s_reference = s_hand(s_u0, s_obs, steps)
        serial_error = max(check(f"{mode}, one rank, {v}", mpigrad_serial(s_u0, s_obs, steps, v),
                                 s_reference, scale_global=False) for v in STEPS)  # fmt: skip
        subjects = {v: (lambda v=v: mpigrad_serial(s_u0, s_obs, steps, v)) for v in STEPS}
        subjects["hand"] = lambda: s_hand(s_u0, s_obs, steps)
    else:
        subjects = {}
    serial = time_subjects(subjects, reps, warmup, alone=True)
    if rank != 0:
        return None
    load = round(os.getloadavg()[0], 2)
    stats = {}
    for name in (*STEPS, "hand"):
        q1, median, q3 = quartiles(parallel[name])
        one = statistics.median(serial[name])
        efficiency = one / median if mode == "weak" else one / (size * median)
        stats[name] = (median, q1, q3, one, efficiency)
    records = []
    for name, label in (("mpigrad", "mpigrad dist_autograd, step as mg.stencil (the example)"),
                        ("mpigrad-ops", "mpigrad dist_autograd, step of elementwise ops"),
                        ("mpigrad-fn", "mpigrad dist_autograd, step as a numpy Function"),
                        ("hand", "hand-written mpi4py adjoint")):  # fmt: skip
        median, q1, q3, one, efficiency = stats[name]
        record = {
            "bench": "scaling", "mode": mode, "subject": label, "variant": name,
            "ranks": size, "cores": CORES, "points_global": n_global,
            "points_per_rank": n_global / size, "steps": steps, "reps": reps, "unit": "s",
            "median": round(median, 6), "q1": round(q1, 6), "q3": round(q3, 6),
            "one_rank_median": round(one, 6), "efficiency": round(efficiency, 4),
            "check_error": max(error, serial_error), "loadavg": load,
        }  # fmt: skip
        if name in STEPS:
            hand_median, hand_one = stats["hand"][0], stats["hand"][3]
            record.update(baseline="hand-written mpi4py forward + adjoint",
                          baseline_median=round(hand_median, 6),
                          ratio=round(median / hand_median, 3),
                          one_rank_ratio=round(one / hand_one, 3))  # fmt: skip
        records.append(record)
    return records


# --- output ----------------------------------------------------------------------------------


def targets(records):
    """The example's code (``TARGETED``) / hand-written where a rank holds 1 Mi points (and at
    one rank, from the one-rank reference of the weak configuration at 1 Mi points)."""
    goals = []
    for r in records:
        if r.get("variant") != TARGETED or r.get("bench") != "scaling":
            continue
        if r["points_per_rank"] == MI:
            goals.append({
                "target": f"{r['variant']} / hand-written adjoint, {r['mode']}, {r['ranks']} "
                          f"ranks, 1 Mi points per rank, T = {r['steps']}",
                "goal": f"<= {TARGET}", "value": r["ratio"], "met": bool(r["ratio"] <= TARGET),
            })  # fmt: skip
        if r["mode"] == "weak" and r["points_per_rank"] == MI and r["ranks"] > 1:
            goals.append({
                "target": f"{r['variant']} / hand-written adjoint, one rank alone (reference of "
                          f"the {r['ranks']}-rank run), 1 Mi points, T = {r['steps']}",
                "goal": f"<= {TARGET}", "value": r["one_rank_ratio"],
                "met": bool(r["one_rank_ratio"] <= TARGET),
            })  # fmt: skip
    return goals


def table(records, where):
    lines = [f"{where}; s per forward + backward, slowest rank (x: mpigrad / hand-written; "
             "eff: parallel efficiency against one rank; 1-rank x: x on rank 0 alone)",
             f"{'mode':>6} {'ranks':>5} {'points':>9} {'T':>4} {'variant':>11} {'mpigrad':>9}"
             f" {'hand':>9} {'x':>6} {'eff mg':>7} {'eff hand':>8} {'1-rank x':>8}"]  # fmt: skip
    by = {(r["mode"], r["ranks"], r["variant"]): r for r in records if r.get("bench") == "scaling"}
    for (mode, ranks, variant), r in sorted(by.items()):
        if variant not in STEPS:
            continue
        h = by[(mode, ranks, "hand")]
        lines.append(f"{mode:>6} {ranks:>5} {r['points_global']:>9} {r['steps']:>4} {variant:>11}"
                     f" {r['median']:>9.4f} {h['median']:>9.4f} {r['ratio']:>6.2f}"
                     f" {r['efficiency']:>7.3f} {h['efficiency']:>8.3f}"
                     f" {r['one_rank_ratio']:>8.2f}")  # fmt: skip
    return "\n".join(lines)


def plot(records, path):
    """Time per forward + backward and efficiency against ranks; returns a note for stderr."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no plot"
    records = [r for r in records if r.get("bench") == "scaling"]
    if not records:
        return "no scaling records: no plot"
    fig, (ax_time, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {("weak", "mpigrad"): "r-o", ("weak", "mpigrad-ops"): "g-o",
              ("weak", "mpigrad-fn"): "b-o", ("weak", "hand"): "k-o",
              ("strong", "mpigrad"): "r--s", ("strong", "mpigrad-ops"): "g--s",
              ("strong", "mpigrad-fn"): "b--s",
              ("strong", "hand"): "k--s"}  # fmt: skip
    labels = {"mpigrad": "mpigrad (mg.stencil)", "mpigrad-ops": "mpigrad (elementwise ops)",
              "mpigrad-fn": "mpigrad (numpy Function)",
              "hand": "hand-written adjoint"}  # fmt: skip
    for (mode, variant), style in styles.items():
        latest = {}  # ranks -> record; a later file or line wins
        for r in records:
            if r["mode"] == mode and r["variant"] == variant:
                latest[r["ranks"]] = r
        if not latest:
            continue
        ranks = sorted(latest)
        points = latest[ranks[0]]["points_per_rank" if mode == "weak" else "points_global"]
        label = (f"{mode} ({int(points)} points{' per rank' if mode == 'weak' else ''}), "
                 f"{labels[variant]}")  # fmt: skip
        ax_time.plot(ranks, [latest[n]["median"] for n in ranks], style, label=label)
        ax_eff.plot(ranks, [latest[n]["efficiency"] for n in ranks], style, label=label)
    ax_eff.axhline(1.0, color="0.6", linestyle=":")
    for ax in (ax_time, ax_eff):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("MPI ranks")
        ax.grid(True, which="both", alpha=0.3)
    ax_time.set_yscale("log")
    ax_time.set_ylabel("median s per forward + backward (slowest rank)")
    ax_eff.set_ylabel("parallel efficiency (against one rank, same run)")
    ax_eff.set_ylim(0, max([1.2] + [1.1 * r["efficiency"] for r in records]))
    ax_eff.legend(fontsize=7)
    steps = sorted({r["steps"] for r in records})
    fig.suptitle(
        f"heat adjoint scaling: mpigrad vs hand-written mpi4py (T = {', '.join(map(str, steps))})"
    )
    return save_figure(fig, path)


def read_records(paths):
    records = []
    for path in paths:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip().startswith("{")]
    return records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI: 256 Ki points, T = 10")
    p.add_argument("--points", type=int, help="grid points (weak: per rank; strong: in all)")
    p.add_argument("--steps", type=int, help="time steps T (default 50; --quick 10)")
    p.add_argument("--reps", type=int, help="timed repetitions (default 7)")
    p.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
    p.add_argument("--append", metavar="FILE", help="also append the JSON lines to FILE")
    p.add_argument(
        "--collect",
        metavar="FILE",
        nargs="+",
        help="plot (and tabulate) the JSON lines of earlier runs; no MPI work",
    )
    p.add_argument("--plot", default=DEFAULT_PLOT, help=f"PNG path (default {DEFAULT_PLOT})")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--no-mallopt", action="store_true", help="keep glibc's malloc thresholds")
    args = p.parse_args(argv)
    for name in ("points", "steps", "reps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    if args.collect:
        if rank == 0:
            records = read_records(args.collect)
            print(table(records, f"runs in {', '.join(args.collect)}"), file=sys.stderr)
            for goal in targets(records):
                print(json.dumps(goal), flush=True)
            if not args.no_plot:
                print(plot(records, args.plot), file=sys.stderr)
        return
    dist.init(comm)
    if not args.no_mallopt:
        keep_freed_memory()
    points = args.points or (256 * 1024 if args.quick else MI)
    steps = args.steps or (10 if args.quick else 50)
    reps = args.reps or 7
    warmup = 1 if args.quick else 2
    records = []
    for mode in ("weak", "strong") if args.mode == "both" else (args.mode,):
        found = run_config(mode, points, steps, reps, warmup)
        if rank == 0:
            for record in found:
                print(json.dumps(record), flush=True)
            records += found
    if rank != 0:
        return
    goals = targets(records)
    for goal in goals:
        print(json.dumps(goal), flush=True)
    if args.append:
        with open(args.append, "a") as f:
            for line in records + goals:
                f.write(json.dumps(line) + "\n")
    print(table(records, f"{size} ranks on {CORES} cores"), file=sys.stderr)
    for goal in goals:
        print(target_line(goal), file=sys.stderr)
    if not args.no_plot:
        print(plot(records, args.plot), file=sys.stderr)


if __name__ == "__main__":
    main()
