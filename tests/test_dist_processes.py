"""How whole MPI programs end with mpigrad.distributed, each run in fresh processes under a hard
limit (``spawn.run_limited``), so a hang fails the test instead of the suite:

- an uncaught exception on one rank ends the job promptly, with that rank's traceback;
- a rank whose program ends while another waits for it makes the other raise;
- ``MPIGRAD_TIMEOUT`` sets the default timeout of every blocking call, and
  ``MPIGRAD_STALL_WARNING`` when a stalled call says what it waits for;
- a tensor that requires grad sent outside any context warns, once per process;
- the README's across-ranks example runs at more ranks than it uses.
"""

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
from spawn import MPIEXEC, child_env, needs_mpiexec, run_limited

from mpigrad.distributed.comm import sharing

LIMIT = 60  # s per run; each takes a few seconds
README = Path(__file__).resolve().parent.parent / "README.md"

PRELUDE = """
import sys, time
import numpy as np
import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd
rank = dist.get_rank()
"""


def run(source, n=2, tmp_path=None, prelude=PRELUDE, **env):
    """Run prelude + source on n ranks (n = 0: plain python, no launcher); return (returncode,
    output, seconds)."""
    script = tmp_path / "program.py"
    script.write_text(prelude + textwrap.dedent(source))
    command = [sys.executable, str(script)]
    if n:
        command = [MPIEXEC, "-n", str(n), *command]
    return run_limited(command, LIMIT, cwd=tmp_path, env=child_env(**env))


@needs_mpiexec
def test_an_uncaught_exception_on_one_rank_aborts_the_job_with_its_traceback(tmp_path):
    # What the rank writes on its stderr is read from a copy in a file: MPICH's launcher, which
    # forwards the ranks' output, once lost all of it when the rank aborted (a CI run).
    returncode, output, seconds = run(
        """
        class Copied:
            def __init__(self, *streams):
                self.streams = streams
            def write(self, text):
                for stream in self.streams:
                    stream.write(text)
            def flush(self):
                for stream in self.streams:
                    stream.flush()
        sys.stderr = Copied(open(f"stderr.{rank}", "w"), sys.stderr)
        if rank == 1:
            raise ValueError("rank 1 fails on purpose")
        dist.recv(1)  # would wait for ever: rank 1 never sends
        """,
        tmp_path=tmp_path,
    )
    assert returncode != 0, output
    assert seconds < 30, f"took {seconds:.1f} s:\n{output}"
    written = (tmp_path / "stderr.1").read_text()
    assert written.startswith("[rank 1] Traceback (most recent call last):\n"), written
    assert "[rank 1] ValueError: rank 1 fails on purpose\n" in written, written
    assert written.endswith(
        "[rank 1] mpigrad: uncaught exception on rank 1: aborting the job (set "
        "MPIGRAD_ABORT_ON_EXCEPTION=0 to keep Python's handling)\n"
    ), written


@needs_mpiexec
def test_without_the_abort_the_exit_notice_still_ends_the_waiting_rank(tmp_path):
    returncode, output, seconds = run(
        """
        if rank == 1:
            raise ValueError("rank 1 fails on purpose")
        dist.recv(1)
        """,
        tmp_path=tmp_path,
        MPIGRAD_ABORT_ON_EXCEPTION="0",
    )
    assert returncode != 0, output
    assert seconds < 30, f"took {seconds:.1f} s:\n{output}"
    assert "aborting the job" not in output, output
    assert "ValueError: rank 1 fails on purpose" in output, output
    assert re.search(
        r"DistributedError: rank 0: rank 1's program ended \(it exited\) while this "
        r"rank waits in recv for: a tensor from rank 1 with tag 0",
        output,
    ), output


