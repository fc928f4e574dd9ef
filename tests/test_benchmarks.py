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
    """Run benchmarks/name --quick on n ranks (``--no-plot`` where it ``plots``); return
    (returncode, output, records)."""
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


def _harness():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCHMARKS))
    return _common


def test_noise_is_the_value_times_the_half_spreads():
    _common = _harness()
    subject = {"median": 10.0, "q1": 9.0, "q3": 11.0}  # half spread 1/10 of its median
    baseline = {"median": 4.0, "q1": 3.8, "q3": 4.2}  # 1/20
    assert _common.noise(2.5, subject, baseline) == pytest.approx(2.5 * 0.15)
    assert _common.noise(10.0, subject) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "value, goal, noise, verdict, missed",
    [
        (1.2, "<= 1.25", 0.0, "met", False),
        (1.3, "<= 1.25", 0.1, "NOT met, within the noise +-0.1", False),
        (1.4, "<= 1.25", 0.1, "NOT met, by more than the noise +-0.1", True),
        (40.0, "< 40", 0.0, "NOT met, by more than the noise +-0", True),
        (9.5, ">= 10", 1.0, "NOT met, within the noise +-1", False),
        (8.5, ">= 10", 1.0, "NOT met, by more than the noise +-1", True),
    ],
)
def test_a_target_is_missed_only_beyond_its_noise(
    value, goal, noise, verdict, missed, tmp_path, capsys, monkeypatch
):
    _common = _harness()
    monkeypatch.setattr(sys, "argv", ["bench_x.py"])
    records = tmp_path / "records.jsonl"
    args = _common.parser("x").parse_args(["--append", str(records), "--fail-missed"])
    report = _common.Report(args)
    report.target("the case", value, goal, noise)
    assert f"target: the case: {value:.3g} (goal {goal}: {verdict})" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert record["met"] == (verdict == "met") and record["missed"] == missed, record
    assert record["noise"] == noise and record["goal"] == goal, record
    if missed:  # --fail-missed: the run exits 1 after its records, naming the target
        with pytest.raises(SystemExit) as exit_:
            report.close()
        assert exit_.value.code == 1
        assert "missed by more than the noise: the case" in capsys.readouterr().out
    else:
        report.close()
    args.fail_missed = False  # without the flag, a miss is reported and the run goes on
    report.close()


@needs_mpiexec
@pytest.mark.parametrize("torch", sorted({False, HAS_TORCH}))
def test_bench_p2p_quick_with_and_without_torch(torch, tmp_path):
    options = ["--sizes", "8", "64"] + ([] if torch else ["--no-torch"])  # a leaf per size
    returncode, output, records = run_benchmark("bench_p2p.py", 2, tmp_path, *options)
    assert returncode == 0, output
    measured = {r["subject"] for r in records if "subject" in r}
    assert {"raw", "local 1", "one-hop backward", "two-hop backward"} <= measured, output
    assert ("torch" in measured) == torch, output
    (one_hop,) = [r for r in records if r.get("subject") == "one-hop backward" and r["bytes"] == 8]
    assert one_hop["ratio"] > 0 and one_hop["noise"] >= 0, one_hop
    assert ("faster_than_torch" in one_hop) == torch, one_hop
    targets = {r["target"]: r for r in records if "target" in r}
    want = {"one-hop backward at 8 B, us"}
    want |= {"one-hop backward at 8 B, torch's over mpigrad's"} if torch else set()
    assert set(targets) == want, output
    for name, record in targets.items():
        line = re.search(rf"^target: {re.escape(name)}: .*$", output, re.M).group(0)
        verdict = "met)" if record["met"] else "by more than" if record["missed"] else "within"
        assert verdict in line, (line, record)


@needs_mpiexec
def test_bench_engine_mlp_in_each_dtype_with_its_peak_memory(tmp_path):
    returncode, output, records = run_benchmark(
        "bench_engine.py", 1, tmp_path, "--cases", "mlp", "--no-torch", plots=False
    )
    assert returncode == 0, output
    rows = {(r["dtype"], r["subject"]): r for r in records if "subject" in r}
    assert sorted(rows) == [(d, s) for d in ("float32", "float64") for s in ("mpigrad", "numpy")]
    for (dtype, subject), record in rows.items():
        assert record["median"] > 0 and record["peak"] > 0, record  # a step allocates
        assert re.search(rf"^ *mlp +{dtype} +{subject} +ms ", output, re.M), output
    targets = {r["target"] for r in records if "target" in r}
    assert targets == {
        f"mlp {dtype}, 1 thread(s): mpigrad / numpy, medians" for dtype in ("float64", "float32")
    }, output


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
