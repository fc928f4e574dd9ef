"""The benchmarks' harness: timing, statistics, records, tables and plots, written once.

Not a benchmark (``make bench`` runs ``bench_*.py``); each script imports it from its own folder:

- ``prepare`` pins BLAS threads and finds mpigrad, before numpy loads;
- ``interleave`` times subjects against each other in one run: warm-up rounds, then rounds in
  which every subject runs once, in an order rotated by one place per round, so that drift and
  other load fall on all of them alike; ``slowest_rank`` keeps each round's slowest rank;
- ``summary`` gives the median, quartiles and mean of a sample;
- ``Report`` appends one JSON record per measurement, each carrying the run's environment
  (``run_info``), prints tables and target lines, and saves plots where matplotlib is installed.

See README.md in this folder for the method and the output.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import operator
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Environment variables that change what a benchmark measures: threads, allocator, mpigrad, MPI.
ENV_PREFIXES = tuple(
    "OMP_ OPENBLAS_ MKL_ NUMBA_ MALLOC_ GLIBC_ MPIGRAD_ MPIR_CVAR_ OMPI_MCA_ UCX_".split()
)
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
GOALS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


# --- before numpy loads ---------------------------------------------------------------------


def prepare(threads=None):
    """Set BLAS and OpenMP threads (``OMP_``, ``OPENBLAS_``, ``MKL_NUM_THREADS``) to ``threads``,
    or where None to 1 unless the environment sets them, and make ``import mpigrad`` find the
    source tree above this folder where no mpigrad is installed.  Call it before numpy loads.

    One thread is a rank's share when MPI runs one rank per core, and the only setting that
    gives stable numbers on a shared machine: a parallel GEMM waits for its slowest thread.
    """
    for var in THREAD_VARS:
        if threads is None:
            os.environ.setdefault(var, "1")
        else:
            os.environ[var] = str(threads)
    if importlib.util.find_spec("mpigrad") is None:
        sys.path.insert(0, ROOT)


def launcher_rank():
    """This process's rank as the launcher (mpiexec, srun) tells it, without initializing MPI;
    0 outside a launcher."""
    for name in RANK_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdecimal():
            return int(value)
    return 0


def parser(doc, plot=False):
    """The options every benchmark takes (``--quick``, ``--reps``, ``--append``; ``--plot`` and
    ``--no-plot`` where it plots); the first paragraph of ``doc`` describes the script."""
    script = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few sizes and repetitions (make bench)")
    p.add_argument("--reps", type=positive, help="timed repetitions (default: per case)")
    records = os.path.join(RESULTS, f"{script}.jsonl")
    p.add_argument("--append", metavar="FILE", default=records, help="records: %(default)s")
    p.add_argument(
        "--fail-missed",
        action="store_true",
        help="exit 1 if a target is missed by more than its measured noise (make bench)",
    )
    if plot:
        figure = os.path.join(RESULTS, f"{script}.png")
        p.add_argument("--plot", metavar="PATH", default=figure, help="plot: %(default)s")
        p.add_argument("--no-plot", action="store_true", help="write no plot")
    return p


def positive(text):
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# --- timing ---------------------------------------------------------------------------------


def interleave(subjects, reps, warmup=1, clock=time.perf_counter, comm=None):
    """Time ``subjects`` (``{name: callable}``) against each other in one run.

    ``warmup`` rounds, then ``reps`` timed rounds; every round calls each subject once, in an
    order rotated by one place per round.  With ``comm``, each call starts from a barrier.  A
    call that returns a float or a dict of floats measured itself (seconds, or named parts such
    as a forward and a backward each timed from a barrier); whatever else it returns is ignored
    and the call is timed whole with ``clock``.  Minor page faults are counted around each call.

    Returns ``{name: {part: [value per round]}}``: part ``time`` unless the call returned a
    dict, whose keys are the parts then, and part ``faults``.
    """
    names = list(subjects)
    samples = {name: {} for name in names}
    for r in range(warmup + reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if comm is not None:
                comm.Barrier()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            result = subjects[name]()
            elapsed = clock() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            if r < warmup:
                continue
            if not isinstance(result, dict):
                result = {"time": result if isinstance(result, float) else elapsed}
            for part, value in {**result, "faults": faults}.items():
                samples[name].setdefault(part, []).append(value)
    return samples


def slowest_rank(samples, comm):
    """On rank 0, ``interleave``'s samples with each round's largest value over the ranks; None
    elsewhere."""
    everyone = comm.gather(samples, root=0)
    if comm.rank != 0:
        return None
    return {
        name: {part: [max(v) for v in zip(*(s[name][part] for s in everyone))] for part in parts}
        for name, parts in samples.items()
    }


def release_idle(comm, working, poll):
    """Called by every rank after some worked alone: the idle ranks wait in an Ibarrier tested
    every ``poll`` seconds with a sleep between (a rank spinning in a blocking MPI call would
    take the worker's core)."""
    request = comm.Ibarrier()
    if working:
        request.Wait()
    else:
        while not request.Test():
            time.sleep(poll)


def summary(values, scale=1.0):
    """Median, quartiles and mean of ``values`` times ``scale`` (the mean shows rare pauses,
    such as full garbage collections, that the median hides)."""
    values = [v * scale for v in values] * (1 if len(values) > 1 else 2)  # quantiles needs 2
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    stats = {"median": median, "q1": q1, "q3": q3, "mean": statistics.fmean(values)}
    return {key: float(f"{value:.6g}") for key, value in stats.items()}


# --- output ---------------------------------------------------------------------------------


def noise(value, *stats):
    """The noise of ``value``, a ratio or difference of the medians of ``stats`` (summaries), in
    ``value``'s units: ``value`` times the sum of each summary's half interquartile range over its
    median.  For a median alone, pass its summary and the median."""
    return float(f"{value * sum((s['q3'] - s['q1']) / (2 * s['median']) for s in stats):.3g}")


def run_info(comm=None, **flags):
    """What a record needs to be compared with another: the script and its arguments, when, the
    git revision, the host, the Python and library versions, the MPI library, the environment
    variables that change what is measured, whether mpigrad keeps freed memory (mpigrad/memory.py),
    and the script's own ``flags``."""
    mpigrad = sys.modules.get("mpigrad")
    return {
        "script": os.path.basename(sys.argv[0]),
        "argv": sys.argv[1:],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)),
        "ranks": 1 if comm is None else comm.size,
        "python": platform.python_version(),
        "versions": {
            name: version(name) for name in ("mpigrad", "numpy", "numba", "mpi4py", "torch")
        },
        "mpigrad_from": None if mpigrad is None else os.path.dirname(mpigrad.__file__),
        "keep_freed_memory": None if mpigrad is None else mpigrad.memory.kept(),
        "mpi": mpi_library(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        **flags,
    }


