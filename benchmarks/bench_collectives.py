#!/usr/bin/env python3
"""Differentiable collectives and forward-mode send/recv against raw mpi4py on the same buffers.

Collectives (float64, every rank; 8 B to 64 MiB, ``--quick``: 8 B, 64 KiB and 1 MiB). ``bytes``
is the largest buffer a rank holds: the tensor it passes (``all_reduce``, ``broadcast`` from rank
0), the gathered list (``all_gather``: pieces of bytes / size) or the list it passes
(``reduce_scatter``, ``all_to_all``: pieces of bytes / size, at least one element). For each,
timed in the same rounds:

- ``raw``: the mpi4py collective on buffers allocated once (``Allreduce``, ``Bcast``,
  ``Allgather``, ``Reduce_scatter_block``, ``Alltoall``);
- ``fwd``: the mpigrad collective on a tensor that does not require grad;
- ``raw pair``: the collective and then its adjoint by hand, on buffers allocated once (for
  ``all_reduce``, two ``Allreduce``; ``broadcast``: ``Bcast`` then a sum ``Reduce`` to the
  root; ``all_gather`` and ``reduce_scatter``: each other; ``all_to_all``: two ``Alltoall``);
- ``fwd+bwd``: the mpigrad collective on a leaf that requires grad, then
  ``mpigrad.autograd.grad`` of its outputs against fixed cotangents on every rank.

Forward mode through send/recv (rank 0 to rank 1, the same sizes):

- ``raw``: ``Send``/``Recv`` of the primal into a buffer allocated once; ``raw pair``: the primal
  and then the tangent, the same way (what a user writes by hand);
- ``fwd``: ``dist.send``/``dist.recv`` of the primal; ``fwd+bwd`` (here: ``dual``): inside a
  ``forward_ad.dual_level``, ``dist.send`` of ``make_dual(x, t)`` and ``dist.recv`` then
  ``unpack_dual`` of the tangent.  Where the installed mpigrad does not carry tangents through
  send, one line says so and these rows are skipped.

Every call starts from a barrier; a round counts the slowest rank. Outputs and gradients are
checked against numpy before timing. Ratios: ``fwd / raw`` and ``fwd+bwd / raw pair``.
Targets: ``all_reduce`` forward + backward within 1.3x of two raw ``Allreduce`` from 1 MiB up,
and within 30 us of them at 8 B; the dual send/recv within 1.3x of the primal and tangent sent
by hand. The plot shows all_reduce's times and every ratio against size.

    mpiexec -n 2 python benchmarks/bench_collectives.py [--quick] [--sizes BYTES ...]
        [--reps N] [--plot PATH | --no-plot]
    mpiexec -n 4 python benchmarks/bench_collectives.py --quick
"""

import sys

import _common

_common.prepare()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import mpigrad as mg  # noqa: E402
import mpigrad.distributed as dist  # noqa: E402
from mpigrad.autograd import forward_ad  # noqa: E402

