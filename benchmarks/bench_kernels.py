#!/usr/bin/env python3
"""mpigrad.kernels against the numpy code they replace, alone and beside a spinning MPI rank.

Cases (float32; each kernel against its numpy baseline, one call per sample):

- ``accumulate``: ``kernels.accumulate(dst, src)`` against ``np.add(dst, src, out=dst)``, at
  64 Ki, 1 Mi, 4 Mi and 16 Mi elements (``--quick``: 64 Ki and 1 Mi), on 1 and 2 threads
  (``kernels.set_num_threads``).
- ``sum_into``: ``kernels.sum_into(dst, srcs)`` of 4 sources against a loop of ``np.add(out=)``.
- ``scatter_add``: 50 000 rows of 16 into 10 000 rows against ``np.add.at``.
- ``--mpi`` (under ``mpiexec -n 2`` or more): the other ranks wait in a blocking ``comm.Recv``,
  which MPICH busy-polls, while rank 0 times ``accumulate`` with the default thread policy and,
  to show what the policy avoids, with 2 threads forced.

Kernel and baseline are checked to compute the same array, then take turns and also trade their
output arrays from sample to sample, so that where an array lies in memory counts alike for
both.  ``speedup`` is the baseline's median over the kernel's: above 1, the kernel is faster.
Targets: accumulate at 16 Mi elements on 2 threads, speedup >= 1.3; scatter_add on 1 thread,
>= 10; accumulate beside a spinning rank with the default policy, every size, >= 1.0.  A
2-thread figure means something only on an otherwise idle machine (see ``loadavg``).

Without ``--mpi``, ranks other than 0 exit at once, without initializing MPI, so that rank 0
has the machine to itself.

    python benchmarks/bench_kernels.py [--quick] [--reps N]
    mpiexec -n 2 python benchmarks/bench_kernels.py --mpi [--quick]
"""

import itertools
import sys
import time
from typing import NamedTuple

import _common

_common.prepare()

import numpy as np  # noqa: E402

from mpigrad import kernels  # noqa: E402

KI, MI = 1 << 10, 1 << 20
SIZES = (64 * KI, MI, 4 * MI, 16 * MI)
QUICK_SIZES = (64 * KI, MI)
SCATTER_ROWS, SCATTER_COLUMNS, SCATTER_DST_ROWS = 50_000, 16, 10_000
RELEASE_TAG = 7


class Case(NamedTuple):
    """One configuration: the kernel and its numpy baseline, each ``(dst) -> None``."""

    name: str
    kernel: object
    baseline: object
    baseline_code: str
    inputs: tuple  # the kernel's inputs besides dst
    outputs: tuple  # two equal dst arrays; the subjects trade them
    touched: int  # elements read or written by one call, to size the sample count

    def fields(self):
        backend = kernels.backend(self.outputs[0], *self.inputs)
        size = self.inputs[-1].size
        return {"case": self.name, "size": size, "backend": backend, "baseline": self.baseline_code}


