#!/usr/bin/env python3
"""Rank-local engine: mpigrad's forward + backward against torch CPU eager and hand-written numpy.

Cases (one sample = one forward and one backward pass, the gradients set to None after it):

- ``chain``: 1000 elementwise ops on a 1-element float64 tensor, cycling ``y * c``, ``sin(y)``,
  ``y + c``: the per-op overhead of recording and running a node.  Baseline: torch, the same
  chain.  Reported per op; target ratio <= 1.0.
- ``fanin``: 1000 binary ops ``y * x``, ``y + x`` with one leaf ``x``: every op also sends a
  gradient to ``x``, so 1000 gradients fan in to one input.  Baseline: torch.
- ``mlp``: 784-512-512-10, float64, batch 128, relu, cross-entropy (mean) on integer targets.
  Baselines: the same network in numpy with its backward derived by hand (the compute floor:
  the same matmuls, bias adds and sums, relu masks, log-softmax and NLL, nothing more), and
  torch.  Target ratio mpigrad / numpy <= 1.10.

Method, as mpi4py's demo/osu_bw.py: warm-up, then a timed loop (time.perf_counter) in which the
subjects take turns, in an order rotated every repetition so drift and noise fall on all of them
alike; medians (and quartiles; the mean shows rare pauses such as full garbage collections) of
the samples.  The gradients of every subject are checked once against a reference before timing,
so the benchmark cannot time a wrong computation.  The garbage collector stays on, as in user
code (``--no-gc`` turns it off while timing, to measure its share).

Memory: on glibc the benchmark first raises malloc's trim and mmap thresholds (``mallopt``), so
that freed arrays stay in the heap for the next step.  Otherwise whether glibc hands the heap top
back to the kernel after a step depends on what ran before, and a step that gets it back
page-faults its ~8 MiB of arrays afresh: measured, the numpy MLP step took 8.2 ms in one run and
11.7 ms (2050 minor faults per step) in another.  ``--no-mallopt`` keeps glibc's defaults;
``faults`` in the output is the median count of minor page faults per sample.

Threads: one count for every library, ``--threads`` (default 1), set in OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS before numpy loads, in ``torch.set_num_threads`` and in
``mpigrad.kernels.set_num_threads``.  The default is 1, a rank's share when MPI runs one rank per
core, and the only setting that gives stable numbers on a small shared machine: a parallel GEMM
waits for its slowest thread, so any other busy process stalls it (measured on 2 shared cores,
2 OpenBLAS threads: numpy MLP step min 4.7 ms, median 14 ms, 90th percentile 145 ms), and with
more than one thread torch's OpenMP pool and numpy's OpenBLAS pool spin after each call and take
each other's cores.  ``--threads N`` measures N threads: give it a quiet machine, and add
``--no-torch`` for a clean mpigrad / numpy ratio.

Output: one JSON line per case on stdout (times in ``unit``; ``ratio`` = mpigrad / baseline),
a table on stderr.  torch is optional (``make torch``): without it the torch columns are null and
the chain cases report mpigrad's absolute time per op.  ``--profile CASE`` runs only mpigrad's
side of CASE under cProfile and prints where the time goes.

The engine is rank-local, so under mpiexec (``make bench``) rank 0 measures and the other ranks
exit at once without initializing MPI: a rank waiting in a barrier busy-polls a core that the
measured rank's BLAS threads need.

    python benchmarks/bench_engine.py [--quick] [--threads N] [--cases chain fanin mlp]
        [--reps N] [--ops N] [--no-torch] [--no-gc] [--no-mallopt] [--profile CASE]
"""

import argparse
import os
import sys