@needs_mpiexec
def test_a_rank_whose_program_ends_early_is_not_waited_for(tmp_path):
    # Rank 1 forgets to send and its program ends normally; rank 0 waits for its tensor.
    returncode, output, seconds = run(
        """
        if rank == 0:
            try:
                dist.recv(1, tag=4)
            except dist.DistributedError as exc:
                print("raised:", exc, flush=True)
        """,
        tmp_path=tmp_path,
    )
    assert returncode == 0, output
    assert seconds < 30, f"took {seconds:.1f} s:\n{output}"
    assert output.strip() == (
        "raised: rank 0: rank 1's program ended (it exited) while this rank "
        "waits in recv for: a tensor from rank 1 with tag 4 (outside any "
        "context)"
    ), output


def test_the_default_timeout_comes_from_the_environment(tmp_path):
    # One rank, a receive from itself that nothing matches.
    returncode, output, _ = run(
        """
        start = time.monotonic()
        try:
            dist.recv(0)
        except dist.DistTimeoutError as exc:
            print(f"{time.monotonic() - start:.2f}", exc)
        """,
        n=0,
        tmp_path=tmp_path,
        MPIGRAD_TIMEOUT="0.5",
    )
    assert returncode == 0, output
    seconds, message = output.strip().split(" ", 1)
    assert 0.45 <= float(seconds) < 5, output
    assert message.startswith(
        "rank 0: recv timed out after 0.5 s still waiting for: a tensor "
        "from rank 0 with tag 0 (outside any context); no other rank"
    ), output


@needs_mpiexec
def test_init_that_a_rank_never_calls_warns_then_times_out(tmp_path):
    # Rank 1 never touches mpigrad.distributed (the prelude would initialize it); rank 0 waits
    # in init, warns at 0.5 s, times out at 1.5 s, and its uncaught error aborts the job.
    returncode, output, seconds = run(
        """
        from pathlib import Path
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 1:
            time.sleep(60)
        start = time.monotonic()
        try:
            dist.init()
        except dist.DistTimeoutError as exc:
            Path("raised.txt").write_text(f"{time.monotonic() - start:.2f} {exc}")
            raise
        """,
        tmp_path=tmp_path,
        prelude="import sys, time\nimport mpigrad.distributed as dist\n",
        MPIGRAD_TIMEOUT="1.5",
        MPIGRAD_STALL_WARNING="0.5",
    )
    assert returncode != 0, output
    assert seconds < 30, f"took {seconds:.1f} s:\n{output}"
    waited, message = (tmp_path / "raised.txt").read_text().split(" ", 1)
    assert 1.5 <= float(waited) < 5, message
    what = (
        "the other ranks of its communicator ('MPI_COMM_WORLD', 2 ranks) to call "
        "mpigrad.distributed.init(), which is collective (the first call of any "
        "mpigrad.distributed function initializes on COMM_WORLD, so then every rank must make one)"
    )
    assert message == (
        f"rank 0: init timed out after 1.5 s still waiting for: {what}; the communicator now "
        "holds a collective that never completed"
    ), message
    assert re.search(
        rf"^mpigrad: rank 0 has waited 0\.\d s in init for: {re.escape(what)}$",
        output,
        re.MULTILINE,
    ), output


@pytest.mark.parametrize(
    "name, value",
    [
        ("MPIGRAD_TIMEOUT", "soon"),
        ("MPIGRAD_TIMEOUT", "-1"),
        ("MPIGRAD_STALL_WARNING", "1s"),
    ],
)
def test_a_variable_that_is_not_seconds_is_an_error(tmp_path, name, value):
    returncode, output, _ = run("dist.recv(0)", n=0, tmp_path=tmp_path, **{name: value})
    assert returncode != 0, output
    what = "for none" if name == "MPIGRAD_TIMEOUT" else "for never"
    assert f"ValueError: {name}={value!r}: expected a number of seconds, 0 {what}" in output


def test_the_old_backward_variable_is_refused_by_name(tmp_path):
    returncode, output, _ = run(
        "dist.recv(0)", n=0, tmp_path=tmp_path, MPIGRAD_BACKWARD_TIMEOUT="5"
    )
    assert returncode != 0, output
    assert (
        "ValueError: MPIGRAD_BACKWARD_TIMEOUT is no longer read: MPIGRAD_TIMEOUT sets the "
        "timeout of every blocking call"
    ) in output, output


