#!/usr/bin/env python3
"""Weak and strong scaling of the heat adjoint: mpigrad against a hand-written mpi4py adjoint.

The problem is ``examples/heat_adjoint.py``'s: the periodic 1-D heat equation stepped with the
explicit scheme ``u[i] += r * (u[i-1] - 2 u[i] + u[i+1])`` (r = 0.4) on a grid split into one
contiguous block per rank, one halo cell exchanged with each neighbour by ``sendrecv`` before
each step, and the misfit J = 0.5 * sum((u(T) - u_obs)^2) differentiated with respect to the
initial condition u0.  One repetition of a subject is a whole forward + backward:

- ``mpigrad``: the example's code (``mg.stencil`` of ``mg.cat`` of the halos and the block,
  ``dist.sendrecv`` halos) in a ``dist_autograd.context``, then ``dist_autograd.backward`` and
  ``get_gradients``.  The target is this one's: at most 1.3x the hand-written adjoint at 1 Mi
  points per rank.
- ``mpigrad-ops``: the step spelled in elementwise ops, ``u + r * (e[:-2] - 2.0 * u + e[2:])``:
  the price of not using the stencil op.
- ``mpigrad-fn``: the step as a user's ``Function`` (the stencil and its transpose in numpy), as
  an HPC user writes a hot kernel that mpigrad lacks.
- ``hand`` (the baseline): mpi4py ``Sendrecv`` halos into a block with two ghost cells, the
  stencil as in-place numpy on buffers allocated once, then the adjoint by hand: the transposed
  stencil backwards in time, each halo's gradient sent back to the rank it came from.

Configurations (``--points`` P, default 1 Mi = 2**20; ``--steps`` T, default 50; ``--quick``:
256 Ki points, T = 10): ``weak``, P points per rank; ``strong``, P points in all.  Before timing,
every mpigrad variant's gradient must equal the hand-written adjoint's to 1e-10, or the
benchmark exits non-zero.

Parallel efficiency is measured in the same run: after the N-rank timings, rank 0 alone runs
each subject on one process (no MPI: periodic halos, the rank-local engine) while the other
ranks wait idle, on the whole problem t1(P) and on one rank's share t1(P/N).  Weak efficiency
is t1(P) / tN; strong efficiency is t1(P) / (N tN), the product of two factors printed beside
it: ``size`` = t1(P) / (N t1(P/N)), how much faster per point one process runs a share than
the whole problem (above 1 where the share's arrays fit in a cache that the whole problem's do
not), and ``par`` = t1(P/N) / tN, what running on N ranks costs over the same share alone.

A sweep over rank counts is several runs, each appending to one file (``--append FILE``);
``--collect FILE ...`` (no MPI work) then tabulates and plots them against ranks.

    mpiexec -n N python benchmarks/bench_scaling.py [--quick] [--points P] [--steps T]
        [--reps R] [--mode weak|strong|both] [--append FILE] [--plot PATH | --no-plot]
    python benchmarks/bench_scaling.py --collect FILE [FILE ...] [--plot PATH]
"""

import functools
import json

import _common

_common.prepare()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import mpigrad as mg  # noqa: E402
import mpigrad.distributed as dist  # noqa: E402
import mpigrad.distributed.autograd as dist_autograd  # noqa: E402

MI = 1 << 20
R = 0.4  # k dt / dx^2, as in the example
LEFT_TO_RIGHT, RIGHT_TO_LEFT = 0, 1  # halo tags, so that with 2 ranks the directions stay apart
CHECK_TOL = 1e-10
TARGET = "<= 1.3"
VARIANTS = ("mpigrad", "mpigrad-ops", "mpigrad-fn", "hand")

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
left, right = (rank - 1) % size, (rank + 1) % size


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
        return (mg.Tensor(_three_point(g, 0.0, 0.0)), mg.Tensor(R * g[:1]), mg.Tensor(R * g[-1:]))


def _three_point(v, before, after):
    """(1 - 2r) v[i] + r (v[i-1] + v[i+1]) with v[-1] = before and v[n] = after (fresh array).

    The hand-written step's four passes, with its scratch array kept between calls, as a user's
    hot kernel keeps one: a fresh temporary of the block's size per call can cost more than the
    arithmetic, where glibc hands it back to the kernel and the next one page-faults afresh.
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


# The three ways the benchmark writes a step: mpigrad's stencil op (the example's, which the
# target is on), elementwise mpigrad ops, or a Function with its own adjoint in numpy.
STEPS = {"mpigrad": step, "mpigrad-ops": elementwise_step, "mpigrad-fn": NumpyStencil.apply}


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
        comm.Sendrecv(
            [a[-2:-1], MPI.DOUBLE], right, LEFT_TO_RIGHT, [a[0:1], MPI.DOUBLE], left, LEFT_TO_RIGHT
        )
        comm.Sendrecv(
            [a[1:2], MPI.DOUBLE], left, RIGHT_TO_LEFT, [a[-1:], MPI.DOUBLE], right, RIGHT_TO_LEFT
        )

    def _halo_adjoint(self, g_ghost_left, g_ghost_right, g):
        """The halo exchange reversed: a ghost cell's gradient goes back to the rank it came
        from and is added to that rank's boundary cell."""
        if not self.distributed:
            g[-1] += g_ghost_left
            g[0] += g_ghost_right
            return
        self.send[:] = g_ghost_left, g_ghost_right
        comm.Sendrecv(
            [self.send[0:1], MPI.DOUBLE],
            left,
            LEFT_TO_RIGHT,
            [self.recv[1:2], MPI.DOUBLE],
            right,
            LEFT_TO_RIGHT,
        )
        comm.Sendrecv(
            [self.send[1:2], MPI.DOUBLE],
            right,
            RIGHT_TO_LEFT,
            [self.recv[0:1], MPI.DOUBLE],
            left,
            RIGHT_TO_LEFT,
        )
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


