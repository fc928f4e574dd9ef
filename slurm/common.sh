# Sourced by the slurm/*.sbatch scripts: the repository, the launcher, the configuration banner.
#
# Environment (each has a default):
#   MPIGRAD_DIR  the mpigrad checkout to run in (default: the directory sbatch was run from)
#   PYTHON       the Python with mpigrad and mpi4py installed (default: python3 on PATH)
#   NP           ranks to launch (default: the allocation's task count, SLURM_NTASKS)
#   LAUNCHER     srun or mpiexec (default: srun when it is on PATH, otherwise mpiexec)
#   SRUN_ARGS    extra srun options, e.g. --mpi=pmix (default: none: the site's MpiDefault)
#   MPIEXEC      the mpiexec of the MPI that mpi4py uses (default: mpiexec on PATH)

MPIGRAD_DIR=${MPIGRAD_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-python3}
NP=${NP:-${SLURM_NTASKS:-${SLURM_NPROCS:-1}}}
SRUN_ARGS=${SRUN_ARGS:-}
MPIEXEC=${MPIEXEC:-mpiexec}
if [ -z "${LAUNCHER:-}" ]; then
    if command -v srun > /dev/null; then LAUNCHER=srun; else LAUNCHER=mpiexec; fi
fi
cd "$MPIGRAD_DIR"

die() { echo "$(basename "${SLURM_JOB_NAME:-$0}"): error: $*" >&2; exit 1; }

# launch N COMMAND...: COMMAND on N ranks inside the allocation.
launch() {
    local n=$1
    shift
    case $LAUNCHER in
        # --kill-on-bad-exit: a rank that fails ends the step instead of leaving the others
        # waiting for it in MPI.
        # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
        srun) srun --ntasks="$n" --kill-on-bad-exit=1 $SRUN_ARGS "$@" ;;
        mpiexec) "$MPIEXEC" -n "$n" "$@" ;;
        *) die "LAUNCHER must be srun or mpiexec, not '$LAUNCHER'" ;;
    esac
}

# show_config VAR...: the job, the revision, the launcher and the named variables.
show_config() {
    local var
    echo "== $(basename "${SLURM_JOB_NAME:-$0}") on $(hostname)," \
        "job ${SLURM_JOB_ID:-none} (${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?})"
    echo "git revision: $(git -C "$MPIGRAD_DIR" rev-parse HEAD 2> /dev/null || echo unknown)"
    for var in MPIGRAD_DIR PYTHON NP LAUNCHER SRUN_ARGS MPIEXEC "$@"; do
        echo "$var=${!var}"
    done
    "$PYTHON" -c 'import sys; from mpi4py import MPI
print("python", sys.version.split()[0], "mpi4py on", MPI.Get_library_version().splitlines()[0].strip())' \
        || die "$PYTHON cannot import mpi4py (set PYTHON to the Python with mpigrad installed)"
}
