"""MPI test harness: every test under tests/mpi runs on every rank, at any world size.

Run it as ``mpiexec -n N pytest tests/mpi`` (``make test`` runs N = 2, 3 and 4) or as plain
``pytest`` (one rank). Tests get:

- ``comm``: a duplicate of COMM_WORLD for the one test, freed after it, so a message a
  failed test left unreceived cannot reach the next test.
- ``@pytest.mark.min_ranks(n)``: skips the test, with the sizes in the reason, when the
  world has fewer than n ranks. Write tests for any size (``dest = (rank + 1) % size``) and
  use this only where a size is really needed.

With more than one rank the harness also guarantees that a run ends, and says why, whatever
a test does. See Note [failing ranks].
"""

# Note [failing ranks]
# ~~~~~~~~~~~~~~~~~~~~
# A rank blocked in an MPI call (comm.recv waiting for a rank whose test failed before the
# send) cannot be interrupted from Python: no exception reaches it and signals wait until
# the call returns. The only way out is MPI.COMM_WORLD.Abort, after which the launcher
# kills every rank. So:
#
# 1. After each test (its teardown report) every rank joins a nonblocking allgather of
#    (failed here?, hash of the test id) on a communicator of the harness's own.
#    - All arrive: the ranks agree. Rank 0 gathers the failure texts of the other ranks and
#      reports them as an error of that test, so the run goes on to the next test and
#      rank 0's summary counts every failure, whichever rank it happened on.
#    - A rank that failed waits at most MPIGRAD_TEST_GRACE seconds (default 10) for the
#      others; if they do not arrive they are presumably blocked waiting for it, so it
#      prints its failure to stderr and calls Abort(1).
#    - A rank that passed waits without a limit of its own: the test's timeout covers it.
#    - Different test ids mean the ranks collected different tests: abort.
# 2. The per-test timeout (pytest-timeout, here always with a thread: the signal method
#    cannot interrupt a C call) prints the test's captured output and every thread's stack
#    to stderr and calls Abort(1) instead of pytest-timeout's os._exit.
# 3. Only rank 0 writes pytest's normal output; the others write to stderr only what
#    precedes an abort, every line prefixed with "[rank r]".
# 4. MPIEXEC_TIMEOUT (honoured by MPICH's mpiexec and by Open MPI's) and coreutils timeout
#    around mpiexec, both set by the Makefile, are the backstops if all of this fails.

import os
import re
import sys
import threading
import time
import traceback
import zlib

import hypothesis
import numpy as np
import pytest
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
SIZE = WORLD.Get_size()
GRACE = float(os.environ.get("MPIGRAD_TEST_GRACE", "10"))
ABORT_GRACE = 1.0  # seconds between writing a failure report and aborting: see _abort

# Every rank must draw the same examples, or their collectives stop matching: no random
# seed, no example database (ranks would race on it and replay different failures), no
# shrinking (it reruns the test on the failing rank only).
hypothesis.settings.register_profile(
    "mpi",
    deadline=None,
    derandomize=True,
    database=None,
    phases=(hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate),
)
if SIZE > 1:
    hypothesis.settings.load_profile("mpi")

_FAILURES = pytest.StashKey[list]()
_harness_comm = None  # a duplicate of COMM_WORLD that only the harness talks on


@pytest.fixture
def comm():
    """A duplicate of COMM_WORLD for one test, freed after it."""
    comm = WORLD.Dup()
    yield comm
    comm.Free()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global _harness_comm
    config.addinivalue_line(
        "markers", "min_ranks(n): skip unless the MPI world has at least n ranks"
    )
    if SIZE == 1:
        return
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "tests/mpi under mpiexec needs pytest-timeout: a hung rank would hang the run"
        )
    _harness_comm = WORLD.Dup()
    if RANK != 0:
        # The terminal reporter, created after this tryfirst hook, takes sys.stdout.
        sys.stdout = open(os.devnull, "w")


def pytest_unconfigure(config):
    global _harness_comm
    if _harness_comm is not None:
        _harness_comm.Free()
        _harness_comm = None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("min_ranks"):
            (n,) = mark.args
            if SIZE < n:
                item.add_marker(
                    pytest.mark.skip(reason=f"needs at least {n} MPI ranks; running on {SIZE}")
                )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash.setdefault(_FAILURES, []).append(report)
    if report.when == "teardown" and SIZE > 1:
        _agree(item, report)
    return report