def test_a_stalled_call_says_what_it_waits_for(tmp_path):
    returncode, output, _ = run(
        """
        try:
            dist.recv(0, tag=3, timeout=1.7)
        except dist.DistTimeoutError:
            print("timed out")
        """,
        n=0,
        tmp_path=tmp_path,
        MPIGRAD_STALL_WARNING="0.5",
    )
    assert returncode == 0, output
    lines = re.findall(
        r"^mpigrad: rank 0 has waited (\S+) s in recv for: a tensor from rank 0 "
        r"with tag 3 \(outside any context\); no other rank takes part$",
        output,
        re.MULTILINE,
    )
    waited = [float(s) for s in lines]
    assert len(waited) == 3, output  # at 0.5, 1.0 and 1.5 s
    assert all(0 <= w - t < 0.3 for w, t in zip(waited, [0.5, 1.0, 1.5])), output
    assert output.rstrip().endswith("timed out"), output


def test_a_tensor_sent_outside_any_context_warns_once_per_process(tmp_path):
    returncode, output, _ = run(
        """
        import warnings
        x = mg.tensor(np.ones(2), requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                request = dist.isend(x * 2.0, 0)
                dist.recv(0)
                request.wait()
        print(len(caught), caught[0].category.__name__, caught[0].message)
        """,
        n=0,
        tmp_path=tmp_path,
    )
    assert returncode == 0, output
    assert output.startswith(
        "1 NoContextWarning isend: a tensor that requires grad was sent "
        "outside any distributed autograd context, so no gradient will flow "
        "back across this message."
    ), output


def _readme_example():
    text = README.read_text()
    section = text[text.index("## Across ranks") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_the_readme_example_runs_at_more_ranks_than_it_uses(tmp_path, n):
    (tmp_path / "example.py").write_text(_readme_example())
    returncode, output, seconds = run_limited(
        [MPIEXEC, "-n", str(n), sys.executable, "example.py"], LIMIT, cwd=tmp_path
    )
    assert returncode == 0, output
    assert output.strip() == "True", output


@pytest.mark.parametrize(
    "mine, masks, shared",
    [
        ({0, 1}, [{0, 1}, {0, 1}], False),  # 2 ranks free on 2 cores
        ({0}, [{0}, {1}], False),  # each bound to its own core
        ({0, 1}, [{0, 1}] * 4, True),  # 4 ranks free on 2 cores
        ({0}, [{0}, {1}, {0}, {1}], True),  # bound, two to a core
        ({2, 3}, [{0}, {0}, {2, 3}], False),  # two share core 0, not this rank's cores
        ({0}, [{0}, {0}, {2, 3}], True),
    ],
)
def test_cores_are_shared_when_more_ranks_may_run_on_them_than_they_are(mine, masks, shared):
    assert (sharing(mine, masks) > len(mine)) is shared


@needs_mpiexec
@pytest.mark.parametrize("n, bind, shared", [(2, True, False), (2, False, False), (4, True, True)])
def test_ranks_bound_each_to_a_core_of_their_own_do_not_share(tmp_path, n, bind, shared):
    if bind and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("binding ranks to a core each needs 2 cores (CI's machines have 2)")
    script = tmp_path / "cores.py"
    script.write_text(
        "import os\nfrom mpigrad.distributed import comm\n"
        "line = f'cores {sorted(os.sched_getaffinity(0))} shared {comm.get().shared_cores}\\n'\n"
        "os.write(1, line.encode())  # one write: the ranks' lines do not interleave\n"
    )
    binding = ["-bind-to", "core"] if bind else []
    returncode, output, _ = run_limited(
        [MPIEXEC, *binding, "-n", str(n), sys.executable, str(script)],
        LIMIT,
        cwd=tmp_path,
        env=child_env(),
    )
    assert returncode == 0, output
    lines = re.findall(r"^cores \[([\d, ]+)\] shared (\w+)$", output, re.MULTILINE)
    assert len(lines) == n, output
    assert {flag for _, flag in lines} == {str(shared)}, output
    if bind:
        assert all("," not in cores for cores, _ in lines), output  # one core each