# --- measuring --------------------------------------------------------------------------------


def check(name, grad, reference, distributed=True):
    """Max |grad - reference| / max |reference|, over every rank's block where ``distributed``;
    exits where it exceeds CHECK_TOL."""
    diff, scale = float(np.max(np.abs(grad - reference))), float(np.max(np.abs(reference)))
    if distributed:
        diff = comm.allreduce(diff, op=MPI.MAX)
        scale = comm.allreduce(scale, op=MPI.MAX)
    error = diff / scale
    if not error <= CHECK_TOL:
        raise SystemExit(
            f"bench_scaling: {name}: rank {rank}: mpigrad's gradient differs from "
            f"the hand-written adjoint's by {error:.2e} (tolerance {CHECK_TOL:.0e})"
        )
    return error


def subjects_on(n_global, block, steps, what, distributed):
    """The subjects on ``block`` of the grid, checked: (subjects, check error).  Without
    ``distributed``, on one process without MPI (periodic halos, the rank-local engine)."""
    u0, u_obs = fields(n_global, block)
    hand = HandWritten(len(u0), distributed)
    reference = hand(u0, u_obs, steps)
    run = mpigrad_distributed if distributed else mpigrad_serial
    subjects = {v: functools.partial(run, u0, u_obs, steps, v) for v in STEPS}
    error = max(check(f"{what}, {v}", subjects[v](), reference, distributed) for v in STEPS)
    subjects["hand"] = functools.partial(hand, u0, u_obs, steps)
    return subjects, error


def run_config(mode, points, steps, reps, warmup):
    """Rank 0: per variant, (N-rank summary, one-rank summary of the whole problem, one-rank
    median of one rank's share), and the check error; None elsewhere."""
    n_global = points * size if mode == "weak" else points
    if n_global < size:
        raise SystemExit(f"bench_scaling: {size} ranks, but only {n_global} grid points")
    parts = blocks(n_global, size)
    subjects, error = subjects_on(n_global, parts[rank], steps, f"{mode}, {size} ranks", True)
    samples = _common.interleave(subjects, reps, warmup, MPI.Wtime, comm)
    parallel = _common.slowest_rank(samples, comm)

    # One process: the whole problem (weak: one rank's share, P points) and, for strong, rank
    # 0's share of it; the other ranks wait idle, leaving the core to rank 0.
    share = parts[0].stop - parts[0].start
    one = {}
    if rank == 0:
        one, one_error = subjects_on(points, slice(0, points), steps, f"{mode}, one rank", False)
        error = max(error, one_error)
        if share != points:
            what = f"{mode}, one rank's share"
            shared, share_error = subjects_on(share, slice(0, share), steps, what, False)
            one.update({f"{v} share": f for v, f in shared.items()})
            error = max(error, share_error)
        one = _common.interleave(one, reps, warmup, MPI.Wtime)
    _common.release_idle(comm, rank == 0, 0.01)
    if rank != 0:
        return None
    stats = {}
    for v in VARIANTS:
        whole = _common.summary(one[v]["time"])
        part = _common.summary(one.get(f"{v} share", one[v])["time"])["median"]
        stats[v] = (_common.summary(parallel[v]["time"]), whole, part)
    return n_global, stats, error


def records_of(report, mode, points, steps, reps, found):
    n_global, stats, error = found
    records = []
    hand, hand_one = stats["hand"][0], stats["hand"][1]
    n = size if mode == "strong" else 1
    for v, (st, one, part) in stats.items():
        whole = one["median"]
        st["one_rank_median"], st["one_rank_share_median"] = whole, part
        st["efficiency"] = round(whole / st["median"] / n, 4)
        st["size_factor"] = round(whole / part / n, 4)
        st["parallel_factor"] = round(part / st["median"], 4)
        if v != "hand":
            st["baseline"] = "hand-written mpi4py forward + adjoint"
            st["ratio"] = round(st["median"] / hand["median"], 3)
            st["noise"] = _common.noise(st["ratio"], st, hand)
            st["one_rank_ratio"] = round(whole / hand_one["median"], 3)
            st["one_rank_noise"] = _common.noise(st["one_rank_ratio"], one, hand_one)
        grid = {"points_global": n_global, "points_per_rank": n_global / size, "steps": steps}
        records.append(
            report.record(
                case=mode,
                subject=v,
                ranks=size,
                **grid,
                reps=reps,
                unit="s",
                **st,
                check_error=error,
            )
        )
    return records