def aligned(values):
    """A copy of ``values`` whose data starts on a 64-byte boundary, so that both subjects' arrays
    are aligned alike (numpy's speed on small arrays depends on the alignment)."""
    raw = np.empty(values.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def random(rng, shape):
    return aligned(rng.standard_normal(shape, dtype=np.float32))


def zeros(shape):
    """Two aligned float32 zero arrays of ``shape``."""
    return aligned(np.zeros(shape, np.float32)), aligned(np.zeros(shape, np.float32))


def accumulate_case(size, rng):
    src = random(rng, size)
    kernel = lambda dst: kernels.accumulate(dst, src)  # noqa: E731
    code = "np.add(dst, src, out=dst)"
    return Case(
        "accumulate",
        kernel,
        lambda dst: np.add(dst, src, out=dst),
        code,
        (src,),
        zeros(size),
        2 * size,
    )


def sum_into_case(size, rng):
    srcs = [random(rng, size) for _ in range(4)]

    def numpy_loop(dst):
        for src in srcs:
            np.add(dst, src, out=dst)

    code = "for s in srcs: np.add(dst, s, out=dst)"
    return Case(
        "sum_into",
        lambda dst: kernels.sum_into(dst, srcs),
        numpy_loop,
        code,
        tuple(srcs),
        zeros(size),
        5 * size,
    )


def scatter_case(rng):
    """SCATTER_ROWS rows of SCATTER_COLUMNS, added into SCATTER_DST_ROWS rows."""
    index = rng.integers(-SCATTER_DST_ROWS, SCATTER_DST_ROWS, SCATTER_ROWS)
    src = random(rng, (SCATTER_ROWS, SCATTER_COLUMNS))
    return Case(
        "scatter_add",
        lambda dst: kernels.scatter_add(dst, index, src),
        lambda dst: np.add.at(dst, index, src),
        "np.add.at(dst, index, src)",
        (index, src),
        zeros((SCATTER_DST_ROWS, SCATTER_COLUMNS)),
        2 * src.size,
    )


def samples_for(touched, quick):
    """Samples per subject: about 2**30 elements touched (2**26 with --quick), in [7, 1000]."""
    if quick:
        return max(7, min(100, (1 << 26) // touched))
    return max(7, min(1000, (1 << 30) // touched))


def trading(call, outputs, first, clock):
    """A subject that times ``call`` on ``outputs[first]`` twice, then on the other array twice,
    and so on: with the order of the two subjects alternating every round, every combination of
    order and array comes equally often."""
    count = itertools.count()

    def sample():
        dst = outputs[(next(count) // 2 + first) % 2]
        start = clock()
        call(dst)
        return clock() - start

    return sample


def measure(report, case, reps, clock, **fields):
    """Check, warm up and time ``case``'s subjects; record and return the record."""
    ours, theirs = case.outputs
    case.kernel(ours)  # compiles
    case.baseline(theirs)
    if not np.array_equal(ours, theirs):
        sys.exit(f"bench_kernels: {case.name}: kernel and baseline disagree")
    subjects = {
        "kernel": trading(case.kernel, case.outputs, 0, clock),
        "numpy": trading(case.baseline, case.outputs, 1, clock),
    }
    samples = _common.interleave(subjects, reps, warmup=3)
    kernel, numpy = (_common.summary(samples[name]["time"], 1e6) for name in subjects)
    baseline = {f"baseline_{key}": numpy[key] for key in ("median", "q1", "q3")}
    speedup = round(numpy["median"] / kernel["median"], 3)
    noise = _common.noise(speedup, kernel, numpy)
    fields.update(case.fields(), dtype="float32", reps=reps, unit="us")
    return report.record(**fields, **kernel, **baseline, speedup=speedup, noise=noise)


def alone(report, args):
    """Every configuration, on 1 then 2 threads, in a process with the machine to itself."""
    rng = np.random.default_rng(0)
    records = []
    for threads in (1, 2):
        kernels.set_num_threads(threads)
        sizes = QUICK_SIZES if args.quick else SIZES
        cases = [make(size, rng) for size in sizes for make in (accumulate_case, sum_into_case)]
        for case in cases + [scatter_case(rng)]:
            reps = args.reps or samples_for(case.touched, args.quick)
            records.append(
                measure(report, case, reps, time.perf_counter, threads=threads, mode="alone")
            )
    kernels.set_num_threads(None)
    return records


def beside_spinning_ranks(args):
    """Rank 0 times accumulate while the other ranks spin in Recv: (comm, rank 0's records)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.size < 2:
        sys.exit("--mpi needs 2 ranks or more: mpiexec -n 2 python benchmarks/bench_kernels.py")
    flag = np.zeros(1, np.int64)
    comm.Barrier()
    if comm.rank != 0:
        cpu, wall = time.process_time(), MPI.Wtime()
        comm.Recv(flag, source=0, tag=RELEASE_TAG)
        comm.gather((time.process_time() - cpu) / (MPI.Wtime() - wall), root=0)
        return
    report = _common.Report(args, comm)
    rng = np.random.default_rng(0)
    records = []
    for policy, forced in (("default", None), ("forced", 2)):
        kernels.set_num_threads(forced)
        threads = kernels.get_num_threads()
        for size in QUICK_SIZES if args.quick else SIZES:
            case = accumulate_case(size, rng)
            # Forced threads stall for milliseconds a call beside a spinning rank: few samples.
            reps = 7 if forced else args.reps or samples_for(case.touched, args.quick)
            records.append(
                measure(report, case, reps, MPI.Wtime, threads=threads, mode="mpi", policy=policy)
            )
    kernels.set_num_threads(None)
    for dest in range(1, comm.size):
        comm.Send(flag, dest=dest, tag=RELEASE_TAG)
    busy = [round(b, 2) for b in comm.gather(None, root=0)[1:]]
    report.record(case="waiting ranks", subject="blocking Recv", ranks=comm.size, cpu_busy=busy)
    print(f"waiting ranks' CPU busy fraction: {busy}")
    return report, records


def targets(report, records):
    """Report the targets, each with its measured value."""

    def find(**keys):
        return [r for r in records if all(r.get(k) == v for k, v in keys.items())]

    for r in find(case="accumulate", size=16 * MI, threads=2, mode="alone"):
        report.target(
            "accumulate 16 Mi float32, 2 threads, speedup", r["speedup"], ">= 1.3", r["noise"]
        )
    for r in find(case="scatter_add", threads=1):
        report.target(
            "scatter_add 50 000 rows vs np.add.at, 1 thread", r["speedup"], ">= 10", r["noise"]
        )
    beside = find(case="accumulate", mode="mpi", policy="default")
    if beside:
        worst = min(beside, key=lambda r: r["speedup"])
        report.target(
            f"accumulate beside a spinning rank, default policy, worst size ({worst['size']})",
            worst["speedup"],
            ">= 1.0",
            worst["noise"],
        )


COLUMNS = (
    "case",
    "mode",
    "policy",
    "size",
    "threads",
    "backend",
    "median",
    "baseline_median",
    "speedup",
)


def main():
    p = _common.parser(__doc__)
    p.add_argument("--mpi", action="store_true", help="rank 0 times beside spinning ranks")
    args = p.parse_args()
    if args.mpi:
        found = beside_spinning_ranks(args)
        if found is None:
            return
        report, records = found
    else:
        if _common.launcher_rank() != 0:
            return  # rank 0 measures alone: see the module docstring
        report = _common.Report(args)
        records = alone(report, args)
    table = _common.Table(
        "case:11 mode:5 policy:7 size:9 thr:3 backend:15 kernel_us:10.1f numpy_us:10.1f "
        "speedup:7.2f",
        note="median us per call; speedup: numpy / kernel",
    )
    for r in records:
        table.row(*(r.get(key) for key in COLUMNS))
    targets(report, records)
    report.close()


if __name__ == "__main__":
    main()
