#!/usr/bin/env python3
"""mpigrad.kernels against the NumPy code they replace, alone and beside a spinning MPI rank.

Configurations (float32):

- ``accumulate``: ``kernels.accumulate(dst, src)`` vs ``np.add(dst, src, out=dst)``, sizes 64 Ki,
  1 Mi, 4 Mi and 16 Mi elements, on 1 and 2 threads (``kernels.set_num_threads``).
- ``sum_into``: ``kernels.sum_into(dst, srcs)`` of 4 sources vs a loop of ``np.add(out=)``.
- ``scatter_add``: 50 000 rows of 16 into 10 000 rows vs ``np.add.at``.
- ``--mpi`` (under ``mpiexec -n 2`` or more): ranks 1.. wait in a blocking ``comm.Recv``, which
  MPICH busy-polls, while rank 0 times ``accumulate`` with the default thread policy (and, to
  show what the policy avoids, with 2 threads forced); then rank 0 releases them.

Method, as mpi4py's demo/osu_bw.py: warm-up (which also compiles), a check that kernel and
baseline computed the same array, then a timed loop (``time.perf_counter``; ``MPI.Wtime`` under
--mpi) in which they take turns, one call per sample; medians and quartiles. The two subjects
also trade output arrays from sample to sample: timing np.add against itself on two arrays
allocated alike gave ratios from 0.96 to 1.01 at 4 Mi elements, from where the arrays lie alone.
``speedup`` is baseline median / kernel median: above 1, the kernel is faster. ``loadavg``
(1-minute, taken after the samples) tells whether other processes shared the node: a parallel
call stalls for milliseconds when one does (see Note [kernel threads] in kernels/threads.py),
so the 2-thread figures mean something only on an otherwise idle node.

Output: one JSON line per configuration on stdout, then one per target (``"target"``, measured
``value``, ``goal``, ``met``): targets are reported, not asserted. A table goes to stderr.
Without --mpi, ranks other than 0 exit at once (without initializing MPI), so that rank 0 has
the node to itself; --quick times fewer samples of two sizes (64 Ki and 1 Mi).

    python benchmarks/bench_kernels.py [--quick]
    mpiexec -n 2 python benchmarks/bench_kernels.py --mpi [--quick]
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np

try:
    from mpigrad import kernels
except ImportError:  # run from a source tree: benchmarks/ sits next to mpigrad/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mpigrad import kernels
from _common import target_line  # noqa: E402

KI, MI = 1 << 10, 1 << 20
SIZES = (64 * KI, MI, 4 * MI, 16 * MI)
QUICK_SIZES = (64 * KI, MI)
SCATTER_ROWS, SCATTER_COLUMNS, SCATTER_DST_ROWS = 50_000, 16, 10_000
LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
RELEASE_TAG = 7


class Case(NamedTuple):
    """One configuration: the two subjects, a check that they agree, and the record's fields."""

    kernel: object  # (dst) -> None
    baseline: object  # (dst) -> None
    outputs: tuple  # two equal dst arrays; the subjects take turns on each
    touched: int  # elements read or written by one call, to size the sample count
    fields: dict