def git_revision():
    """The checkout's commit, ``+dirty`` where tracked files changed; None outside git."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", ROOT, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def version(name):
    """The version of package ``name`` (from the module where imported, so that a source tree
    on sys.path counts), or None where it is not installed."""
    module = sys.modules.get(name)
    if getattr(module, "__version__", None):
        return module.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mpi_library():
    """The MPI library's version line where this process uses MPI; None for a rank-local run,
    which leaves MPI uninitialized."""
    mpi = sys.modules.get("mpi4py.MPI")
    return None if mpi is None else mpi.Get_library_version().strip().splitlines()[0]


class Table:
    """A table on stdout, printed row by row under its header.  ``columns`` is one string of
    ``title:spec`` words: ``spec`` is a format spec that starts with the column's width, and an
    underscore in a title prints as a space; a None value prints as ``-``."""

    def __init__(self, columns, note=None):
        self.specs = [word.split(":") for word in columns.split()]
        self.widths = [int(re.match(r"\d+", spec)[0]) for _, spec in self.specs]
        if note:
            print(note)
        titles = (title.replace("_", " ") for title, _ in self.specs)
        print(" ".join(f"{t:>{w}}" for t, w in zip(titles, self.widths)), flush=True)

    def row(self, *values):
        cells = (
            f"{'-':>{width}}" if value is None else f"{value:>{spec}}"
            for value, (_, spec), width in zip(values, self.specs, self.widths)
        )
        print(" ".join(cells), flush=True)


class Panel(NamedTuple):
    """One panel of a plot: ``lines`` is ``{label: (xs, ys)}``; x is on a log-2 scale."""

    xlabel: str
    ylabel: str
    lines: dict
    logy: bool = True
    hline: float | None = None


class Report:
    """Rank 0's output of one run: JSON records appended to ``args.append`` (one line each, the
    run's environment in each; None appends nowhere), target lines and plots.

    ``flags`` are the script's settings that change what it measures; they go into every
    record's ``run``.
    """

    def __init__(self, args, comm=None, **flags):
        self.bench = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        self.path, self.args = args.append, args
        self.run = run_info(comm, quick=args.quick, **flags)
        self.count = 0
        self.missed = []  # targets missed by more than their noise

    def record(self, **fields):
        """Append one record (``bench``, the fields, the 1-minute load average, ``run``) to the
        file, where there is one; returns it."""
        load = round(os.getloadavg()[0], 2)
        record = {"bench": self.bench, **fields, "loadavg": load, "run": self.run}
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.count += 1
        return record

    def target(self, name, value, goal, noise=0.0):
        """Record and print a target (``goal`` as ``"<= 1.25"``), met or not; a target not met
        is ``missed`` when ``value`` is beyond the bound by more than ``noise`` (in ``value``'s
        units: see ``noise()``).  With ``--fail-missed``, ``close`` exits 1 if one was."""
        op, bound = goal.split()
        met = GOALS[op](value, float(bound))
        edge = float(bound) + (-noise if op == ">=" else noise)
        missed = not met and not GOALS[op](value, edge)
        self.record(target=name, value=value, goal=goal, met=met, noise=noise, missed=missed)
        if met:
            verdict = "met"
        else:
            verdict = f"NOT met, {'by more than' if missed else 'within'} the noise +-{noise:.3g}"
        print(f"target: {name}: {value:.3g} (goal {goal}: {verdict})")
        if missed:
            self.missed.append(name)

    def plot(self, title, panels):
        """Write ``panels`` side by side to ``args.plot`` unless ``--no-plot``; prints where."""
        if self.args.no_plot:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("plot: none, matplotlib is not installed (make bench installs it)")
            return
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for label, (xs, ys) in panel.lines.items():
                ax.plot(xs, ys, "o-", label=label)
            if panel.hline is not None:
                ax.axhline(panel.hline, color="0.6", linestyle=":")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log" if panel.logy else "linear")
            ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(textwrap.fill(title, 80 * len(panels)), fontsize=10)  # long titles wrap
        os.makedirs(os.path.dirname(os.path.abspath(self.args.plot)), exist_ok=True)
        fig.tight_layout()
        fig.savefig(self.args.plot, dpi=110)
        plt.close(fig)
        print(f"plot: {self.args.plot}")

    def close(self):
        """Say where the records went; with ``--fail-missed``, exit 1 if a target was missed
        by more than its noise."""
        print(f"records: {self.count} appended to {self.path}")
        if self.missed and self.args.fail_missed:
            print(f"missed by more than the noise: {'; '.join(self.missed)}", flush=True)
            sys.exit(1)