CASES = ("chain", "fanin", "mlp")
LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repetitions (CI: a few seconds)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS, OpenMP, torch and mpigrad kernel threads (default 1)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per subject")
    p.add_argument("--ops", type=int, default=1000, help="ops in the chain and fanin cases")
    p.add_argument("--no-torch", action="store_true", help="skip torch even where installed")
    p.add_argument("--no-gc", action="store_true", help="garbage collector off while timing")
    p.add_argument("--no-mallopt", action="store_true", help="keep glibc's malloc thresholds")
    p.add_argument("--profile", choices=CASES, default=None,
                   help="run mpigrad's side of one case under cProfile instead of timing")
    args = p.parse_args(argv)
    for name in ("threads", "reps", "ops"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be positive, got {value}")
    return args


def launcher_rank():
    for name in LAUNCHER_RANK_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdecimal():
            return int(value)
    return 0


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    if launcher_rank() != 0:
        sys.exit(0)  # see the module docstring: rank 0 measures alone
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)  # before numpy (and torch) load their BLAS


from _common import keep_freed_memory  # noqa: E402

MALLOPT = ARGS is not None and not ARGS.no_mallopt and keep_freed_memory()

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    import mpigrad as mg
except ImportError:  # run from a source tree: benchmarks/ sits next to mpigrad/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mpigrad as mg

perf_counter = time.perf_counter

# --- workloads ------------------------------------------------------------------------------
# The chain drivers are shared by mpigrad and torch: both Tensor types take the same Python
# code, so the loop's own cost is the same on both sides.

MUL_C, ADD_C, CHAIN_X0 = 1.1, 0.1, 0.3
FANIN_X, FANIN_Y0 = 0.5, 0.3


def run_chain(y, n):
    """``n`` ops: y * c, sin(y), y + c, repeated."""
    for i in range(n):
        k = i % 3
        if k == 0:
            y = y * MUL_C
        elif k == 1:
            y = y.sin()
        else:
            y = y + ADD_C
    return y


def run_fanin(y, x, n):
    """``n`` ops: y * x, y + x, repeated; each sends a gradient to ``x``."""
    for i in range(n):
        y = y * x if i % 2 == 0 else y + x
    return y


def chain_reference(n):
    """(y, dy/dy0) of run_chain, by forward-mode differentiation in Python floats."""
    y, d = CHAIN_X0, 1.0
    for i in range(n):
        k = i % 3
        if k == 0:
            y, d = y * MUL_C, d * MUL_C
        elif k == 1:
            y, d = math.sin(y), d * math.cos(y)
        else:
            y = y + ADD_C
    return y, d


def fanin_reference(n):
    """(y, dy/dx) of run_fanin with y0 a constant."""
    x, y, d = FANIN_X, FANIN_Y0, 0.0
    for i in range(n):
        if i % 2 == 0:
            y, d = y * x, d * x + y
        else:
            y, d = y + x, d + 1.0
    return y, d


class Chain:
    """Subjects of the chain (or fanin) case: callables returning (forward s, backward s)."""

    def __init__(self, case, n, torch):
        self.case, self.n, self.torch = case, n, torch

    def mpigrad_subject(self):
        n = self.n
        if self.case == "chain":
            leaf = mg.tensor(np.array([CHAIN_X0]), requires_grad=True)

            def forward():
                return run_chain(leaf, n)
        else:
            leaf = mg.tensor(np.array([FANIN_X]), requires_grad=True)
            y0 = mg.tensor(np.array([FANIN_Y0]))

            def forward():
                return run_fanin(y0, leaf, n)

        return _sample([leaf], forward, lambda y: (_first(y), _first(leaf.grad)))

    def torch_subject(self):
        torch, n = self.torch, self.n
        if self.case == "chain":
            leaf = torch.tensor([CHAIN_X0], dtype=torch.float64, requires_grad=True)

            def forward():
                return run_chain(leaf, n)
        else:
            leaf = torch.tensor([FANIN_X], dtype=torch.float64, requires_grad=True)
            y0 = torch.tensor([FANIN_Y0], dtype=torch.float64)

            def forward():
                return run_fanin(y0, leaf, n)

        return _sample([leaf], forward, lambda y: (_first(y), _first(leaf.grad)))

    def check(self, subjects):
        y_ref, d_ref = (chain_reference if self.case == "chain" else fanin_reference)(self.n)
        for name, sample in subjects.items():
            y, grad = sample.value()
            check_close(f"{self.case} {name}: output", y, y_ref)
            check_close(f"{self.case} {name}: gradient", grad, d_ref)


