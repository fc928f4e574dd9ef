#!/usr/bin/env python3
"""Distributed autograd point to point: mpigrad's send/recv and backward against raw mpi4py.

Exchanges (float64; 8 B to 64 MiB, ``--quick``: 8 B, 64 KiB and 1 MiB):

- ``one-hop``: rank 0 sends its leaf ``x`` to rank 1, whose root is ``(y * w).sum()``;
- ``two-hop``: 0 -> 1 -> 0: rank 1 sends ``y * 2`` back and rank 0's root is ``(u * w).sum()``.

The forward (``dist.send``/``dist.recv``) and the backward (``dist_autograd.backward`` on every
rank) are timed apart, each from a barrier; a round counts the slowest rank.  Baselines, timed
in the same rounds:

- ``raw``: mpi4py ``Send``/``Recv`` ping-pong of the same bytes between buffers allocated once,
  one-way = round trip / 2; ``raw fresh``: the same into a new array each time, as ``recv``
  returns a new tensor;
- ``manual``: the one-hop backward's message and arithmetic written by hand in mpi4py: rank 1
  computes ``w * 1.0`` and ``Send``s it, rank 0 ``Recv``s it into a reused buffer;
- ``local 1``, ``local 2``: the same backward on rank 0 alone with plain mpigrad:
  ``(x * w).sum()`` (one hop) and ``((x * 2) * w).sum()`` (two hops);
- ``floor 2``: the floor of ``local 2``: numpy writing the same gradient in the same two passes
  (``w * 1.0``, then ``* 2.0``) into two buffers it reuses from call to call;
- ``torch``: where torch is installed (``--no-torch`` leaves it out), the one-hop backward in
  ``torch.distributed.autograd`` over its RPC (``_torch_rpc.py``): rank 1 fetches rank 0's
  ``x`` by ``rpc_sync`` in a context and runs the backward of ``(y * w).sum()``, which sends the
  gradient to rank 0 and returns once rank 0 has accumulated it.  It runs after mpigrad's rounds,
  in rounds of its own: while torch's RPC is up, its threads take CPU from whatever runs beside
  them (raw one-way at 8 B went from 5 to 30 us).

Every subject runs again with the same shapes, as a training or time-stepping loop does; warm-up
rounds go untimed, so the times are of the later passes.  Ratios: forward / (hops x raw
one-way); backward / (hops x raw one-way + local backward); ``local 2`` / ``floor 2``.
Targets: the one-hop backward within 1.25x of (raw one-way + local 1) at 64 MiB; under 40 us
at 8 B, and at least 10x faster than torch's there; ``local 2`` within 1.2x of ``floor 2`` at
64 MiB.  Run it also with ranks bound to cores (MPICH's ``-bind-to core``; Open MPI binds by
default): ``make bench`` does at 8 B.  The table shows the minor page faults of a ``local 2``
call (forward and backward), which fresh memory costs.  The plot shows time against size.

``--wait`` measures how a rank waits in ``backward`` instead; run it with more ranks than cores
as well as with 2:

- the latency of an 8-byte one-hop backward 0 -> 1 in which every rank takes part, next to raw
  ping-pong and to the same backward written with MPICH's blocking calls (``Send``, then an
  ``Allreduce`` on every rank standing for the end-of-pass agreement);
- workers (rank 0; then ranks below size/2, so that some cores hold a worker and a waiting rank)
  time a fixed loop of 256 x 256 matmuls while the other ranks wait three ways: in
  ``dist_autograd.backward`` for the workers' gradients, sent after the loop (``mpigrad``); in
  an ``Ibarrier`` tested every 10 ms with a sleep between (``idle``, the baseline: a rank that
  takes no CPU); in MPICH's blocking ``Recv`` (``spin``, which busy-polls).  Target: mpigrad /
  idle <= 1.1.  The busiest waiting rank's CPU share (process time / wall time) is reported.

    mpiexec -n 2 python benchmarks/bench_p2p.py [--quick] [--sizes BYTES ...] [--reps N]
        [--no-torch] [--plot PATH | --no-plot]
    mpiexec -n 4 python benchmarks/bench_p2p.py --wait [--quick]
"""

