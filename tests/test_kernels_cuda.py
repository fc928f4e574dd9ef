"""mpigrad.kernels on CUDA device arrays, against the sequential loop, bit for bit.

The checks (``CHECKS``) run in a subprocess under the Numba CUDA simulator, since
``NUMBA_ENABLE_CUDASIM=1`` must be set before numba.cuda is first imported; with
``MPIGRAD_TEST_REAL_GPU=1`` they run in this process on the GPU instead (which must exist).
Run as a script, this file runs every check and prints ``{check name: "ok" or traceback}`` as
one JSON line. Arrays stay small: the simulator runs each GPU thread in Python.
"""

import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest
from spawn import child_env

from mpigrad import kernels

CHECKS = {}


def check(function):
    CHECKS[function.__name__] = function
    return function


def spread(rng, shape, dtype=np.float32):
    """Values over six decades, so that float32 sums depend on the order of the terms."""
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)


def assert_bits_equal(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert actual.tobytes() == expected.tobytes()


def expect_error(error, message, call):
    try:
        call()
    except error as raised:
        assert str(raised) == message, str(raised)
    else:
        raise AssertionError(f"no {error.__name__}: {message}")


@check
def sum_into_matches_the_loop_on_any_shape():
    from numba import cuda

    rng = np.random.default_rng(0)
    shapes = [(), (0,), (7,), (3, 0), (5, 9), (2, 3, 4), (2, 1, 3, 2)]
    for dtype in (np.float32, np.float64):
        for count, shape in enumerate(shapes):
            host = [spread(rng, shape, dtype) for _ in range(count + 1)]
            expected = host[0].copy()
            for src in host[1:]:
                expected += src
            dst, *srcs = (cuda.to_device(a) for a in host)
            assert kernels.backend(dst, *srcs) == "cuda"
            assert kernels.sum_into(dst, srcs) is dst
            assert_bits_equal(dst.copy_to_host(), expected)


@check
def accumulate_matches_numpy_in_c_and_f_order():
    from numba import cuda

    rng = np.random.default_rng(1)
    for order in "CF":
        dst_host, src_host = (np.asarray(spread(rng, (6, 5)), order=order) for _ in range(2))
        dst = cuda.to_device(dst_host)
        assert kernels.accumulate(dst, cuda.to_device(src_host)) is dst
        assert_bits_equal(dst.copy_to_host(), dst_host + src_host)


@check
def sum_into_keeps_float32_order_bit_for_bit():
    from numba import cuda

    rng = np.random.default_rng(2)
    host = [spread(rng, 300) for _ in range(10)]
    forward, backward = host[0].copy(), host[0].copy()
    for src in host[1:]:
        forward += src
    for src in reversed(host[1:]):
        backward += src
    assert not np.array_equal(forward, backward)
    dst = cuda.to_device(host[0])
    kernels.sum_into(dst, [cuda.to_device(src) for src in host[1:]])
    assert_bits_equal(dst.copy_to_host(), forward)


@check
def scatter_add_matches_the_loop_with_duplicates_and_negatives():
    from numba import cuda

    rng = np.random.default_rng(3)
    for rows, rest, size, index_dtype in [
        (5, (), 40, np.int64),
        (7, (3,), 60, np.int32),
        (4, (2, 3), 30, np.int64),
        (3, (0,), 5, np.int32),
        (6, (2,), 0, np.int64),
    ]:
        index = rng.integers(-rows, rows, size).astype(index_dtype)
        src = spread(rng, (size, *rest))
        expected = spread(rng, (rows, *rest))
        dst = cuda.to_device(expected)
        for i, j in enumerate(index):
            expected[j] += src[i]
        args = (dst, cuda.to_device(index), cuda.to_device(src))
        assert kernels.backend(*args) == "cuda"
        assert kernels.scatter_add(*args) is dst
        assert_bits_equal(dst.copy_to_host(), expected)


@check
def scatter_add_rejects_out_of_range_index_before_writing():
    from numba import cuda

    dst = cuda.to_device(np.zeros((4, 2), np.float32))
    for index, message in [
        ([0, 3, 4, 9, 5], "index 4 at position 2 is out of range for dst with 4 rows"),
        ([-4, -5], "index -5 at position 1 is out of range for dst with 4 rows"),
    ]:
        src = np.ones((len(index), 2), np.float32)
        args = (dst, cuda.to_device(np.array(index)), cuda.to_device(src))
        expect_error(IndexError, f"scatter_add: {message}", lambda a=args: kernels.scatter_add(*a))
    assert not dst.copy_to_host().any()


@check
def bad_arguments_are_rejected_by_text():
    from numba import cuda

    c_order = cuda.to_device(np.zeros((3, 2)))
    transposed = cuda.to_device(np.zeros((2, 3))).T
    expect_error(
        ValueError,
        "accumulate: cannot mix host and device arrays (on device: argument positions [0] of 2)",
        lambda: kernels.accumulate(c_order, np.zeros((3, 2))),
    )
    expect_error(
        ValueError,
        "accumulate: device arrays must be all C- or all F-contiguous, got (shape, strides) "
        "[((3, 2), (16, 8)), ((3, 2), (8, 24))]",
        lambda: kernels.accumulate(c_order, transposed),
    )
    expect_error(
        ValueError,
        "sum_into: dtype mismatch: dst float64 vs srcs[0] float32",
        lambda: kernels.sum_into(c_order, [cuda.to_device(np.zeros((3, 2), np.float32))]),
    )
    expect_error(
        TypeError,
        "scatter_add: index must have an integer dtype, got float64",
        lambda: kernels.scatter_add(c_order, cuda.to_device(np.zeros(1)), c_order[:1]),
    )


def run_checks():
    """Run every check here; return {name: "ok" or the traceback}."""
    results = {}
    for name, function in CHECKS.items():
        try:
            function()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def results():
    if os.environ.get("MPIGRAD_TEST_REAL_GPU") == "1":
        from numba import cuda

        assert cuda.is_available(), "MPIGRAD_TEST_REAL_GPU=1 but numba.cuda finds no GPU"
        return run_checks()
    done = subprocess.run(
        [sys.executable, __file__],
        env=child_env(NUMBA_ENABLE_CUDASIM="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_kernels(name, results):
    assert results[name] == "ok", results[name]


if __name__ == "__main__":
    print(json.dumps(run_checks()))