class MLP:
    """Subjects of the mlp case, all on the same weights and batch."""

    def __init__(self, torch, sizes=(784, 512, 512, 10), batch=128, seed=0):
        rng = np.random.default_rng(seed)
        self.sizes, self.batch, self.torch = sizes, batch, torch
        self.x = rng.standard_normal((batch, sizes[0]))
        self.targets = rng.integers(0, sizes[-1], batch)
        self.params = []  # W1, b1, W2, b2, W3, b3 (He init)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self.params.append(rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in))
            self.params.append(rng.standard_normal(fan_out) * 0.1)

    # numpy: forward, and the backward derived by hand ----------------------------------------
    def numpy_step(self):
        """(loss, grads, forward s, backward s)."""
        W1, b1, W2, b2, W3, b3 = self.params
        x, t = self.x, self.targets
        n = x.shape[0]
        rows = np.arange(n)
        t0 = perf_counter()
        z1 = x @ W1 + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ W2 + b2
        h2 = np.maximum(z2, 0)
        z3 = h2 @ W3 + b3
        shifted = z3 - z3.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[rows, t].mean()
        t1 = perf_counter()
        dz3 = np.exp(logp)  # softmax
        dz3[rows, t] -= 1.0
        dz3 /= n
        dW3 = h2.T @ dz3
        db3 = dz3.sum(axis=0)
        dz2 = (dz3 @ W3.T) * (z2 > 0)
        dW2 = h1.T @ dz2
        db2 = dz2.sum(axis=0)
        dz1 = (dz2 @ W2.T) * (z1 > 0)
        dW1 = x.T @ dz1
        db1 = dz1.sum(axis=0)
        t2 = perf_counter()
        return loss, (dW1, db1, dW2, db2, dW3, db3), t1 - t0, t2 - t1

    def numpy_subject(self):
        def sample():
            return self.numpy_step()[2:]

        def value():
            loss, grads, _, _ = self.numpy_step()
            return loss, grads

        sample.value = value
        return sample

    # mpigrad -----------------------------------------------------------------------------------
    def mpigrad_subject(self):
        params = [mg.tensor(p, requires_grad=True) for p in self.params]
        x = mg.tensor(self.x)
        targets = self.targets

        def forward():
            W1, b1, W2, b2, W3, b3 = params
            h = mg.relu(x @ W1 + b1)
            h = mg.relu(h @ W2 + b2)
            return mg.cross_entropy(h @ W3 + b3, targets)

        return _sample(params, forward, lambda loss: (
            float(loss.detach().numpy()), [p.grad.detach().numpy().copy() for p in params]
        ))

    # torch -------------------------------------------------------------------------------------
    def torch_subject(self):
        torch = self.torch
        F = torch.nn.functional
        params = [torch.tensor(p, requires_grad=True) for p in self.params]
        x = torch.from_numpy(self.x)
        targets = torch.from_numpy(self.targets)

        def forward():
            W1, b1, W2, b2, W3, b3 = params
            h = torch.relu(x @ W1 + b1)
            h = torch.relu(h @ W2 + b2)
            return F.cross_entropy(h @ W3 + b3, targets)

        return _sample(params, forward, lambda loss: (
            float(loss.detach().numpy()), [p.grad.detach().numpy().copy() for p in params]
        ))

    def check(self, subjects):
        loss_ref, grads_ref = subjects["numpy"].value()
        names = ("W1", "b1", "W2", "b2", "W3", "b3")
        for name, sample in subjects.items():
            if name == "numpy":
                continue
            loss, grads = sample.value()
            check_close(f"mlp {name}: loss", loss, loss_ref)
            for pname, g, g_ref in zip(names, grads, grads_ref):
                check_close(f"mlp {name}: grad {pname}", g, g_ref)


