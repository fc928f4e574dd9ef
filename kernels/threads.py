"""Thread policy for the Numba CPU kernels.

Note [kernel threads]
A parallel Numba call wakes worker threads. When another process spins on the remaining cores (an
MPI rank waiting in a blocking ``Recv`` does), those threads wait for a time slice: measured on a
2-core machine, a 64 Ki-element accumulate that takes 7 us alone took 5.9 ms. So the kernels use
threads only where the process has cores to itself, and only for large arrays:

- the thread count is the last ``set_num_threads(n)``, else ``MPIGRAD_NUM_THREADS`` when set,
  else ``max(1, usable cores // ranks sharing them)``; usable cores are this process's CPU
  affinity; the ranks sharing them are those whose affinity meets it, this process's included,
  once ``mpigrad.distributed`` has gathered every rank's on the node (``set_sharing``), else the
  launcher's count of ranks on this node (``LOCAL_SIZE_VARS``, first one set wins), which takes
  ranks bound each to cores of their own for ranks sharing them;
- the parallel kernel runs only when that count is above 1 and the call's largest array has at
  least ``dispatch.PARALLEL_MIN_SIZE`` elements; otherwise a serial path runs.

Under a 2-rank job on 2 cores the policy gives 1 thread, so ranks never stall each other. The
policy sees only the launcher: a process whose cores are busy with other jobs stalls the same
way (on a 2-core VM, a 1 Mi-element accumulate on 2 threads took 3 to 15 ms instead of 60 us
while another job ran), so set ``MPIGRAD_NUM_THREADS=1`` on a shared node. The thread count never
changes a result: see Note [deterministic chunks] in ``cpu.py``.
"""

import os

__all__ = [
    "LOCAL_SIZE_VARS",
    "default_num_threads",
    "get_num_threads",
    "local_ranks",
    "set_num_threads",
    "set_sharing",
]

LOCAL_SIZE_VARS = (
    "MPI_LOCALNRANKS",  # MPICH and Intel MPI (hydra)
    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI
    "SLURM_NTASKS_PER_NODE",  # Slurm, with --ntasks-per-node
    "SLURM_STEP_TASKS_PER_NODE",  # Slurm srun, per node: "4" or "2(x3),1"
    "PMI_SIZE",  # any PMI launcher: the world size, an upper bound on ranks per node
)
"""Launcher variables that give the number of ranks on this node, most precise first."""

_num_threads = None  # set by set_num_threads; None: the policy's
_policy_threads = None  # the policy's count, found on first use
_sharing = None  # set by set_sharing; None: the launcher's count of ranks on the node


def local_ranks(environ):
    """Ranks on this node according to the launcher variables in ``environ`` (1 if none is set).

    The first variable of ``LOCAL_SIZE_VARS`` that holds a count wins; a Slurm per-node list such
    as ``"2(x3),1"`` counts as its largest entry (this node's share is not known, and fewer
    threads is the safe side). A value that is not a count is passed over.
    """
    for name in LOCAL_SIZE_VARS:
        counts = [entry.split("(", 1)[0] for entry in environ.get(name, "").split(",")]
        if all(count.strip().isdecimal() for count in counts):
            ranks = max(int(count) for count in counts)
            if ranks > 0:
                return ranks
    return 1


def default_num_threads(environ=os.environ, cores=None, sharing=None):
    """The policy's thread count for a process with ``environ``; see Note [kernel threads].

    ``cores`` defaults to the CPUs this process may run on, ``sharing`` (the ranks that may run
    on them, this one included) to the launcher's count of ranks on the node. Raises ValueError
    when ``MPIGRAD_NUM_THREADS`` is set but is not a positive integer.
    """
    value = environ.get("MPIGRAD_NUM_THREADS", "").strip()
    if value:
        if not value.isdecimal() or int(value) < 1:
            raise ValueError(f"MPIGRAD_NUM_THREADS must be a positive integer, got {value!r}")
        return int(value)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (sharing or local_ranks(environ)))


def get_num_threads():
    """The thread count the CPU kernels use now (the policy's, unless set_num_threads set one)."""
    global _policy_threads
    if _num_threads is not None:
        return _num_threads
    if _policy_threads is None:
        _policy_threads = default_num_threads(sharing=_sharing)
    return _policy_threads


def set_num_threads(n):
    """Use ``n`` threads in the CPU kernels from now on; ``None`` returns to the policy.

    The policy is read again after ``None`` (so a changed ``MPIGRAD_NUM_THREADS`` counts). Numba
    runs at most ``NUMBA_NUM_THREADS`` threads (the core count by default); a larger ``n`` still
    splits work into ``n`` chunks, on that many threads. Raises ValueError unless ``n`` is a
    positive integer or None.
    """
    global _num_threads, _policy_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: n must be a positive integer or None, got {n!r}")
    _num_threads, _policy_threads = n, None


def set_sharing(ranks):
    """Tell the policy how many ranks may run on this process's cores, itself included (what
    ``mpigrad.distributed.init`` finds from the affinity of every rank on the node); it replaces
    the launcher's count of ranks on the node.  A count ``set_num_threads`` chose stays."""
    global _sharing, _policy_threads
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"set_sharing: ranks must be a positive integer, got {ranks!r}")
    _sharing, _policy_threads = ranks, None
