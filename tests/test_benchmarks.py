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

import mpigrad as mg

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
LIMIT = 120  # s per run; each takes a few seconds
HAS_TORCH = importlib.util.find_spec("torch") is not None
BINARY_OPS = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where"}


def run_benchmark(name, n, tmp_path, *options, plots=True):
    """Run benchmarks/name --quick (and --no-plot for a script that ``plots``) on n ranks;
    return (returncode, output, records)."""
    records = tmp_path / "records.jsonl"
    command = [MPIEXEC, "-n", str(n), sys.executable, str(BENCHMARKS / name)]
    command += ["--quick", "--reps", "2", "--append", str(records), *options]
    command += ["--no-plot"] if plots else []
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


@needs_mpiexec
@pytest.mark.parametrize("torch", sorted({False, HAS_TORCH}))
def test_bench_engine_ops_quick(torch, tmp_path):
    """The ops case times a row for every op of the registry (the script refuses to run where one
    lacks a row), binary ops with a Tensor and with a Python number, each against torch."""
    options = ["--cases", "ops", "--ops", "20", *([] if torch else ["--no-torch"])]
    returncode, output, records = run_benchmark(
        "bench_engine.py", 1, tmp_path, *options, plots=False
    )
    assert returncode == 0, output
    rows = [r for r in records if r.get("case") == "ops"]
    mine = [r for r in rows if r["subject"] == "mpigrad"]
    assert {name for r in mine for name in r["names"]} == set(mg.ops.__all__), output
    for name in BINARY_OPS:
        assert {r["operand"] for r in mine if r["names"] == [name]} == {"tensor", "scalar"}
    assert all(r["median"] > 0 and r["ops"] == 20 for r in rows), output
    assert len(rows) == len(mine) * (2 if torch else 1), output
    assert all((r["ratio"] is not None and r["ratio"] > 0) == torch for r in mine), output
    for r in mine:
        assert re.search(
            rf"^ *{re.escape(r['op'])} +{r['operand'] or '-'} +\d+\.\d{{3}} ", output, re.M
        )
    targets = [r for r in records if "target" in r]
    assert len(targets) == (2 if torch else 0), output
    assert all(t["target"].startswith("ops: ") for t in targets), output
