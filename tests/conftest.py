"""Configuration shared by the serial tests and tests/mpi. Imports no MPI: tests/mpi does.

Hypothesis profiles: "dev" by default, "ci" where CI is set (the same examples every run,
no example database), or the one HYPOTHESIS_PROFILE names. Under mpiexec tests/mpi/conftest.py
loads its own "mpi" profile, which every rank must share.

The header names the mpigrad that the tests import. With MPIGRAD_TEST_INSTALLED=1 (set by
`make test`) the run stops unless that is the installed package, not the source tree.
"""

import importlib.util
import os
from pathlib import Path

import hypothesis
import pytest

SOURCE_TREE = Path(__file__).resolve().parent.parent / "mpigrad"

hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, print_blob=True
)
_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
hypothesis.settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _IN_CI else "dev")
)


def _mpigrad_location():
    """The folder `import mpigrad` would load, found without running mpigrad's code."""
    spec = importlib.util.find_spec("mpigrad")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def pytest_report_header(config):
    return f"mpigrad: {_mpigrad_location() or 'not importable'}"


def pytest_sessionstart(session):
    if os.environ.get("MPIGRAD_TEST_INSTALLED") != "1":
        return
    location = _mpigrad_location()
    if location is None or location == SOURCE_TREE:
        pytest.exit(
            f"MPIGRAD_TEST_INSTALLED=1 but mpigrad resolves to {location}, not the installed "
            "package: run pytest from the venv's bin/pytest, not `python -m pytest` in the tree",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