import sys
import time

import _common
import _torch_rpc

_common.prepare()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import mpigrad as mg  # noqa: E402
import mpigrad.distributed as dist  # noqa: E402
import mpigrad.distributed.autograd as dist_autograd  # noqa: E402

KI, MI = 1 << 10, 1 << 20
SIZES = (8, 64, 512, 4 * KI, 64 * KI, MI, 8 * MI, 64 * MI)  # bytes
QUICK_SIZES = (8, 64 * KI, MI)
TAG = 11
MATMUL_N = 256

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def timed(fn):
    """(fn(), seconds): ``fn`` timed with MPI.Wtime from a barrier."""
    comm.Barrier()
    start = MPI.Wtime()
    result = fn()
    return result, MPI.Wtime() - start


def pingpong(send, recv):
    """Rank 0's one-way time of a Send/Recv round trip with rank 1 (recv() gives the receive
    buffer); 0.0 on the other ranks."""
    start = MPI.Wtime()
    if rank == 0:
        comm.Send([send, MPI.DOUBLE], 1, TAG)
        comm.Recv([recv(), MPI.DOUBLE], 1, TAG)
    elif rank == 1:
        comm.Recv([recv(), MPI.DOUBLE], 0, TAG)
        comm.Send([send, MPI.DOUBLE], 0, TAG)
    return (MPI.Wtime() - start) / 2 if rank == 0 else 0.0


# --- the main mode ----------------------------------------------------------------------------


