"""MPIGRAD_BACKWARD_TIMEOUT: the default timeout of dist_autograd.backward, read once per process.

Each case runs a one-rank program in a subprocess, so the variable is set before its first pass.
"""

import subprocess
import sys
import textwrap

import pytest
from spawn import child_env

# A tensor sent to this rank itself and never received: its send function waits for ever.
STALLED = textwrap.dedent(
    """
    import time
    import numpy as np
    import mpigrad as mg
    import mpigrad.distributed as dist
    import mpigrad.distributed.autograd as dist_autograd

    x = mg.tensor(np.ones(2), requires_grad=True)
    with dist_autograd.context() as context_id:
        dist.isend(x * 2.0, 0)
        start = time.monotonic()
        try:
            dist_autograd.backward(context_id, [])
        except Exception as exc:
            print(f"{time.monotonic() - start:.2f}", type(exc).__name__, exc)
    """
)


def _run(value):
    env = child_env(MPIGRAD_BACKWARD_TIMEOUT=value)
    return subprocess.run([sys.executable, "-c", STALLED], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_variable_sets_the_default_timeout():
    done = _run("0.5")
    assert done.returncode == 0, done.stderr
    seconds, kind, message = done.stdout.split(" ", 2)
    assert 0.45 <= float(seconds) < 5, done.stdout
    assert kind == "BackwardTimeoutError", done.stdout
    assert "timed out still waiting for: message id 0 from rank 0" in message, done.stdout


@pytest.mark.parametrize("value", ["soon", "1s"])
def test_a_value_that_is_not_seconds_is_an_error(value):
    done = _run(value)
    assert done.returncode == 0, done.stderr
    assert "ValueError MPIGRAD_BACKWARD_TIMEOUT must be a number of seconds" in done.stdout
    assert repr(value) in done.stdout