def aligned(values):
    """A copy of ``values`` whose data starts on a 64-byte boundary.

    Both subjects get arrays aligned alike: measured here, np.add on 64 Ki float32 takes 2.9 to
    4.0 us depending on the alignment alone.
    """
    raw = np.empty(values.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def zeros(shape):
    return aligned(np.zeros(shape, np.float32))


def accumulate_case(size, rng):
    src = aligned(rng.standard_normal(size, dtype=np.float32))
    outputs = zeros(size), zeros(size)
    return Case(
        lambda dst: kernels.accumulate(dst, src),
        lambda dst: np.add(dst, src, out=dst),
        outputs,
        2 * size,
        {"bench": "accumulate", "size": size, "backend": kernels.backend(outputs[0], src),
         "baseline": "np.add(dst, src, out=dst)"},
    )  # fmt: skip


def sum_into_case(size, rng):
    srcs = [aligned(rng.standard_normal(size, dtype=np.float32)) for _ in range(4)]
    outputs = zeros(size), zeros(size)

    def numpy_loop(dst):
        for src in srcs:
            np.add(dst, src, out=dst)

    return Case(
        lambda dst: kernels.sum_into(dst, srcs),
        numpy_loop,
        outputs,
        5 * size,
        {"bench": "sum_into", "size": size, "sources": 4,
         "backend": kernels.backend(outputs[0], *srcs),
         "baseline": "for s in srcs: np.add(dst, s, out=dst)"},
    )  # fmt: skip


def scatter_case(rng):
    index = rng.integers(-SCATTER_DST_ROWS, SCATTER_DST_ROWS, SCATTER_ROWS)
    src = aligned(rng.standard_normal((SCATTER_ROWS, SCATTER_COLUMNS), dtype=np.float32))
    outputs = zeros((SCATTER_DST_ROWS, SCATTER_COLUMNS)), zeros((SCATTER_DST_ROWS, SCATTER_COLUMNS))
    return Case(
        lambda dst: kernels.scatter_add(dst, index, src),
        lambda dst: np.add.at(dst, index, src),
        outputs,
        2 * src.size,
        {"bench": "scatter_add", "size": src.size,
         "backend": kernels.backend(outputs[0], index, src),
         "shape": f"{SCATTER_ROWS}x{SCATTER_COLUMNS} -> {SCATTER_DST_ROWS}x{SCATTER_COLUMNS}",
         "baseline": "np.add.at(dst, index, src)"},
    )  # fmt: skip


def samples_for(touched, quick):
    """Samples per subject: about 2**30 elements touched (2**26 with --quick), in [7, 1000]."""
    if quick:
        return max(7, min(100, (1 << 26) // touched))
    return max(7, min(1000, (1 << 30) // touched))


def measure(case, samples, clock, **fields):
    """Warm up, check, then time ``case``'s subjects in turn; return the record."""
    subjects, (ours, theirs) = (case.kernel, case.baseline), case.outputs
    for _ in range(3):
        case.kernel(ours)
        case.baseline(theirs)
    assert np.array_equal(ours, theirs), f"{case.fields['bench']}: kernel and baseline disagree"
    times = ([], [])
    for i in range(samples):
        # Every combination of order and output array, equally often (see the docstring).
        dsts = case.outputs if i % 4 < 2 else case.outputs[::-1]
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            start = clock()
            subjects[j](dsts[j])
            times[j].append(clock() - start)
    (k1, k2, k3), (b1, b2, b3) = (statistics.quantiles(t, n=4) for t in times)
    return {
        **case.fields, **fields, "dtype": "float32", "samples": samples, "unit": "us",
        "median": k2 * 1e6, "q1": k1 * 1e6, "q3": k3 * 1e6,
        "baseline_median": b2 * 1e6, "baseline_q1": b1 * 1e6, "baseline_q3": b3 * 1e6,
        "speedup": b2 / k2, "loadavg": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def alone(quick):
    """Every configuration, on 1 then 2 threads, in a process with the node to itself."""
    rng = np.random.default_rng(0)
    records = []
    for threads in (1, 2):
        kernels.set_num_threads(threads)
        cases = [make(size, rng) for size in (QUICK_SIZES if quick else SIZES)
                 for make in (accumulate_case, sum_into_case)] + [scatter_case(rng)]  # fmt: skip
        for case in cases:
            samples = samples_for(case.touched, quick)
            records.append(measure(case, samples, time.perf_counter, threads=threads, mode="alone"))
    kernels.set_num_threads(None)
    return records


def beside_spinning_ranks(quick):
    """Rank 0 times accumulate while the other ranks spin in Recv; returns rank 0's records."""
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
        return []
    rng = np.random.default_rng(0)
    records = []
    for policy, forced in (("default", None), ("forced", 2)):
        kernels.set_num_threads(forced)
        threads = kernels.get_num_threads()
        for size in QUICK_SIZES if quick else SIZES:
            case = accumulate_case(size, rng)
            # Forced threads stall for milliseconds a call: few samples.
            samples = 7 if forced else samples_for(case.touched, quick)
            records.append(
                measure(case, samples, MPI.Wtime, threads=threads, mode="mpi", policy=policy)
            )
    kernels.set_num_threads(None)
    for dest in range(1, comm.size):
        comm.Send(flag, dest=dest, tag=RELEASE_TAG)
    busy = [round(b, 2) for b in comm.gather(None, root=0)[1:]]
    for record in records:
        record.update(ranks=comm.size, waiting_ranks_cpu_busy=busy)
    return records


def targets(records):
    """The targets this benchmark reports, each with its measured value."""

    def find(**keys):
        return [r for r in records if all(r.get(k) == v for k, v in keys.items())]

    found = [
        ("accumulate 16 Mi float32, 2 threads, process alone", ">= 1.3", r["speedup"])
        for r in find(bench="accumulate", size=16 * MI, threads=2, mode="alone")
    ] + [
        ("scatter_add 50 000 rows vs np.add.at, 1 thread", ">= 10", r["speedup"])
        for r in find(bench="scatter_add", threads=1)
    ]
    beside = find(bench="accumulate", mode="mpi", policy="default")
    if beside:
        worst = min(beside, key=lambda r: r["speedup"])
        found.append(
            (f"accumulate beside a spinning rank, default policy, worst size ({worst['size']})",
             ">= 1.0", worst["speedup"])
        )  # fmt: skip
    return [
        {"target": name, "goal": goal, "value": round(value, 3),
         "met": value >= float(goal.split()[1])}
        for name, goal, value in found
    ]  # fmt: skip


def table(records, goals):
    lines = [f"{'bench':<12}{'mode':<6}{'policy':<8}{'size':>9}{'thr':>4}  {'backend':<15}"
             f"{'kernel us':>11}{'numpy us':>11}{'speedup':>8}"]  # fmt: skip
    for r in records:
        lines.append(
            f"{r['bench']:<12}{r['mode']:<6}{r.get('policy', '-'):<8}{r['size']:>9}"
            f"{r['threads']:>4}  {r['backend']:<15}{r['median']:>11.1f}"
            f"{r['baseline_median']:>11.1f}{r['speedup']:>8.2f}"
        )
    if records and "waiting_ranks_cpu_busy" in records[0]:
        lines.append(f"waiting ranks' CPU busy fraction: {records[0]['waiting_ranks_cpu_busy']}")
    lines += [target_line(g) for g in goals]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples, 64 Ki and 1 Mi only")
    p.add_argument("--mpi", action="store_true", help="rank 0 times beside spinning ranks")
    args = p.parse_args(argv)
    if args.mpi:
        records = beside_spinning_ranks(args.quick)
        if not records:
            return
    else:
        rank = next((os.environ[v] for v in LAUNCHER_RANK_VARS if v in os.environ), "0")
        if rank.strip() != "0":
            return  # rank 0 measures alone: see the module docstring
        records = alone(args.quick)
    goals = targets(records)
    for line in records + goals:
        print(json.dumps(line), flush=True)
    print(table(records, goals), file=sys.stderr)


if __name__ == "__main__":
    main()
