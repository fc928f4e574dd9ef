"""The softmax family, cross-entropy and the sigmoid on both host paths: the Numba loops of
``mpigrad.kernels.rows`` and the NumPy code of ``mpigrad.ops`` agree on every shape, dtype,
layout and non-finite row; each path's derivatives match finite differences; the loops take
exactly the arrays ``rows.py`` says they take."""

import contextlib
import subprocess
import sys

import numpy as np
import pytest
from op_cases import CASES
from spawn import child_env

import mpigrad as mg
from mpigrad import kernels
from mpigrad.kernels import dispatch, rows
from mpigrad.testing import check_grads

OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "sigmoid")


@contextlib.contextmanager
def numpy_path():
    """Host calls take NumPy, as under ``MPIGRAD_KERNELS=numpy``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "numba_kernels", lambda: None)
        yield


def targets(x):
    return np.arange(x.shape[0]) % x.shape[1]


def taken(op, x, axes):
    """Whether the loops take ``op``'s forward on ``x`` over ``axes``."""
    if op == "cross_entropy":
        return kernels.cross_entropy(x, targets(x)) is not None
    return (kernels.sigmoid(x) if op == "sigmoid" else getattr(kernels, op)(x, axes)) is not None


def run(op, x, axis):
    """``op`` over ``axis`` of ``x``: the output and the gradient of ``sum(out * w)`` (array mode)
    for fixed weights ``w``."""
    t = mg.tensor(x, requires_grad=True)
    if op == "cross_entropy":
        out = mg.cross_entropy(t, targets(x))
    elif op == "sigmoid":
        out = mg.sigmoid(t)
    elif op == "logsumexp":
        out = mg.logsumexp(t, axis, keepdims=True)
    else:
        out = getattr(mg, op)(t, axis)
    w = np.linspace(-1.0, 2.0, out.size).reshape(out.shape).astype(x.dtype)
    (out * mg.tensor(w)).sum().backward()
    return out.data, t.grad.data


def assert_paths_agree(op, x, axis=-1):
    """The loops and NumPy give the same outputs and gradients, NaN and infinity included, to
    a few units in the last place (the order of a row's sum differs)."""
    got = run(op, x, axis)
    with numpy_path():
        want = run(op, x, axis)
    rtol = 1e-13 if x.dtype == np.float64 else 2e-6
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        atol = rtol * max(1.0, float(np.max(np.abs(w), initial=0.0, where=np.isfinite(w))))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))


def logits(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (128, 10), (2, 3, 5)])
@pytest.mark.parametrize("op", OPS)
def test_loops_agree_with_numpy(op, shape, dtype):
    if op == "cross_entropy" and len(shape) != 2:
        shape = shape[:2]
    x = logits(shape, dtype)
    assert taken(op, x, (len(shape) - 1,))
    assert_paths_agree(op, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_non_finite_rows_as_numpy(op, dtype):
    """Rows holding +inf, -inf or NaN, alone or with finite entries, among finite rows."""
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [0.5, inf, -1.0],
            [-inf, -inf, -inf],
            [-inf, 2.0, -inf],
            [nan, 1.0, 2.0],
            [inf, inf, 1.0],
            [inf, -inf, nan],
            [1e30, -1e30, 0.0],
            [0.1, 0.2, 0.3],
        ],
        dtype,
    )
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        assert_paths_agree(op, x)


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_all_axes_and_a_single_row_take_the_loops(op):
    x = logits((4, 5), np.float64)
    assert taken(op, x, (0, 1))
    assert_paths_agree(op, x, axis=(0, 1) if op == "logsumexp" else -1)
    assert taken(op, x[:1], (1,)) and not taken(op, x[:1], (0,))


LAYOUTS = {
    "strided": (logits((3, 4), np.float64)[:, ::2], (1,)),
    "fortran": (logits((4, 3), np.float64).T, (1,)),
    "empty": (np.zeros((0, 3)), (1,)),
    "float16": (logits((3, 4), np.float16), (1,)),  # a dtype the loops lack
    "float32-large": (logits((rows.FLOAT32_MAX_SIZE + 1,), np.float32), (0,)),
    "axis0": (logits((3, 4), np.float64), (0,)),  # not the last axis
    "some-axes": (logits((2, 3, 4), np.float64), (0, 2)),  # some axes, not all
}
REDUCING = ("softmax", "log_softmax", "logsumexp")


@pytest.mark.parametrize(
    "op, layout",
    [(op, layout) for op in REDUCING for layout in LAYOUTS]
    + [("sigmoid", layout) for layout in list(LAYOUTS)[:4]],
)
def test_other_arrays_take_numpy_and_agree(op, layout):
    x, axes = LAYOUTS[layout]
    assert not taken(op, x, axes)
    assert_paths_agree(op, x, axis=axes if op == "logsumexp" else axes[-1])


def test_the_sigmoid_takes_float32_of_any_size():
    x = LAYOUTS["float32-large"][0]
    assert taken("sigmoid", x, None)
    assert_paths_agree("sigmoid", x)


def test_gradients_the_loops_do_not_take_go_to_numpy():
    out = kernels.softmax(logits((3, 4), np.float64), (1,))
    assert kernels.softmax_backward(out, np.ones((4, 3)).T, (1,)) is None
    assert kernels.softmax_backward(out, np.ones((3, 4), np.float32), (1,)) is None
    assert kernels.sigmoid_backward(out, np.ones((3, 1))) is None
    assert kernels.cross_entropy_backward(out.T, out.T, targets(out.T), np.ones(())) is None
    assert kernels.softmax_backward(out, np.ones((3, 4)), (1,)) is not None


def test_mpigrad_kernels_numpy_keeps_numba_unloaded():
    code = (
        "import sys, numpy as np, mpigrad as mg; "
        "x = mg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True); "
        "(mg.softmax(x) + mg.log_softmax(x) + mg.sigmoid(x)).sum().backward(); "
        "(mg.logsumexp(x, 1) * 2).sum().backward(); "
        "mg.cross_entropy(x, np.array([0, 2])).backward(); "
        "print(np.round(x.grad.data, 6).tolist(), 'numba' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(MPIGRAD_KERNELS="numpy"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


@pytest.mark.parametrize("case", [c for c in CASES if c.name in OPS], ids=lambda c: f"{c.id}-numpy")
def test_numpy_path_derivatives_match_finite_differences(case):
    """test_ops runs the op table on the loops; this runs these ops' cases on NumPy."""
    with numpy_path():
        check_grads(
            case.fn,
            case.inputs(np.random.default_rng(0)),
            order=case.order,
            **case.tolerances,
        )