def _sample(params, forward, read):
    """A subject: ``sample()`` times one forward and one backward (seconds each) and
    ``sample.value()`` returns ``read(output)`` after one; both leave the params' .grad None."""

    def clear():
        for p in params:
            p.grad = None

    def sample():
        t0 = perf_counter()
        out = forward()
        t1 = perf_counter()
        out.backward()
        t2 = perf_counter()
        clear()
        return t1 - t0, t2 - t1

    def value():
        out = forward()
        out.backward()
        result = read(out)
        clear()
        return result

    sample.value = value
    return sample


def _first(t):
    """The first element of a Tensor (mpigrad's or torch's) as a float."""
    return float(t.detach().numpy()[0])


def check_close(what, got, want, rtol=1e-10):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=rtol * scale):
        err = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        raise SystemExit(f"bench_engine: {what} differs from the reference (max abs err {err})")


# --- timing ---------------------------------------------------------------------------------

def measure(subjects, reps, warmup, collect=True):
    """Samples (forward s, backward s, minor page faults) per subject; the subjects take turns,
    in an order rotated every repetition.  ``collect=False``: no garbage collection meanwhile."""
    names = list(subjects)
    samples = {name: [] for name in names}
    gc.collect()
    if not collect:
        gc.disable()
    try:
        for r in range(warmup + reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                fwd, bwd = subjects[name]()
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                if r >= warmup:
                    samples[name].append((fwd, bwd, faults))
    finally:
        gc.enable()
    return samples


def summarize(samples, scale):
    """Median, quartiles, min and mean of forward+backward, medians of each part (times
    ``scale``), and the median count of minor page faults."""
    total = sorted((f + b) * scale for f, b, _ in samples)
    q = statistics.quantiles(total, n=4) if len(total) > 1 else [total[0]] * 3
    return {
        "median": statistics.median(total),
        "p25": q[0],
        "p75": q[2],
        "min": total[0],
        "mean": statistics.fmean(total),
        "fwd": statistics.median(f * scale for f, _, _ in samples),
        "bwd": statistics.median(b * scale for _, b, _ in samples),
        "faults": statistics.median(n for _, _, n in samples),
    }


def ratio(stats, subject, baseline):
    if stats.get(subject) is None or stats.get(baseline) is None:
        return None
    return stats[subject]["median"] / stats[baseline]["median"]


# --- cases ----------------------------------------------------------------------------------

def case_chain(case, args, torch, env):
    bench = Chain(case, args.ops, torch)
    subjects = {"mpigrad": bench.mpigrad_subject()}
    if torch is not None:
        subjects["torch"] = bench.torch_subject()
    bench.check(subjects)
    reps = args.reps or (7 if args.quick else 200)
    samples = measure(subjects, reps, 2 if args.quick else 10, collect=not args.no_gc)
    scale = 1e6 / args.ops  # microseconds per op
    stats = {name: summarize(s, scale) for name, s in samples.items()}
    stats.setdefault("torch", None)
    return {
        "bench": "engine", "case": case, "unit": "us/op", "ops": args.ops, "dtype": "float64",
        "shape": [1], "reps": reps, **stats, "baseline": "torch",
        "ratio": ratio(stats, "mpigrad", "torch"), "target": 1.0, **env,
    }


def case_mlp(args, torch, env):
    bench = MLP(torch)
    subjects = {"mpigrad": bench.mpigrad_subject(), "numpy": bench.numpy_subject()}
    if torch is not None:
        subjects["torch"] = bench.torch_subject()
    bench.check(subjects)
    reps = args.reps or (7 if args.quick else 150)
    samples = measure(subjects, reps, 2 if args.quick else 10, collect=not args.no_gc)
    stats = {name: summarize(s, 1e3) for name, s in samples.items()}
    stats.setdefault("torch", None)
    return {
        "bench": "engine", "case": "mlp", "unit": "ms", "sizes": list(bench.sizes),
        "batch": bench.batch, "dtype": "float64", "reps": reps, **stats, "baseline": "numpy",
        "ratio": ratio(stats, "mpigrad", "numpy"),
        "ratio_torch": ratio(stats, "mpigrad", "torch"), "target": 1.10, **env,
    }


def profile(case, args, torch):
    import cProfile
    import pstats

    if case == "mlp":
        sample = MLP(torch).mpigrad_subject()
    else:
        sample = Chain(case, args.ops, torch).mpigrad_subject()
    reps = args.reps or (5 if args.quick else 100)
    for _ in range(5):
        sample()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        sample()
    prof.disable()
    print(f"== cProfile of mpigrad, case {case}, {reps} samples (forward + backward)",
          file=sys.stderr)
    stats = pstats.Stats(prof, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)


# --- output ---------------------------------------------------------------------------------

def table(rows, env):
    v = env["versions"]
    out = [
        f"mpigrad engine benchmark: threads={env['threads']} (BLAS, OpenMP, torch, kernels), "
        f"gc {'on' if env['gc'] else 'off'}, mallopt {'on' if env['mallopt'] else 'off'}, "
        f"numpy {v['numpy']}, torch {v['torch'] or 'absent'}, python {v['python']}, "
        f"mpigrad {v['mpigrad']} from {os.path.dirname(mg.__file__)}",
        "times: forward + backward per sample (fwd, bwd: medians of each part); faults: minor "
        "page faults per sample",
        f"{'case':<7}{'subject':<9}{'unit':>6}{'median':>9}{'p25':>9}{'p75':>9}{'mean':>9}"
        f"{'fwd':>9}{'bwd':>9}{'faults':>7}{'ratio':>7}",
    ]
    for row in rows:
        base = row["baseline"]
        for name in ("mpigrad", "numpy", "torch"):
            s = row.get(name)
            if name not in row:
                continue
            if s is None:
                out.append(f"{row['case']:<7}{name:<9}{'':>6}{'(not run)':>9}")
                continue
            r = s["median"] / row[base]["median"] if row.get(base) else None
            out.append(
                f"{row['case']:<7}{name:<9}{row['unit']:>6}{s['median']:>9.3f}{s['p25']:>9.3f}"
                f"{s['p75']:>9.3f}{s['mean']:>9.3f}{s['fwd']:>9.3f}{s['bwd']:>9.3f}"
                f"{s['faults']:>7.0f}{'' if r is None else f'{r:.2f}':>7}"
            )
        if row["ratio"] is not None:
            verdict = "meets" if row["ratio"] <= row["target"] else "MISSES"
            out.append(f"{'':<7}ratio mpigrad/{base} = {row['ratio']:.3f} ({verdict} target "
                       f"<= {row['target']:.2f}, {row['reps']} reps, medians)")
    print("\n".join(out), file=sys.stderr)


def main(args):
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
    from mpigrad import kernels

    kernels.set_num_threads(args.threads)
    env = {
        "threads": args.threads, "gc": not args.no_gc, "mallopt": MALLOPT, "quick": args.quick,
        "versions": {
            "python": platform.python_version(), "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__, "mpigrad": mg.__version__,
        },
    }
    if args.profile:
        profile(args.profile, args, torch)
        return
    rows = []
    for case in args.cases:
        gc.collect()
        if case == "mlp":
            row = case_mlp(args, torch, env)
        else:
            row = case_chain(case, args, torch, env)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table(rows, env)


if __name__ == "__main__":
    main(ARGS)
