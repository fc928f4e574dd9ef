"""Every example in examples/ runs under mpiexec at 2 and 3 ranks, exits 0 and prints its result.

Each run is a subprocess with a hard limit (MPICH's MPIEXEC_TIMEOUT, then a kill of its process
group), so a hung example fails its test instead of hanging the suite. With
MPIGRAD_TEST_INSTALLED set (``make test``) the examples import the installed mpigrad; otherwise
the source tree is put on PYTHONPATH.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# The mpiexec of the MPI that mpi4py runs on: the MPICH wheel puts it beside python.
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
LIMIT = 120  # s per run; each takes a few seconds

needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside python or on PATH")


def run_example(name, n, tmp_path):
    """Run examples/name on n ranks; return (returncode, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI_"))}
    env["MPIEXEC_TIMEOUT"] = str(LIMIT)
    if not os.environ.get("MPIGRAD_TEST_INSTALLED"):  # else the installed mpigrad is under test
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [MPIEXEC, "-n", str(n), sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=LIMIT + 15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{name} on {n} ranks still running after {LIMIT + 15} s:\n{output}")
    return proc.returncode, output


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_pipeline_mlp_trains(n, tmp_path):
    returncode, output = run_example("pipeline_mlp.py", n, tmp_path)
    assert returncode == 0, output
    losses = [float(v) for v in re.findall(r"^step +\d+  loss (\S+)$", output, re.MULTILINE)]
    assert len(losses) == 7, output  # steps 0, 50, ..., 300, printed by the last stage only
    assert losses[-1] < 0.5 * losses[0], output
    match = re.search(rf"^{n} stages, 301 steps in \S+ s, final test accuracy (\S+)$", output,
                      re.MULTILINE)
    assert match and float(match.group(1)) >= 0.9, output


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_heat_adjoint_gradient_checks_pass(n, tmp_path):
    returncode, output = run_example("heat_adjoint.py", n, tmp_path)
    assert returncode == 0, output
    assert re.search(rf"^{n} ranks, N=240, T=200: J and dJ/du0 in ", output, re.MULTILINE), output
    for check, tolerance in (("finite-difference", 1e-7), ("one-rank", 1e-12)):
        match = re.search(rf"^{check} check: relative error (\S+) \(tolerance", output,
                          re.MULTILINE)
        assert match and float(match.group(1)) <= tolerance, output