KI, MI = 1 << 10, 1 << 20
SIZES = (8, 64, 512, 4 * KI, 64 * KI, MI, 8 * MI, 64 * MI)  # bytes
QUICK_SIZES = (8, 64 * KI, MI)
TAG = 12
SERIES = ("raw", "fwd", "raw pair", "fwd+bwd")

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def elements(nbytes):
    return max(1, nbytes // 8)


class Collective:
    """One collective at one size: its arrays, subjects and the check of their results.

    Rank r's data is ``a + r`` with ``a`` the same on every rank, and the cotangents ``w`` are the
    same on every rank, so that every output and gradient has a closed form (``expected``).  A
    subclass says whether the op takes and returns lists (of ``size`` pieces of bytes / size)
    and writes ``raw``, ``raw_pair``, ``mpigrad`` and ``expected``.
    """

    name = ""
    takes_list = returns_list = False

    def __init__(self, nbytes):
        n = elements(nbytes)
        if self.takes_list or self.returns_list:
            n = max(1, n // size)
        rng = np.random.default_rng(1)  # the same a and w on every rank
        self.a = rng.standard_normal((size, n) if self.takes_list else n)
        self.w = rng.standard_normal((size, n) if self.returns_list else n)
        mine = self.a + rank
        self.x_array = mine  # the raw subjects' send buffer
        self.out = np.empty_like(self.w)  # the raw forward's receive buffer
        self.grad = np.empty_like(self.a)  # the raw adjoint's receive buffer
        pieces = list(mine) if self.takes_list else [mine]
        self.x = [mg.tensor(p) for p in pieces]
        self.inputs = [mg.tensor(p, requires_grad=True) for p in pieces]
        self.cotangents = [mg.tensor(w) for w in (self.w if self.returns_list else [self.w])]

    def subjects(self):
        return {
            "raw": self.raw,
            "fwd": lambda: self.call(self.x),
            "raw pair": self.raw_pair,
            "fwd+bwd": self.forward_backward,
        }

    def call(self, pieces):
        """The mpigrad collective on ``pieces`` (a list, or its one tensor); its outputs as a
        list."""
        outputs = self.mpigrad(pieces if self.takes_list else pieces[0])
        return outputs if self.returns_list else [outputs]

    def forward_backward(self):
        outputs = self.call(self.inputs)
        grads = mg.autograd.grad(outputs, self.inputs, self.cotangents, allow_unused=True)
        return outputs, grads  # broadcast: None off the root, whose output does not use x

    def check(self):
        """Every subject once, its results against numpy (allclose: sums in another order)."""
        want_out, want_grad = self.expected()
        outputs, grads = self.forward_backward()
        for got in (outputs, self.call(self.x)):
            assert np.allclose(_joined(got, want_out), want_out), f"{self.name}: wrong output"
        assert np.allclose(_joined(grads, want_grad), want_grad), f"{self.name}: wrong gradient"
        self.raw()
        assert np.allclose(self.out, want_out), f"raw {self.name}: wrong output"
        self.raw_pair()
        assert np.allclose(self.grad, want_grad), f"raw pair {self.name}: wrong gradient"


def _joined(tensors, like):
    arrays = [np.zeros(np.shape(like)) if t is None else t.data for t in tensors]
    return np.stack(arrays).reshape(np.shape(like))


class AllReduce(Collective):
    name = "all_reduce"

    def raw(self):
        comm.Allreduce(self.x_array, self.out, op=MPI.SUM)

    def raw_pair(self):
        comm.Allreduce(self.x_array, self.out, op=MPI.SUM)
        comm.Allreduce(self.w, self.grad, op=MPI.SUM)

    def mpigrad(self, x):
        return dist.all_reduce(x)

    def expected(self):
        return size * self.a + size * (size - 1) / 2, size * self.w


class Broadcast(Collective):
    name = "broadcast"

    def __init__(self, nbytes):
        super().__init__(nbytes)
        if rank == 0:
            self.out[...] = self.x_array  # Bcast sends the root's buffer, left as it is
        else:
            self.grad[...] = 0.0  # Reduce leaves the other ranks' buffers as they are

    def raw(self):
        comm.Bcast(self.out, root=0)

    def raw_pair(self):
        comm.Bcast(self.out, root=0)
        comm.Reduce(self.w, self.grad if rank == 0 else None, op=MPI.SUM, root=0)

    def mpigrad(self, x):
        return dist.broadcast(x, 0)

    def expected(self):
        return self.a, size * self.w if rank == 0 else np.zeros_like(self.w)


class AllGather(Collective):
    name = "all_gather"
    returns_list = True

    def raw(self):
        comm.Allgather(self.x_array, self.out)

    def raw_pair(self):
        comm.Allgather(self.x_array, self.out)
        comm.Reduce_scatter_block(self.w, self.grad, op=MPI.SUM)

    def mpigrad(self, x):
        return dist.all_gather(x)

    def expected(self):
        return self.a + np.arange(size)[:, None], size * self.w[rank]


class ReduceScatter(Collective):
    name = "reduce_scatter"
    takes_list = True

    def raw(self):
        comm.Reduce_scatter_block(self.x_array, self.out, op=MPI.SUM)

    def raw_pair(self):
        comm.Reduce_scatter_block(self.x_array, self.out, op=MPI.SUM)
        comm.Allgather(self.w, self.grad)

    def mpigrad(self, xs):
        return dist.reduce_scatter(xs)

    def expected(self):
        return size * self.a[rank] + size * (size - 1) / 2, np.broadcast_to(self.w, self.a.shape)


class AllToAll(Collective):
    name = "all_to_all"
    takes_list = returns_list = True

    def raw(self):
        comm.Alltoall(self.x_array, self.out)

    def raw_pair(self):
        comm.Alltoall(self.x_array, self.out)
        comm.Alltoall(self.w, self.grad)

    def mpigrad(self, xs):
        return dist.all_to_all(xs)

    def expected(self):
        return self.a[rank] + np.arange(size)[:, None], np.broadcast_to(self.w[rank], self.a.shape)


COLLECTIVES = (AllReduce, Broadcast, AllGather, ReduceScatter, AllToAll)


class DualSendRecv:
    """Forward mode through send/recv, rank 0 to rank 1; the other ranks only meet the barriers.

    Subjects as ``Collective``'s: ``raw``, ``fwd`` (plain send/recv), ``raw pair`` (primal and
    tangent by hand), ``fwd+bwd`` (a dual tensor through send/recv; the series is the tangent's
    pass, not a backward)."""

    name = "send/recv dual"

    def __init__(self, nbytes):
        rng = np.random.default_rng(2)
        n = elements(nbytes)
        self.x_array, self.t_array = rng.standard_normal(n), rng.standard_normal(n)
        self.x, self.t = mg.tensor(self.x_array), mg.tensor(self.t_array)
        self.primal, self.tangent = np.empty(n), np.empty(n)

    def subjects(self):
        return {"raw": self.raw, "fwd": self.plain, "raw pair": self.raw_pair, "fwd+bwd": self.dual}

    def raw(self):
        if rank == 0:
            comm.Send(self.x_array, 1, TAG)
        elif rank == 1:
            comm.Recv(self.primal, 0, TAG)

    def raw_pair(self):
        if rank == 0:
            comm.Send(self.x_array, 1, TAG)
            comm.Send(self.t_array, 1, TAG)
        elif rank == 1:
            comm.Recv(self.primal, 0, TAG)
            comm.Recv(self.tangent, 0, TAG)

    def plain(self):
        if rank == 0:
            dist.send(self.x, 1)
        elif rank == 1:
            return dist.recv(0)

    def dual(self):
        with forward_ad.dual_level():
            if rank == 0:
                dist.send(forward_ad.make_dual(self.x, self.t), 1)
            elif rank == 1:
                return forward_ad.unpack_dual(dist.recv(0)).tangent.data

    def check(self):
        self.raw_pair()
        got, tangent = self.plain(), self.dual()
        if rank == 1:
            assert np.array_equal(self.primal, self.x_array) and np.array_equal(
                self.tangent, self.t_array
            ), "raw pair: wrong data"
            assert np.array_equal(got.data, self.x_array), "send/recv: wrong data"
            assert np.array_equal(tangent, self.t_array), "dual send/recv: wrong tangent"

    @staticmethod
    def available():
        """None where this mpigrad carries tangents through send, else why not (its error):
        rank 0 tries once, every rank learns the answer, rank 1 receives the message if it
        went."""
        reason = None
        if rank == 0:
            try:
                with forward_ad.dual_level():
                    dist.send(forward_ad.make_dual(mg.tensor(np.ones(1)), np.ones(1)), 1)
            except (RuntimeError, NotImplementedError) as error:
                reason = str(error)
        reason = comm.bcast(reason, root=0)
        if reason is None and rank == 1:
            with forward_ad.dual_level():
                dist.recv(0)
        return reason


def reps_for(nbytes, quick):
    """Timed rounds: about 2**28 bytes per subject (2**24 with --quick), in bounds."""
    if quick:
        return max(7, min(200, (1 << 24) // nbytes))
    return max(25, min(1000, (1 << 28) // nbytes))


def measure(case, nbytes, reps):
    """Rank 0: the slowest rank's summary (us) and median page faults per series; None
    elsewhere."""
    case.check()
    warmup = 3 if nbytes >= MI else 20
    samples = _common.interleave(case.subjects(), reps, warmup, MPI.Wtime, comm)
    slowest = _common.slowest_rank(samples, comm)
    if slowest is None:
        return None
    stats = {
        name: {
            **_common.summary(parts["time"], 1e6),
            "faults": _common.summary(parts["faults"])["median"],
        }
        for name, parts in slowest.items()
    }
    for subject, baseline in (("fwd", "raw"), ("fwd+bwd", "raw pair")):
        value = stats[baseline]["median"]
        ratio = round(stats[subject]["median"] / value, 3)
        noise = _common.noise(ratio, stats[subject], stats[baseline])
        stats[subject].update(baseline=baseline, baseline_median=value, ratio=ratio, noise=noise)
    return stats


def main():
    p = _common.parser(__doc__, plot=True)
    p.add_argument(
        "--sizes", type=_common.positive, nargs="+", help="message sizes in bytes (multiples of 8)"
    )
    args = p.parse_args()
    if args.sizes and any(n % 8 for n in args.sizes):
        p.error("--sizes: multiples of 8 bytes")
    if size < 2:
        sys.exit(
            "bench_collectives needs 2 ranks: mpiexec -n 2 python benchmarks/bench_collectives.py"
        )
    dist.init()
    skipped = DualSendRecv.available()
    cases = [*COLLECTIVES, *([] if skipped else [DualSendRecv])]
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    results = {}
    if rank == 0:
        report = _common.Report(args, comm)
        if skipped:
            print(f"skipped: forward mode through send/recv not available ({skipped})")
        table = _common.Table(
            "op:14 bytes:9 raw:9.1f fwd:9.1f x:5.2f raw_pair:9.1f fwd+bwd:9.1f x:5.2f",
            note=f"{size} ranks; median us, slowest rank; x: fwd / raw and fwd+bwd / raw pair "
            "(send/recv dual: raw pair = primal and tangent by hand, fwd+bwd = a dual tensor)",
        )
    for case_cls in cases:
        for nbytes in sizes:
            reps = args.reps or reps_for(nbytes, args.quick)
            stats = measure(case_cls(nbytes), nbytes, reps)
            if rank != 0:
                continue
            results[case_cls.name, nbytes] = stats
            for series, s in stats.items():
                report.record(
                    case=case_cls.name, subject=series, bytes=nbytes, reps=reps, unit="us", **s
                )
            row = [stats[s]["median"] for s in SERIES]
            table.row(
                case_cls.name,
                nbytes,
                *row[:2],
                stats["fwd"]["ratio"],
                *row[2:],
                stats["fwd+bwd"]["ratio"],
            )
    if rank != 0:
        return
    targets(report, results, sizes, skipped)
    plot(report, results, sizes, [c.name for c in cases])
    report.close()


def targets(report, results, sizes, skipped):
    large = [n for n in sizes if n >= MI]
    if large:
        worst = max(large, key=lambda n: results["all_reduce", n]["fwd+bwd"]["ratio"])
        s = results["all_reduce", worst]["fwd+bwd"]
        name = f"all_reduce fwd+bwd / 2 x raw Allreduce, worst from 1 MiB ({worst} B)"
        report.target(name, s["ratio"], "<= 1.3", s["noise"])
    if 8 in sizes:
        s = results["all_reduce", 8]["fwd+bwd"]
        over = round(s["median"] - s["baseline_median"], 1)
        pair = results["all_reduce", 8]["raw pair"]
        noise = _common.noise(s["median"], s) + _common.noise(pair["median"], pair)
        report.target("all_reduce fwd+bwd - 2 x raw Allreduce at 8 B, us", over, "<= 30", noise)
    if not skipped:
        worst = max(sizes, key=lambda n: results[DualSendRecv.name, n]["fwd+bwd"]["ratio"])
        s = results[DualSendRecv.name, worst]["fwd+bwd"]
        name = f"dual send/recv / primal and tangent by hand, worst size ({worst} B)"
        report.target(name, s["ratio"], "<= 1.3", s["noise"])


def plot(report, results, sizes, names):
    times = {
        series: (sizes, [results["all_reduce", n][series]["median"] for n in sizes])
        for series in SERIES
    }
    panels = [_common.Panel("bytes", "all_reduce: median us, slowest rank", times)]
    for series, goal in (("fwd", None), ("fwd+bwd", 1.3)):
        lines = {
            name: (sizes, [results[name, n][series]["ratio"] for n in sizes]) for name in names
        }
        ylabel = f"{series} / {results[names[0], sizes[0]][series]['baseline']}"
        panels.append(_common.Panel("bytes", ylabel, lines, hline=goal))
    report.plot(f"mpigrad collectives, {size} ranks: against raw mpi4py", panels)


if __name__ == "__main__":
    main()