class Exchange:
    """Arrays and subjects for one size; every subject is called on every rank."""

    def __init__(self, nbytes):
        self.n = max(1, nbytes // 8)
        rng = np.random.default_rng(1)  # the same w on every rank
        self.w_array = rng.standard_normal(self.n)
        self.w = mg.tensor(self.w_array)
        self.x = mg.tensor(rng.standard_normal(self.n), requires_grad=True)
        self.send_buffer = np.ones(self.n)
        self.recv_buffer = np.empty(self.n)
        self.floor_buffers = np.empty(self.n), np.empty(self.n)

    def subjects(self):
        return {
            "raw": lambda: pingpong(self.send_buffer, lambda: self.recv_buffer),
            "raw fresh": lambda: pingpong(self.send_buffer, lambda: np.empty(self.n)),
            "manual": self.manual,
            "local 1": lambda: self.local(1),
            "local 2": lambda: self.local(2.0),
            "floor 2": self.floor,
            "one-hop": self.one_hop,
            "two-hop": self.two_hop,
        }

    def manual(self, check=False):
        """The one-hop backward in mpi4py: grad_y = w * 1.0 on rank 1, sent to rank 0."""
        if rank == 1:
            comm.Send([np.multiply(self.w_array, 1.0), MPI.DOUBLE], 0, TAG)
        elif rank == 0:
            comm.Recv([self.recv_buffer, MPI.DOUBLE], 1, TAG)
            if check:
                assert np.array_equal(self.recv_buffer, self.w_array), "manual: wrong gradient"

    def local(self, factor, check=False):
        """Rank 0's backward of the hops' arithmetic without MPI; 0.0 on the other ranks."""
        if rank != 0:
            return 0.0
        x = self.x
        loss = (x * factor * self.w).sum() if factor != 1 else (x * self.w).sum()  # as the hops
        start = MPI.Wtime()
        loss.backward()
        elapsed = MPI.Wtime() - start
        if check:
            assert np.allclose(x.grad.data, factor * self.w_array), f"local {factor}: wrong grad"
        x.grad = None
        return elapsed

    def floor(self):
        """Rank 0's ``local 2`` gradient in numpy, into reused buffers; 0.0 on the other ranks."""
        if rank != 0:
            return 0.0
        first, grad = self.floor_buffers
        start = MPI.Wtime()
        np.multiply(self.w_array, 1.0, out=first)
        np.multiply(first, 2.0, out=grad)
        return MPI.Wtime() - start

    def one_hop(self, check=False):
        with dist_autograd.context() as context_id:

            def forward():
                if rank == 0:
                    dist.send(self.x, 1)
                elif rank == 1:
                    return dist.recv(0)

            y, fwd = timed(forward)
            roots = [(y * self.w).sum()] if rank == 1 else []
            _, bwd = timed(lambda: dist_autograd.backward(context_id, roots))
            if check:
                self.check(context_id, 1, "one-hop")
        return {"forward": fwd, "backward": bwd}

    def two_hop(self, check=False):
        with dist_autograd.context() as context_id:

            def forward():
                if rank == 0:
                    dist.send(self.x, 1)
                    return dist.recv(1)
                if rank == 1:
                    dist.send(dist.recv(0) * 2.0, 0)

            u, fwd = timed(forward)
            roots = [(u * self.w).sum()] if rank == 0 else []
            _, bwd = timed(lambda: dist_autograd.backward(context_id, roots))
            if check:
                self.check(context_id, 2, "two-hop")
        return {"forward": fwd, "backward": bwd}

    def check(self, context_id, factor, what):
        grads = dist_autograd.get_gradients(context_id)
        if rank == 0:
            assert np.allclose(grads[self.x].data, factor * self.w_array), f"{what}: wrong grad"
        else:
            assert not grads, f"{what}: rank {rank} got gradients {list(grads)}"


def reps_for(nbytes, quick):
    """Timed rounds: about 2**28 bytes per subject (2**24 with --quick), in bounds."""
    if quick:
        return max(7, min(200, (1 << 24) // nbytes))
    return max(25, min(1000, (1 << 28) // nbytes))


def run_size(nbytes, reps):
    """Rank 0: per series (a subject, or its forward or backward), the slowest rank's summary in
    us and median minor page faults; None elsewhere."""
    exchange = Exchange(nbytes)
    exchange.manual(check=True)
    exchange.local(1, check=True)
    exchange.local(2.0, check=True)
    exchange.one_hop(check=True)
    exchange.two_hop(check=True)
    warmup = 3 if nbytes >= MI else 20
    samples = _common.interleave(exchange.subjects(), reps, warmup, MPI.Wtime, comm)
    slowest = _common.slowest_rank(samples, comm)
    if slowest is None:
        return None
    stats = {}
    for name, parts in slowest.items():
        faults = _common.summary(parts.pop("faults"))["median"]
        for part, values in parts.items():
            key = name if part == "time" else f"{name} {part}"
            stats[key] = {**_common.summary(values, 1e6), "faults": faults}
    medians = {key: s["median"] for key, s in stats.items()}
    for key, (baseline, hops, local) in BASELINES.items():
        value = hops * medians["raw"] + (medians[local] if local else 0.0)
        ratio = round(medians[key] / value, 3)
        parts = [k for k in ("raw" if hops else None, local) if k]
        noise = _common.noise(ratio, stats[key], *(stats[k] for k in parts))
        stats[key].update(
            baseline=baseline, baseline_median=round(value, 3), ratio=ratio, noise=noise
        )
    return stats


def torch_one_hop(runs):
    """Rank 0: torch's one-hop backward per size of ``runs`` (``{nbytes: reps}``), the slowest
    rank's summary in us, timed in rounds of its own with torch's RPC up; None elsewhere."""
    _torch_rpc.start(comm)
    found = {}
    for nbytes, reps in runs.items():
        one_hop = _torch_rpc.OneHop(comm, Exchange(nbytes).w_array)
        one_hop(check=True)
        samples = _common.interleave({"torch": one_hop}, reps, 20, MPI.Wtime, comm)
        slowest = _common.slowest_rank(samples, comm)
        if slowest is not None:
            found[nbytes] = _common.summary(slowest["torch"]["time"], 1e6)
    _torch_rpc.stop()
    return found if rank == 0 else None


def compare_with_torch(stats, theirs):
    """Add torch's series to one size's ``stats`` and the ratio to mpigrad's one-hop backward."""
    one_hop = stats["one-hop backward"]
    stats["torch"] = theirs
    faster = round(theirs["median"] / one_hop["median"], 3)
    one_hop.update(torch_median=theirs["median"], faster_than_torch=faster)
    one_hop["torch_noise"] = _common.noise(faster, one_hop, theirs)


# Series: (baseline, the hops of raw one-way and the local series that the baseline adds up).
BASELINES = {
    "local 2": ("floor 2", 0, "floor 2"),
    "raw fresh": ("raw one-way", 1, None),
    "manual": ("raw one-way + local 1", 1, "local 1"),
    "one-hop forward": ("raw one-way", 1, None),
    "one-hop backward": ("raw one-way + local 1", 1, "local 1"),
    "two-hop forward": ("2 x raw one-way", 2, None),
    "two-hop backward": ("2 x raw one-way + local 2", 2, "local 2"),
}
ALONE = ("raw", "raw fresh", "manual", "local 1")  # table columns without a ratio
HOPS = ("one-hop forward", "one-hop backward", "two-hop forward", "two-hop backward")


def main_mode(args):
    if size < 2:
        sys.exit("bench_p2p needs 2 ranks: mpiexec -n 2 python benchmarks/bench_p2p.py")
    dist.init()
    torch = not args.no_torch and _torch_rpc.available(comm)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    runs = {nbytes: args.reps or reps_for(nbytes, args.quick) for nbytes in sizes}
    results = {nbytes: run_size(nbytes, reps) for nbytes, reps in runs.items()}
    theirs = torch_one_hop(runs) if torch else {}
    if rank != 0:
        return
    report = _common.Report(args, comm, torch=torch)
    table = _common.Table(
        "bytes:9 raw:9.1f fresh:9.1f manual:9.1f local_1:9.1f local_2:9.1f x:5.2f "
        "faults:6.0f floor_2:9.1f 1hop_fwd:9.1f x:5.2f 1hop_bwd:9.1f x:5.2f 2hop_fwd:9.1f "
        "x:5.2f 2hop_bwd:9.1f x:5.2f torch:9.1f /1hop:6.1f",
        note="median us, slowest rank; x: ratio to the baseline (local 2: floor 2; hops x "
        "raw one-way, + local n for a backward); faults: minor page faults of a local 2 "
        "call; torch: its one-hop backward (rounds of its own), /1hop: over mpigrad's",
    )
    for nbytes, stats in results.items():
        if nbytes in theirs:
            compare_with_torch(stats, theirs[nbytes])
        for key, s in stats.items():
            report.record(case="p2p", subject=key, bytes=nbytes, reps=runs[nbytes], unit="us", **s)
        local = stats["local 2"]
        local = local["median"], local["ratio"], local["faults"], stats["floor 2"]["median"]
        hops = [stats[key][field] for key in HOPS for field in ("median", "ratio")]
        torch_row = [
            stats["one-hop backward"].get(k) for k in ("torch_median", "faster_than_torch")
        ]
        table.row(nbytes, *(stats[key]["median"] for key in ALONE), *local, *hops, *torch_row)
    if 64 * MI in results:
        s = results[64 * MI]["one-hop backward"]
        name = "one-hop backward at 64 MiB / (raw one-way + local 1)"
        report.target(name, s["ratio"], "<= 1.25", s["noise"])
        s = results[64 * MI]["local 2"]
        name = "local 2 at 64 MiB / floor 2 (numpy, reused buffers)"
        report.target(name, s["ratio"], "<= 1.2", s["noise"])
    if 8 in results:
        s = results[8]["one-hop backward"]
        report.target(
            "one-hop backward at 8 B, us", s["median"], "< 40", _common.noise(s["median"], s)
        )
        if torch:
            name = "one-hop backward at 8 B, torch's over mpigrad's"
            report.target(name, s["faster_than_torch"], ">= 10", s["torch_noise"])
    sizes = list(results)
    lines = {k: (sizes, [results[n][k]["median"] for n in sizes]) for k in ALONE + HOPS}
    budget = [1.25 * results[n]["one-hop backward"]["baseline_median"] for n in sizes]
    lines["target at 64 MiB: 1.25 x (raw + local 1)"] = sizes, budget
    title = f"mpigrad point to point, {size} ranks: forward and backward vs raw mpi4py"
    report.plot(title, [_common.Panel("message size, bytes", "median us, slowest rank", lines)])
    report.close()


# --- --wait: how a rank waits in backward -----------------------------------------------------


def latency(reps):
    """Rank 0: summaries (us) of an 8-byte one-hop backward 0 -> 1 in which every rank takes
    part, raw ping-pong, and the backward by hand with blocking calls; None elsewhere."""
    x = mg.tensor(np.ones(1), requires_grad=True)
    buffer, flags, agreed = np.empty(1), np.zeros(5, np.int64), np.zeros(5, np.int64)

    def manual():
        if rank == 1:
            comm.Send([np.multiply(buffer, 1.0), MPI.DOUBLE], 0, TAG)
        elif rank == 0:
            comm.Recv([buffer, MPI.DOUBLE], 1, TAG)
        comm.Allreduce(flags, agreed, op=MPI.MAX)

    def one_hop():
        with dist_autograd.context() as context_id:
            y = None
            if rank == 0:
                dist.send(x, 1)
            elif rank == 1:
                y = dist.recv(0)
            roots = [y.sum()] if rank == 1 else []
            return timed(lambda: dist_autograd.backward(context_id, roots))[1]

    subjects = {
        "raw": lambda: pingpong(buffer, lambda: buffer),
        "manual": manual,
        "mpigrad": one_hop,
    }
    samples = _common.interleave(subjects, reps, 20, MPI.Wtime, comm)
    slowest = _common.slowest_rank(samples, comm)
    return slowest and {k: _common.summary(s["time"], 1e6) for k, s in slowest.items()}


def compute_loop(a, b, out, count):
    start = MPI.Wtime()
    for _ in range(count):
        np.matmul(a, b, out=out)
    return MPI.Wtime() - start


class Beside:
    """Ranks below ``workers`` compute while the others wait, three ways.

    Every rank calls every variant.  A waiting rank r sends a tensor to worker r % workers, which
    sends its gradient back only after its compute, in ``mpigrad``; in ``spin`` and ``idle`` the
    worker releases it with a message or an ``Ibarrier`` instead.  A variant returns ``time``,
    the compute's seconds on a worker (0 elsewhere), and ``busy``, the CPU share of a waiting
    rank while it waited (0 on a worker).
    """

    def __init__(self, compute_seconds, workers):
        rng = np.random.default_rng(2)
        self.a = rng.standard_normal((MATMUL_N, MATMUL_N))
        self.b = rng.standard_normal((MATMUL_N, MATMUL_N)) / MATMUL_N
        self.out = np.empty_like(self.a)
        self.x = mg.tensor(np.ones(1), requires_grad=True)
        self.flag = np.zeros(1)
        self.workers = workers
        self.worker = rank < workers
        self.waiters = range(workers + rank, size, workers) if self.worker else ()
        per_call = 1.0
        comm.Barrier()
        if self.worker:  # calibrate while the others wait idle (a blocking call would spin)
            compute_loop(self.a, self.b, self.out, 5)
            per_call = compute_loop(self.a, self.b, self.out, 20) / 20
        _common.release_idle(comm, self.worker, 0.01)
        self.count = max(1, round(compute_seconds / comm.allreduce(per_call, op=MPI.MIN)))

    def variants(self):
        return {"idle": self.idle, "mpigrad": self.mpigrad, "spin": self.spin}

    def _compute(self):
        comm.Barrier()
        self.start = time.process_time(), MPI.Wtime()
        return compute_loop(self.a, self.b, self.out, self.count) if self.worker else 0.0

    def _done(self, elapsed):
        cpu, wall = self.start
        busy = (time.process_time() - cpu) / (MPI.Wtime() - wall)
        return {"time": elapsed, "busy": 0.0 if self.worker else busy}

    def idle(self):
        elapsed = self._compute()
        _common.release_idle(comm, self.worker, 0.01)
        return self._done(elapsed)

    def spin(self):
        elapsed = self._compute()
        if self.worker:
            for dest in self.waiters:
                comm.Send([self.flag, MPI.DOUBLE], dest, TAG)
        else:
            comm.Recv([self.flag, MPI.DOUBLE], rank % self.workers, TAG)
        return self._done(elapsed)

    def mpigrad(self):
        with dist_autograd.context() as context_id:
            ys = [dist.recv(source) for source in self.waiters]
            if not self.worker:
                dist.send(self.x, rank % self.workers)
            elapsed = self._compute()
            dist_autograd.backward(context_id, [y.sum() for y in ys])
            return self._done(elapsed)


WAIT_VARIANTS = {
    "idle": "idle in an Ibarrier (a sleep of 10 ms between tests)",
    "mpigrad": "in dist_autograd.backward",
    "spin": "in MPICH's blocking Recv (which spins)",
}


def wait_mode(args):
    if size < 2:
        sys.exit("--wait needs 2 ranks or more: mpiexec -n 4 python benchmarks/bench_p2p.py --wait")
    dist.init()
    lat_reps = args.reps or (100 if args.quick else 1000)
    lat = latency(lat_reps)
    compute_seconds = 0.05 if args.quick else 0.2
    reps = min(args.reps or (5 if args.quick else 15), 50)  # a round computes for about 1 s
    found = {}
    for workers in sorted({1, size // 2}):
        beside = Beside(compute_seconds, workers)
        samples = _common.interleave(beside.variants(), reps, warmup=1)
        found[workers] = beside.count, _common.slowest_rank(samples, comm)
    if rank != 0:
        return
    report = _common.Report(args, comm)
    table = _common.Table(
        "case:10 subject:52 unit:4 median:9.1f q1:9.1f q3:9.1f ratio:6.2f busy:5.2f",
        note=f"{size} ranks on {report.run['cores']} cores. latency: 8 B one-hop backward "
        "0 -> 1 with every rank in the pass (ratio: to the same by hand, a Send and a blocking "
        "Allreduce); n workers: the workers' compute, slowest worker (ratio: to idle; busy: the "
        "busiest waiting rank's CPU share)",
    )
    ratio = round(lat["mpigrad"]["median"] / lat["manual"]["median"], 3)
    rows = [
        ("latency", "raw Send/Recv one-way", lat["raw"], {}),
        ("latency", "by hand: Send + blocking Allreduce", lat["manual"], {}),
        ("latency", "in dist_autograd.backward", lat["mpigrad"], {"ratio": ratio}),
    ]
    goals = []
    for workers, (count, slowest) in found.items():
        stats = {key: _common.summary(slowest[key]["time"], 1e3) for key in WAIT_VARIANTS}
        idle = stats["idle"]["median"]
        work = f"{count} matmuls {MATMUL_N}x{MATMUL_N} float64"
        for key, label in WAIT_VARIANTS.items():
            ratio = round(stats[key]["median"] / idle, 3)
            busy = _common.summary(slowest[key]["busy"])["median"]
            extra = {"ratio": ratio, "cpu_busy": busy, "work": work}
            rows.append((f"{workers} workers", label, stats[key], extra))
        name = f"compute of {workers} worker(s) beside {size - workers} ranks waiting in backward"
        ratio = stats["mpigrad"]["median"] / idle
        noise = _common.noise(ratio, stats["mpigrad"], stats["idle"])
        goals.append((f"{name} / idle", ratio, "<= 1.1", noise))
    for case, subject, st, extra in rows:
        unit = "us" if case == "latency" else "ms"
        report.record(case=case, subject=subject, unit=unit, **st, **extra)
        ratio, busy = extra.get("ratio"), extra.get("cpu_busy")
        table.row(case, subject, unit, st["median"], st["q1"], st["q3"], ratio, busy)
    for goal in goals:
        report.target(*goal)
    report.close()


def main():
    p = _common.parser(__doc__, plot=True)
    p.add_argument(
        "--wait",
        action="store_true",
        help="how a waiting rank behaves (run with more ranks than cores)",
    )
    p.add_argument(
        "--sizes", type=_common.positive, nargs="+", help="message sizes in bytes (multiples of 8)"
    )
    p.add_argument("--no-torch", action="store_true", help="leave torch out even where installed")
    args = p.parse_args()
    if args.sizes and any(n % 8 for n in args.sizes):
        p.error("--sizes: multiples of 8 bytes")
    (wait_mode if args.wait else main_mode)(args)


if __name__ == "__main__":
    main()
