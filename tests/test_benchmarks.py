"""Benchmarks run in their quick mode under mpiexec, exit 0, and print and record what they measure.

A benchmark checks its subjects' results before timing and exits non-zero where they are wrong,
so a run here is also that check.  Each run is a subprocess under a hard limit
(``spawn.run_limited``), importing the mpigrad this test run imports; records go to a file in
the test's folder and no plot is written.
"""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from spawn import MPIEXEC, needs_mpiexec, run_limited

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
LIMIT = 120  # s per run; each takes a few seconds
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_benchmark(name, n, tmp_path, *options):
    """Run benchmarks/name --quick on n ranks; return (returncode, output, records)."""
    records = tmp_path / "records.jsonl"
    command = [MPIEXEC, "-n", str(n), sys.executable, str(BENCHMARKS / name)]
    command += ["--quick", "--reps", "2", "--no-plot", "--append", str(records), *options]
    returncode, output, _ = run_limited(command, LIMIT, cwd=tmp_path)
    lines = records.read_text().splitlines() if records.exists() else []
    return returncode, output, [json.loads(line) for line in lines]


@needs_mpiexec
@pytest.mark.parametrize("n, torch", [(2, HAS_TORCH), (3, False)])
def test_bench_ddp_quick(n, torch, tmp_path):
    returncode, output, records = run_benchmark(
        "bench_ddp.py", n, tmp_path, *([] if torch else ["--no-torch"])
    )
    assert returncode == 0, output
    match = re.search(r"^check: .* hand Allreduce's: ([-+.0-9e]+)", output, re.MULTILINE)
    assert match and float(match.group(1)) <= 1e-5, output
    subjects = ["mpigrad DDP", "hand Allreduce", "one rank"]
    subjects += ["torch DDP", "torch one rank"] if torch else []
    assert ("torch DDP's:" in output) == torch, output
    assert ("torch rows left out" in output) != torch, output
    measured = {r["subject"]: r for r in records if "subject" in r}
    assert sorted(measured) == sorted(subjects), output
    for name in subjects:
        record = measured[name]
        assert re.search(rf"^ *{name} +\d+\.\d\d ", output, re.MULTILINE), output
        assert record["median"] > 0 and record["run"]["ranks"] == n, record
        assert record["threads"] == 1 and record["run"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    ddp = measured["mpigrad DDP"]
    assert 0 <= ddp["wait_fraction"] < 1, ddp
    assert ddp["baseline"] == "hand Allreduce" and ddp["ratio"] > 0, ddp
    assert ("torch_ratio" in ddp) == torch, ddp
    targets = {r["target"] for r in records if "target" in r}
    assert targets == {"mpigrad DDP / hand Allreduce"} | (
        {"mpigrad DDP / torch DDP"} if torch else set()
    ), output
