"""Fresh processes started by serial tests: Python children and MPI jobs that cannot hang.

A child imports the same mpigrad as this test run (the source tree, or the installed package
under ``make test``) and sees none of the launcher variables of an MPI job around the suite.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mpigrad

IMPORT_ROOT = str(Path(mpigrad.__file__).resolve().parent.parent)  # holds this run's mpigrad
# The mpiexec of the MPI that mpi4py runs on: the MPICH wheel puts it beside python.
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside python or on PATH")


# Launcher variables (MPICH's hydra, Open MPI's, PMIx): a child that inherits them believes it
# is a rank of this job, and Open MPI's mpiexec refuses to start inside one. Open MPI's switches
# for running as root are not about the job, and are kept.
LAUNCHER_PREFIXES = ("PMI_", "HYDRA_", "MPI_", "OMPI_", "PMIX_")
KEPT = ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")


def child_env(**extra):
    """This process's environment without launcher variables, importing this run's mpigrad."""
    env = {k: v for k, v in os.environ.items() if k in KEPT or not k.startswith(LAUNCHER_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [IMPORT_ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_limited(command, limit, cwd=None, env=None):
    """Run ``command`` in a process group of its own; return (returncode, output, seconds).

    ``limit`` seconds also go to mpiexec as MPIEXEC_TIMEOUT; 15 s past it the whole group is
    killed and the test fails, so a hung child never hangs the suite.
    """
    env = child_env() if env is None else env
    env["MPIEXEC_TIMEOUT"] = str(limit)
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=limit + 15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command[:4]} still running after {limit + 15} s:\n{output}")
    return proc.returncode, output, time.monotonic() - start
