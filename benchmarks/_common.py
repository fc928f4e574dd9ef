"""Pieces the benchmarks share: quartiles, an idle wait that leaves the core to the worker,
writing a plot, and the line that reports a target.  Not a benchmark; the scripts import it from
their own folder."""

import os
import statistics
import time

__all__ = ["keep_freed_memory", "quartiles", "release_idle", "save_figure", "target_line"]


def keep_freed_memory():
    """Raise glibc's malloc trim and mmap thresholds (``mallopt``) so that freed arrays stay in
    the heap for the next step, rather than going back to the kernel and page-faulting afresh
    (a fresh 8 MiB array costs about 2000 minor faults); True where it applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(
        mallopt(m_trim_threshold, 1 << 30) and mallopt(m_top_pad, 64 << 20)
        and mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest on 64-bit
    )


def quartiles(values):
    """(q1, median, q3) of ``values``."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    return tuple(statistics.quantiles(values, n=4, method="inclusive"))


def release_idle(comm, working, poll):
    """Called by every rank after rank 0 worked alone: the idle ranks wait in an Ibarrier tested
    every ``poll`` seconds with a sleep between (a rank spinning in a blocking MPI call would
    take the worker's core)."""
    request = comm.Ibarrier()
    if working:
        request.Wait()
    else:
        while not request.Test():
            time.sleep(poll)


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (making its folder) and close it; returns the note to print."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def target_line(goal):
    """The stderr line for a target record (``target``, ``value``, ``goal``, ``met``)."""
    verdict = "met" if goal["met"] else "NOT met"
    return f"target: {goal['target']}: {goal['value']} (goal {goal['goal']}: {verdict})"