def _agree(item, report):
    """See Note [failing ranks], point 1."""
    failures = item.stash.get(_FAILURES, [])
    sendbuf = np.array([bool(failures), zlib.crc32(item.nodeid.encode())], dtype=np.int64)
    recvbuf = np.empty((SIZE, 2), dtype=np.int64)
    request = _harness_comm.Iallgather(sendbuf, recvbuf)
    if failures:
        deadline = time.monotonic() + GRACE
        while not request.Test():
            if time.monotonic() > deadline:
                _abort(
                    item,
                    f"{item.nodeid} failed on rank {RANK}, and not every rank finished it "
                    f"within {GRACE:g} s (MPIGRAD_TEST_GRACE): they are probably blocked "
                    "waiting for this rank. Aborting.",
                    _failure_text(failures),
                )
            time.sleep(0.005)
    else:
        request.Wait()
    if len(set(recvbuf[:, 1].tolist())) != 1:
        _abort(item, f"ranks ran different tests at {item.nodeid}: collection differs. Aborting.")
    failed_ranks = [r for r in range(SIZE) if recvbuf[r, 0]]
    if not failed_ranks:
        return
    texts = _harness_comm.gather(_failure_text(failures) if failures else "", root=0)
    if RANK != 0:
        return
    # Group ranks that failed alike; rank 0's own failure is already in its report.
    groups = {}
    for r in failed_ranks:
        if not (failures and texts[r] == texts[0]):
            groups.setdefault(texts[r], []).append(r)
    if not groups:
        return
    lines = [f"{item.nodeid} failed on rank(s) {failed_ranks} of {SIZE}"]
    for text, ranks in groups.items():
        lines += ["", f"---------- rank(s) {ranks} ----------", text]
    report.outcome = "failed"
    report.longrepr = "\n".join(lines)


def _failure_text(reports):
    # Object addresses differ between ranks; without them equal failures group together.
    return "\n".join(
        f"failure in {r.when}:\n" + re.sub(r" at 0x[0-9a-fA-F]+>", ">", r.longreprtext)
        for r in reports
    )


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """See Note [failing ranks], point 2; pytest-timeout cancels it via item.cancel_timeout."""
    if SIZE == 1:
        return None  # pytest-timeout's own method

    def expire():
        capman = item.config.pluginmanager.getplugin("capturemanager")
        details = []
        if capman is not None:
            capman.suspend_global_capture(in_=True)
            out, err = capman.read_global_capture()
            details += [f"captured stdout:\n{out}"] if out else []
            details += [f"captured stderr:\n{err}"] if err else []
        for ident, frame in sys._current_frames().items():
            if ident != threading.get_ident():
                details.append(f"stack of thread {ident}:\n{_format_stack(frame)}")
        _abort(
            item,
            f"{item.nodeid} timed out after {settings.timeout:g} s on rank {RANK}. Aborting.",
            "\n".join(details),
        )

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"mpigrad test timeout {item.nodeid}"
    timer.daemon = True

    def cancel():
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel
    timer.start()
    return True


def _format_stack(frame):
    """The frame's stack without pytest's and pluggy's own frames."""
    framework = (
        f"{os.sep}_pytest{os.sep}",
        f"{os.sep}pluggy{os.sep}",
        f"{os.sep}pytest{os.sep}",
        "<frozen ",
    )
    entries = [
        e
        for e in traceback.extract_stack(frame)
        if not any(part in e.filename for part in framework)
    ]
    return "".join(traceback.format_list(entries))


def _abort(item, message, details=""):
    """Write message and details to stderr, every line marked with the rank, and Abort(1)."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    prefix = f"[rank {RANK}] "
    text = "\n".join(prefix + line for line in f"{message}\n{details}".rstrip().splitlines())
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    # The launcher forwards a rank's output asynchronously, and Abort makes it kill every rank:
    # without a pause the report can be lost when all ranks abort at once (a hang everywhere).
    time.sleep(ABORT_GRACE)
    WORLD.Abort(1)
