"""Every example in examples/ runs under mpiexec at 2 and 3 ranks, exits 0 and prints its result.

Each run is a subprocess with a hard limit (``spawn.run_limited``), so a hung example fails its
test instead of hanging the suite; the examples import the mpigrad this test run imports.
"""

import re
import sys
from pathlib import Path

import pytest
from spawn import MPIEXEC, needs_mpiexec, run_limited

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LIMIT = 120  # s per run; each takes a few seconds


def run_example(name, n, tmp_path):
    """Run examples/name on n ranks; return (returncode, output)."""
    returncode, output, _ = run_limited(
        [MPIEXEC, "-n", str(n), sys.executable, str(EXAMPLES / name)], LIMIT, cwd=tmp_path
    )
    return returncode, output


def assert_trains(name, n, tmp_path, loss_line, count, shrink, summary):
    """Run the training example ``name`` on n ranks and check that it exits 0, prints ``count``
    lines ``loss_line <loss>`` whose last loss is below ``shrink`` times the first, and a line
    ``summary <accuracy>`` with an accuracy of at least 0.9; returns its output."""
    returncode, output = run_example(name, n, tmp_path)
    assert returncode == 0, output
    losses = [float(v) for v in re.findall(rf"^{loss_line} (\S+)$", output, re.MULTILINE)]
    assert len(losses) == count, output
    assert losses[-1] < shrink * losses[0], output
    match = re.search(rf"^{summary} (\S+)$", output, re.MULTILINE)
    assert match and float(match.group(1)) >= 0.9, output
    return output


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_pipeline_mlp_trains(n, tmp_path):
    assert_trains(
        "pipeline_mlp.py",
        n,
        tmp_path,
        r"step +\d+  loss",
        7,  # steps 0, 50, ..., 300, printed by the last stage only
        0.5,
        rf"{n} stages, 301 steps in \S+ s, final test accuracy",
    )


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_data_parallel_trains_identical_models(n, tmp_path):
    output = assert_trains(
        "data_parallel.py",
        n,
        tmp_path,
        r"epoch +\d+  loss",
        20,  # one per epoch, printed by rank 0 only
        0.2,
        rf"{n} ranks, 20 epochs of \d+ steps in \S+ s, test accuracy",
    )
    assert re.search(r"^parameters bitwise identical on every rank$", output, re.MULTILINE), output


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_heat_adjoint_gradient_and_hessian_checks_pass(n, tmp_path):
    returncode, output = run_example("heat_adjoint.py", n, tmp_path)
    assert returncode == 0, output
    assert re.search(rf"^{n} ranks, N=240, T=200: J and dJ/du0 in ", output, re.MULTILINE), output
    for check, tolerance in (
        ("finite-difference", 1e-7),
        ("one-rank", 1e-12),
        ("Hessian-vector", 1e-7),
    ):
        match = re.search(
            rf"^{check} check: relative error (\S+) \(tolerance", output, re.MULTILINE
        )
        assert match and float(match.group(1)) <= tolerance, output
    assert re.search(r"^all checks passed$", output, re.MULTILINE), output
