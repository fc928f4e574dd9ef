#!/usr/bin/env bash
# make test-slurm: the batch scripts in slurm/ run for real on a one-node Slurm on localhost.
#
# Starts the cluster (slurm/local-cluster.sh, needs root), submits with sbatch tests.sbatch,
# examples.sbatch for each example and, where benchmarks/bench_scaling.py exists,
# scaling.sbatch with --quick; waits for them (SLURM_TEST_WAIT seconds at most), checks each
# job's final state and exit code (scontrol) and the last line of its output, and stops the
# cluster.
#
# Environment (make test-slurm sets the first three to the venv's):
#   PYTHON, PYTEST, MPIEXEC  passed to the jobs (see slurm/common.sh)
#   SLURM_TEST_NP            tasks per job (default 2)
#   SLURM_TEST_WAIT          seconds to wait for all jobs (default 900)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${PYTHON:?set PYTHON to the Python with mpigrad installed}"
: "${PYTEST:?set PYTEST to its pytest}"
SLURM_TEST_NP=${SLURM_TEST_NP:-2}
SLURM_TEST_WAIT=${SLURM_TEST_WAIT:-900}
export MPIGRAD_SLURM_DIR=${MPIGRAD_SLURM_DIR:-/tmp/mpigrad-slurm}
export SLURM_CONF=$MPIGRAD_SLURM_DIR/slurm.conf
JOBS=$MPIGRAD_SLURM_DIR/jobs

fail() { echo "error: make test-slurm: $*" >&2; exit 1; }

slurm/local-cluster.sh start || fail "could not start the local Slurm (slurm/local-cluster.sh start)"
summary=""  # "N passed, M failed": printed last, after the cluster stops (CI reads the last line)
trap 'slurm/local-cluster.sh stop; [ -z "$summary" ] || echo "$summary"' EXIT
rm -rf "$JOBS"
mkdir -p "$JOBS"

names=()
ids=()
# submit NAME SCRIPT [VAR=VALUE,...]: sbatch SCRIPT with output in JOBS/NAME.out.
submit() {
    local name=$1 script=$2 extra=${3:+,$3} id
    id=$(sbatch --parsable --ntasks="$SLURM_TEST_NP" --job-name="mpigrad-$name" \
        --output="$JOBS/$name.out" --chdir="$ROOT" \
        --export="ALL,MPIGRAD_DIR=$ROOT,PYTHON=$PYTHON,PYTEST=$PYTEST,MPIEXEC=${MPIEXEC:-mpiexec}$extra" \
        "$script") || fail "sbatch $script failed"
    id=${id%%;*}
    echo "submitted $script as job $id ($name${3:+: $3})"
    names+=("$name")
    ids+=("$id")
}

submit tests slurm/tests.sbatch
submit pipeline_mlp slurm/examples.sbatch
submit heat_adjoint slurm/examples.sbatch EXAMPLE=examples/heat_adjoint.py
submit data_parallel slurm/examples.sbatch EXAMPLE=examples/data_parallel.py
if [ -f benchmarks/bench_scaling.py ]; then
    submit scaling slurm/scaling.sbatch "BENCH_ARGS=--quick,RESULTS_DIR=$JOBS/scaling"
else
    echo "benchmarks/bench_scaling.py does not exist: slurm/scaling.sbatch not submitted"
fi

start=$SECONDS
while squeue -h -j "$(IFS=,; echo "${ids[*]}")" 2> /dev/null | grep -q .; do
    if [ $((SECONDS - start)) -ge "$SLURM_TEST_WAIT" ]; then
        squeue
        scancel "${ids[@]}" || true
        fail "jobs still queued or running after $SLURM_TEST_WAIT s; cancelled"
    fi
    sleep 1
done
echo "all jobs left the queue after $((SECONDS - start)) s"

failed=0
passed_jobs=0
for i in "${!ids[@]}"; do
    name=${names[$i]} id=${ids[$i]} out=$JOBS/${names[$i]}.out
    info=$(scontrol -o show job "$id") || fail "scontrol show job $id: no record of job $id"
    state=$(grep -o 'JobState=[A-Z_]*' <<< "$info")
    code=$(grep -o ' ExitCode=[0-9:]*' <<< "$info")
    echo "==== job $id ($name): $state$code; $out:"
    cat "$out" 2> /dev/null || echo "(no output file)"
    last=$(tail -n 1 "$out" 2> /dev/null || true)
    if [ "$state" != JobState=COMPLETED ] || [ "$code" != " ExitCode=0:0" ]; then
        echo "error: job $id ($name) ended $state$code" >&2
        failed=1
    elif [[ $name != scaling && $last != *" passed on $SLURM_TEST_NP ranks" ]]; then
        echo "error: job $id ($name): its output does not end with '... passed on $SLURM_TEST_NP ranks'" >&2
        failed=1
    elif [[ $name == scaling && $last != "scaling sweep over "*" done" ]]; then
        echo "error: job $id ($name): its output does not end with 'scaling sweep over ... done'" >&2
        failed=1
    else
        passed_jobs=$((passed_jobs + 1))
    fi
done
summary="$passed_jobs passed, $((${#ids[@]} - passed_jobs)) failed"
[ "$failed" -eq 0 ] || fail "some Slurm jobs failed; see above"
echo "make test-slurm: ${#ids[@]} Slurm jobs passed: ${names[*]}"
