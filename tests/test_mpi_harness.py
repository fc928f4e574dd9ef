"""Process-level guarantees about MPI, checked from a serial test run.

1. The harness of tests/mpi/conftest.py ends a run whose test failed or hung on some rank,
   and says why, instead of leaving it to hang: each case writes a tiny test file beside a
   copy of that conftest and runs it as `mpiexec -n 2 python -m pytest` under a hard limit.
2. `import mpigrad` does not import mpi4py (so it does not initialize MPI).
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from spawn import MPIEXEC, child_env, needs_mpiexec, run_limited

HARNESS = Path(__file__).resolve().parent / "mpi" / "conftest.py"
LIMIT = 60  # s; no case should come near it


def run_under_mpiexec(tmp_path, test_source, n=2, test_timeout=30):
    """Run test_source on n ranks with the harness; return (returncode, output, seconds)."""
    shutil.copy(HARNESS, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(textwrap.dedent(test_source))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # rootdir here, not the repository
    command = [
        MPIEXEC,
        "-n",
        str(n),
        sys.executable,
        "-m",
        "pytest",
        "test_case.py",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:pytest_mpi",
        "--color=no",  # the cases match plain text; Open MPI gives ranks a terminal for stdout
        f"--timeout={test_timeout}",
        "--timeout-method=thread",
    ]
    return run_limited(command, LIMIT, cwd=tmp_path)


@needs_mpiexec
def test_failure_on_one_rank_while_another_blocks_aborts_the_run(tmp_path):
    returncode, output, seconds = run_under_mpiexec(
        tmp_path,
        """
        def test_blocked(comm):
            if comm.rank == 1:
                raise AssertionError("rank 1 fails before its send")
            comm.recv(source=1)

        def test_never_reached(comm):
            pass
    """,
    )
    assert returncode != 0, output
    assert seconds < 30, f"took {seconds:.1f} s:\n{output}"
    assert "[rank 1] test_case.py::test_blocked failed on rank 1" in output, output
    assert any(
        line.startswith("[rank 1] E ") and "rank 1 fails before its send" in line
        for line in output.splitlines()
    ), output
    assert "passed" not in output, output


@needs_mpiexec
def test_hang_on_every_rank_times_out_and_aborts(tmp_path):
    returncode, output, seconds = run_under_mpiexec(
        tmp_path,
        """
        def test_hang(comm):
            comm.recv(source=(comm.rank + 1) % comm.size)  # every rank waits; none sends
    """,
        test_timeout=3,
    )
    assert returncode != 0, output
    assert seconds < 20, f"took {seconds:.1f} s:\n{output}"
    assert "test_case.py::test_hang timed out after 3 s on rank" in output, output
    assert "comm.recv(source=(comm.rank + 1) % comm.size)" in output, output  # the stack


@needs_mpiexec
def test_failure_on_one_rank_is_reported_by_rank_0_and_the_run_goes_on(tmp_path):
    returncode, output, _ = run_under_mpiexec(
        tmp_path,
        """
        import pytest

        def test_fails_on_rank_1(comm):
            comm.Barrier()
            assert comm.rank != 1, "only rank 1 fails"

        def test_after(comm):
            assert comm.allreduce(1) == comm.size

        @pytest.mark.min_ranks(3)
        def test_needs_three(comm):
            pass
    """,
    )
    assert returncode != 0, output
    assert "test_case.py::test_fails_on_rank_1 failed on rank(s) [1] of 2" in output, output
    assert "AssertionError: only rank 1 fails" in output, output
    assert "PASSED test_case.py::test_after" in output, output
    assert "needs at least 3 MPI ranks; running on 2" in output, output
    # Only rank 0 writes pytest's output: one summary line.
    assert output.count("2 passed, 1 skipped, 1 error") == 1, output


def test_import_mpigrad_does_not_import_mpi4py(tmp_path):
    env = child_env()
    code = (
        "import sys, mpigrad\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mpi4py'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import mpigrad imported {proc.stdout.strip()}"