# --- output -----------------------------------------------------------------------------------


def targets(report, records):
    """The example's code over the hand-written adjoint where a rank holds 1 Mi points (and, from
    a weak run on more ranks, on one rank alone)."""
    for r in records:
        if r["subject"] != "mpigrad" or r["points_per_rank"] != MI:
            continue
        where = f"{r['case']}, {r['ranks']} ranks, 1 Mi points per rank, T = {r['steps']}"
        report.target(f"mpigrad / hand-written adjoint, {where}", r["ratio"], TARGET, r["noise"])
        if r["case"] == "weak" and r["ranks"] > 1:
            report.target(
                f"mpigrad / hand-written adjoint on one rank alone (the reference of {where})",
                r["one_rank_ratio"],
                TARGET,
                r["one_rank_noise"],
            )


COLUMNS = (
    "case",
    "ranks",
    "points_global",
    "steps",
    "subject",
    "median",
    "ratio",
    "one_rank_median",
    "one_rank_ratio",
    "efficiency",
    "size_factor",
    "parallel_factor",
)


def table(records, note):
    t = _common.Table(
        "mode:6 ranks:5 points:9 T:4 variant:11 s:9.4f x_hand:6.2f 1-rank_s:9.4f 1-rank_x:8.2f "
        "eff:6.3f size:6.3f par:6.3f",
        note=f"{note}; s: median per forward + backward, slowest rank; x hand: over the "
        "hand-written adjoint; 1-rank: the whole problem on one process; eff = size x par "
        "(see --help)",
    )
    superlinear = []
    for r in sorted(records, key=lambda r: (r["case"], r["ranks"], VARIANTS.index(r["subject"]))):
        t.row(*(r.get(key) for key in COLUMNS))
        if r["efficiency"] > 1.05:
            superlinear.append(r)
    for r in superlinear:
        cause = (
            "one rank's share runs faster per point than the whole problem (size > 1: it "
            "fits in a cache that the whole problem does not)"
            if r["size_factor"] > 1.05
            else "the N-rank run beat one process on the same share (par > 1: noise, or "
            "another process slowed the one-rank run)"
        )
        print(
            f"efficiency {r['efficiency']:.2f} ({r['case']}, {r['ranks']} ranks, "
            f"{r['subject']}): {cause}"
        )


def plot(report, records):
    panels = []
    for key, label in (
        ("median", "median s per forward + backward (slowest rank)"),
        ("efficiency", "parallel efficiency (against one process, same run)"),
    ):
        lines = {}
        for mode in ("weak", "strong"):
            for v in VARIANTS:
                latest = {
                    r["ranks"]: r[key] for r in records if r["case"] == mode and r["subject"] == v
                }
                if latest:
                    ranks = sorted(latest)
                    lines[f"{mode}, {v}"] = ranks, [latest[n] for n in ranks]
        hline = None if key == "median" else 1.0
        panels.append(_common.Panel("MPI ranks", label, lines, logy=key == "median", hline=hline))
    steps = ", ".join(map(str, sorted({r["steps"] for r in records})))
    report.plot(f"heat adjoint scaling: mpigrad vs hand-written mpi4py (T = {steps})", panels)


def collect(args):
    """Tabulate and plot the records in ``args.collect`` (rank 0; no MPI work)."""
    records = []
    for path in args.collect:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.startswith("{")]
    records = [r for r in records if r.get("bench") == "bench_scaling" and "efficiency" in r]
    args.append = None  # the records are read, not measured
    report = _common.Report(args)
    table(records, f"runs in {', '.join(args.collect)}")
    targets(report, records)
    plot(report, records)


def main():
    p = _common.parser(__doc__, plot=True)
    p.add_argument("--points", type=_common.positive, help="weak: per rank; strong: in all")
    p.add_argument("--steps", type=_common.positive, help="time steps T (default 50; --quick 10)")
    p.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
    p.add_argument("--collect", metavar="FILE", nargs="+", help="tabulate earlier runs")
    args = p.parse_args()
    if args.collect:
        if rank == 0:
            collect(args)
        return
    dist.init(comm)
    points = args.points or (256 * 1024 if args.quick else MI)
    steps = args.steps or (10 if args.quick else 50)
    reps = args.reps or 7
    warmup = 1 if args.quick else 2
    report = _common.Report(args, comm) if rank == 0 else None
    records = []
    for mode in ("weak", "strong") if args.mode == "both" else (args.mode,):
        found = run_config(mode, points, steps, reps, warmup)
        if rank == 0:
            records += records_of(report, mode, points, steps, reps, found)
    if rank != 0:
        return
    table(records, f"{size} ranks")
    targets(report, records)
    plot(report, records)
    report.close()


if __name__ == "__main__":
    main()
