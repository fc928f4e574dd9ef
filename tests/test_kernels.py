"""mpigrad.kernels on the host: results against NumPy and the sequential loop, bit for bit, on
every path (the serial loop, Numba serial and parallel passes, NumPy); dispatch; error texts;
the thread policy.

The CUDA kernels are tested in test_kernels_cuda.py."""

import contextlib
import os
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from spawn import MPIEXEC, child_env

from mpigrad import kernels
from mpigrad.kernels import dispatch, threads

PATHS = ("numba-serial", "numba-parallel", "numpy")
DTYPES = (np.float32, np.float64)


@contextlib.contextmanager
def forced(path, loop=False):
    """Make host calls take ``path``: no Numba for NumPy, else one pass on 1 or, from size 0 up,
    2 threads, small scatters included; with ``loop``, sums on "numba-serial" take the serial loop
    one source at a time (the Numba path of a single small source) instead of one pass."""
    with pytest.MonkeyPatch.context() as mp:
        if path == "numpy":
            mp.setattr(dispatch, "numba_kernels", lambda: None)
        else:
            mp.setattr(dispatch, "SCATTER_NUMPY_MAX_SIZE", -1)
        if path == "numba-parallel":
            mp.setattr(dispatch, "PARALLEL_MIN_SIZE", 0)
        if path == "numba-parallel" or path == "numba-serial" and not loop:
            mp.setattr(dispatch, "SMALL_MAX_BYTES", -1)
        kernels.set_num_threads(2 if path == "numba-parallel" else 1)
        try:
            yield
        finally:
            kernels.set_num_threads(None)


def assert_bits_equal(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert actual.tobytes() == expected.tobytes()


def spread(rng, shape, dtype=np.float32):
    """Values over six decades, so that float32 sums depend on the order of the terms."""
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter that imports this run's mpigrad."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def floats(dtype):
    return st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)


@st.composite
def addends(draw, count):
    """(dst, [src, ...]): ``count`` sources of one shape (0-d to 4-D, empty included) and dtype."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arrays = [draw(hnp.arrays(dtype, shape, elements=floats(dtype))) for _ in range(count + 1)]
    return arrays[0], arrays[1:]


@st.composite
def scatters(draw):
    """(dst, index, src) with duplicate and negative indices, index dtype int32 or int64."""
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 6))
    rest = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4))
    size = draw(st.integers(0, 20))
    index_dtype = st.sampled_from((np.int32, np.int64))
    index = draw(hnp.arrays(index_dtype, size, elements=st.integers(-rows, rows - 1)))
    dst = draw(hnp.arrays(dtype, (rows, *rest), elements=floats(dtype)))
    return dst, index, draw(hnp.arrays(dtype, (size, *rest), elements=floats(dtype)))


@pytest.mark.parametrize("path", PATHS)
@given(case=addends(1))
def test_accumulate_matches_numpy(path, case):
    dst, (src,) = case
    expected = dst + src
    with forced(path, loop=True):
        assert kernels.backend(dst, src) == path
        assert kernels.accumulate(dst, src) is dst
    assert_bits_equal(dst, expected)


@pytest.mark.parametrize("path", PATHS)
@given(case=st.integers(0, 9).flatmap(addends))
def test_sum_into_matches_sequential_loop(path, case):
    dst, srcs = case
    expected = dst.copy()
    for src in srcs:
        expected += src
    with forced(path):
        assert kernels.sum_into(dst, iter(srcs)) is dst
    assert_bits_equal(dst, expected)


@given(case=st.integers(0, 9).flatmap(addends))
def test_small_sum_into_adds_one_source_at_a_time_in_order(case):
    """Unforced, small arrays add each source as accumulate does (the loop), in order."""
    dst, srcs = case
    srcs = [src if i % 3 else src.copy(order="F") for i, src in enumerate(srcs)]  # mixed
    expected = dst.copy()
    for src in srcs:
        expected += src
    assert kernels.sum_into(dst, srcs) is dst
    assert_bits_equal(dst, expected)


@pytest.mark.parametrize("path", PATHS)
@given(case=scatters())
def test_scatter_add_matches_add_at(path, case):
    dst, index, src = case
    expected = dst.copy()
    np.add.at(expected, index, src)
    with forced(path):
        assert kernels.backend(dst, index, src) == path
        assert kernels.scatter_add(dst, index, src) is dst
    assert_bits_equal(dst, expected)


@pytest.fixture(scope="module")
def ordered_sum():
    """float32 (dst, srcs, loop result) above PARALLEL_MIN_SIZE, whose sum depends on the order."""
    rng = np.random.default_rng(7)
    dst, *srcs = (spread(rng, (1 << 20) + 3) for _ in range(7))  # + 3: uneven chunks
    forward, backward = dst.copy(), dst.copy()
    for src in srcs:
        forward += src
    for src in reversed(srcs):
        backward += src
    assert not np.array_equal(forward, backward)
    return dst, srcs, forward


@pytest.fixture(scope="module")
def ordered_scatter():
    """float32 (dst, index, src, loop result): 50 000 rows into 1000, duplicates in any order."""
    rng = np.random.default_rng(8)
    index = rng.integers(-1000, 1000, 50_000)
    src = spread(rng, (index.size, 16))
    dst = spread(rng, (1000, 16))
    forward, backward = dst.copy(), dst.copy()
    for i, j in enumerate(index):
        forward[j] += src[i]
    for i, j in reversed(list(enumerate(index))):
        backward[j] += src[i]
    assert not np.array_equal(forward, backward)
    return dst, index, src, forward


@pytest.mark.parametrize("path", PATHS)
def test_sum_into_keeps_float32_order_bit_for_bit(path, ordered_sum):
    dst, srcs, expected = ordered_sum
    dst = dst.copy()
    with forced(path):
        kernels.sum_into(dst, srcs)
    assert_bits_equal(dst, expected)


@pytest.mark.parametrize("path", PATHS)
def test_scatter_add_keeps_float32_order_bit_for_bit(path, ordered_scatter):
    dst, index, src, expected = ordered_scatter
    dst = dst.copy()
    with forced(path):
        kernels.scatter_add(dst, index, src)
    assert_bits_equal(dst, expected)


@given(case=addends(1), dtype=st.sampled_from(("int8", "uint16", "complex64", *DTYPES)))
def test_small_accumulate_takes_the_serial_loop(case, dtype):
    """By default (no forcing), a single small addend runs cpu.accumulate_small, any shape."""
    dst, (src,) = case
    if np.dtype(dtype).kind in "iu":  # wrap through int64, as integer gradients would
        dst, src = (np.asarray(np.rint(a)).astype(np.int64) for a in (dst, src))
    dst, src = dst.astype(dtype), src.astype(dtype)
    expected = dst.copy()
    expected += src  # in place: 0-d arrays wrap silently, as the loop does
    assert kernels.backend(dst, src) == "numba-serial"
    assert kernels.accumulate(dst, src) is dst
    assert_bits_equal(dst, expected)


def test_small_accumulate_of_shared_memory_matches_numpy():
    """The loop declines arrays that share memory; NumPy's add then runs (as if on a copy)."""
    line = np.arange(12.0)
    expected = line.copy()
    expected[1:] += expected[:-1].copy()
    assert kernels.backend(line[1:], line[:-1]) == "numpy"
    kernels.accumulate(line[1:], line[:-1])
    assert_bits_equal(line, expected)
    line = np.arange(12.0)
    assert kernels.backend(line, line) == "numpy"
    assert_bits_equal(kernels.accumulate(line, line), np.arange(12.0) * 2)
    assert_bits_equal(kernels.accumulate(line, line.view()), np.arange(12.0) * 4)


def test_dispatch_by_threads_size_and_addends():
    """Parallel with threads > 1 from PARALLEL_MIN_SIZE elements (the largest array counts), but
    scatters of at most SCATTER_NUMPY_MAX_SIZE source elements take np.add.at; below that, sums
    into a dst of up to SMALL_MAX_BYTES take the serial loop one C-contiguous source at a time,
    larger ones np.add for one source and one serial pass for several."""
    small = np.zeros(dispatch.PARALLEL_MIN_SIZE - 1)
    large = np.zeros(dispatch.PARALLEL_MIN_SIZE)
    cache_sized = np.zeros(dispatch.SMALL_MAX_BYTES // 8)
    try:
        kernels.set_num_threads(2)
        assert kernels.backend(cache_sized, cache_sized.copy()) == "numba-serial"
        assert kernels.backend(cache_sized[:-1], cache_sized[1:].copy()) == "numba-serial"
        assert kernels.backend(cache_sized, cache_sized.copy(), cache_sized.copy()) == (
            "numba-serial"
        )
        assert kernels.backend(np.zeros(cache_sized.size + 1), np.zeros(cache_sized.size + 1)) == (
            "numpy"
        )
        grid = np.zeros((4, 4), order="F")
        assert kernels.backend(grid, grid.copy(order="F"), grid.copy(order="F")) == "numpy"
        assert kernels.backend(small, small.copy()) == "numpy"
        assert kernels.backend(small, small.copy(), small.copy()) == "numba-serial"
        assert kernels.backend(large, large.copy()) == "numba-parallel"
        index = np.zeros(large.size // 4, np.int64)
        assert kernels.backend(small[:40].reshape(10, 4), index, large.reshape(-1, 4)) == (
            "numba-parallel"
        )
        small_rows = dispatch.SCATTER_NUMPY_MAX_SIZE // 4
        assert kernels.backend(
            small[:40].reshape(10, 4), index[:small_rows], np.zeros((small_rows, 4))
        ) == ("numpy")
        assert kernels.backend(
            small[:40].reshape(10, 4), index[: small_rows + 1], np.zeros((small_rows + 1, 4))
        ) == ("numba-serial")
        kernels.set_num_threads(1)
        assert kernels.backend(large, large.copy()) == "numpy"
        assert kernels.backend(large, large.copy(), large.copy()) == "numba-serial"
    finally:
        kernels.set_num_threads(None)


def test_layouts_numba_does_not_take_fall_back_to_numpy():
    rng = np.random.default_rng(1)
    grid = spread(rng, (6, 8), np.float64)
    line = grid.ravel()
    cases = {
        "strided": (grid[:, ::2].copy(), grid[:, 1::2]),
        "mixed C and F": (grid.copy(), np.asfortranarray(grid)),
        "overlapping": (line[:10], line[5:15]),
        "float16": (grid.astype(np.float16), grid.astype(np.float16)),
        "byte-swapped": (grid.astype(">f8"), grid.astype(">f8")),
        "subclass": (grid.copy().view(type("Sub", (np.ndarray,), {})), grid.copy()),
    }
    for name, (dst, src) in cases.items():
        expected = np.asarray(dst + src).astype(dst.dtype)
        assert kernels.backend(dst, src) == "numpy", name
        kernels.accumulate(dst, src)
        assert_bits_equal(np.asarray(dst), expected)

    # All F-contiguous: the loop (in cache) takes C order only, a pass over all sources takes both.
    dst, *srcs = (np.asfortranarray(a) for a in (grid, grid[::-1], grid[:, ::-1]))
    expected = dst + srcs[0] + srcs[1]
    assert kernels.backend(dst, *srcs) == "numpy"
    with forced("numba-serial"):
        assert kernels.backend(dst, *srcs) == "numba-serial"
        assert_bits_equal(kernels.sum_into(dst.copy(order="F"), srcs), expected)
    assert_bits_equal(kernels.sum_into(dst, srcs), expected)

    dst, index, src = np.zeros((4, 3)), np.array([0, 3, 3, -1, 1, 2]), grid[:, :3]
    expected = dst.copy()
    np.add.at(expected, index, src)
    assert kernels.backend(dst, index, src) == "numpy"
    assert_bits_equal(kernels.scatter_add(dst, index, src), expected)


@pytest.mark.parametrize("path", ("numba-serial", "numpy"))
@pytest.mark.parametrize(
    "index, message",
    [
        ([0, 3, 4, 5], "index 4 at position 2 is out of range for dst with 4 rows"),
        ([-4, -5], "index -5 at position 1 is out of range for dst with 4 rows"),
        (np.array([2**64 - 1], np.uint64), f"index {2**64 - 1} at position 0 is out of range"),
    ],
)
def test_scatter_add_rejects_out_of_range_index_before_writing(path, index, message):
    dst = np.zeros((4, 2), np.float32)
    index = np.asarray(index)
    with forced(path), pytest.raises(IndexError, match=f"^scatter_add: {message}"):
        kernels.scatter_add(dst, index, np.ones((index.size, 2), np.float32))
    assert not dst.any()


def read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: kernels.accumulate(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
         r"accumulate: shape mismatch: dst \(2, 3\) vs src \(3, 2\)"),
        (lambda: kernels.accumulate(np.zeros((2, 3)), np.zeros(3)), ValueError,
         r"accumulate: shape mismatch: dst \(2, 3\) vs src \(3,\)"),  # no broadcasting
        (lambda: kernels.accumulate(np.zeros(6, np.float32), np.zeros((2, 3), np.float32)),
         ValueError, r"accumulate: shape mismatch: dst \(6,\) vs src \(2, 3\)"),
        (lambda: kernels.accumulate(np.zeros(3), np.zeros(3, np.float32)), ValueError,
         "accumulate: dtype mismatch: dst float64 vs src float32"),
        (lambda: kernels.accumulate(read_only(np.zeros(3)), np.ones(3)), ValueError,
         "accumulate: dst is read-only"),
        (lambda: kernels.accumulate(np.zeros(1), [1.0]), TypeError,
         r"accumulate: expected NumPy or CUDA device arrays, argument 1 is \[1.0\]"),
        (lambda: kernels.sum_into(np.zeros(3), [np.zeros(3), np.zeros(4)]), ValueError,
         r"sum_into: shape mismatch: dst \(3,\) vs srcs\[1\] \(4,\)"),
        (lambda: kernels.sum_into(np.zeros(3), [np.zeros(3, np.int64)]), ValueError,
         r"sum_into: dtype mismatch: dst float64 vs srcs\[0\] int64"),
        (lambda: kernels.scatter_add(np.zeros((3, 2)), np.array([0.0]), np.zeros((1, 2))),
         TypeError, "scatter_add: index must have an integer dtype, got float64"),
        (lambda: kernels.scatter_add(np.zeros((3, 2)), np.array([True]), np.zeros((1, 2))),
         TypeError, "scatter_add: index must have an integer dtype, got bool"),
        (lambda: kernels.scatter_add(np.zeros((3, 2)), np.zeros((1, 1), int), np.zeros((1, 2))),
         ValueError, r"scatter_add: index must be 1-D, got shape \(1, 1\)"),
        (lambda: kernels.scatter_add(np.zeros(()), np.zeros(1, int), np.zeros(1)), ValueError,
         r"scatter_add: dst must have at least 1 dimension, got shape \(\)"),
        (lambda: kernels.scatter_add(np.zeros((3, 2)), np.zeros(2, int), np.zeros((2, 3))),
         ValueError, r"scatter_add: shape mismatch: src \(2, 3\) vs \(len\(index\), "
                     r"\*dst.shape\[1:\]\) \(2, 2\) for dst \(3, 2\)"),
        (lambda: kernels.scatter_add(np.zeros((3, 2)), np.zeros(1, int), np.zeros((1, 2), int)),
         ValueError, "scatter_add: dtype mismatch: dst float64 vs src int64"),
    ],
)  # fmt: skip
def test_error_messages(call, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        call()


@pytest.mark.parametrize(
    "environ, ranks",
    [
        ({}, 1),
        ({"MPI_LOCALNRANKS": "2", "PMI_SIZE": "8"}, 2),  # MPICH hydra sets both
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, 3),
        ({"SLURM_NTASKS_PER_NODE": "4", "SLURM_STEP_TASKS_PER_NODE": "9"}, 4),
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),5"}, 5),
        ({"PMI_SIZE": "6"}, 6),
        ({"MPI_LOCALNRANKS": "", "OMPI_COMM_WORLD_LOCAL_SIZE": "x", "PMI_SIZE": "2"}, 2),
        ({"MPI_LOCALNRANKS": "0"}, 1),
    ],
)
def test_local_ranks_from_launcher_variables(environ, ranks):
    assert threads.local_ranks(environ) == ranks


def test_default_num_threads_divides_cores_among_local_ranks():
    assert threads.default_num_threads({}, cores=8) == 8
    assert threads.default_num_threads({"MPI_LOCALNRANKS": "2"}, cores=8) == 4
    assert threads.default_num_threads({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, cores=8) == 2
    assert threads.default_num_threads({"MPI_LOCALNRANKS": "16"}, cores=8) == 1
    assert threads.default_num_threads({"MPIGRAD_NUM_THREADS": "3", "PMI_SIZE": "8"}, 8) == 3
    for value in ("0", "-1", "two"):
        with pytest.raises(
            ValueError, match=f"^MPIGRAD_NUM_THREADS must be a positive integer, got '{value}'$"
        ):
            threads.default_num_threads({"MPIGRAD_NUM_THREADS": value}, cores=8)


def test_the_ranks_sharing_the_cores_replace_the_launchers_count():
    # 16 ranks on the node, bound 4 cores each: none shares this rank's cores
    launcher = {"MPI_LOCALNRANKS": "16"}
    assert threads.default_num_threads(launcher, cores=4) == 1
    assert threads.default_num_threads(launcher, cores=4, sharing=1) == 4
    assert threads.default_num_threads(launcher, cores=4, sharing=2) == 2


def test_set_sharing_feeds_the_policy_and_leaves_a_chosen_count(monkeypatch):
    monkeypatch.delenv("MPIGRAD_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    try:
        threads.set_sharing(1)
        assert kernels.get_num_threads() == cores
        threads.set_sharing(cores)
        assert kernels.get_num_threads() == 1
        kernels.set_num_threads(5)
        threads.set_sharing(1)
        assert kernels.get_num_threads() == 5  # chosen: it stays
        for bad in (0, 1.5, True, "2"):
            with pytest.raises(ValueError, match="^set_sharing: ranks must be a positive integer"):
                threads.set_sharing(bad)
    finally:
        monkeypatch.setattr(threads, "_sharing", None)
        kernels.set_num_threads(None)


def test_set_num_threads_overrides_then_returns_to_the_policy(monkeypatch):
    monkeypatch.setenv("MPIGRAD_NUM_THREADS", "3")
    try:
        kernels.set_num_threads(5)
        assert kernels.get_num_threads() == 5
        kernels.set_num_threads(None)
        assert kernels.get_num_threads() == 3
        for bad in (0, 1.5, True, "2"):
            with pytest.raises(ValueError, match="^set_num_threads: n must be a positive integer"):
                kernels.set_num_threads(bad)
    finally:
        monkeypatch.undo()
        kernels.set_num_threads(None)


def test_policy_under_mpiexec_gives_two_ranks_half_the_cores_each():
    """MPICH hydra sets MPI_LOCALNRANKS (and PMI_SIZE); the policy must read it from a launch."""
    assert MPIEXEC, "mpiexec is neither next to the interpreter nor on PATH"
    env = {
        name: value
        for name, value in child_env().items()
        if name not in threads.LOCAL_SIZE_VARS + ("MPIGRAD_NUM_THREADS",)
    }
    code = (  # one line per rank, written whole: the two ranks share the pipe
        "import os; from mpigrad.kernels import threads; "
        "os.write(1, f'{threads.local_ranks(os.environ)} "
        "{threads.default_num_threads(cores=4)}\\n'.encode())"
    )
    done = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2 2", "2 2"]


def test_import_is_cheap_and_mpigrad_kernels_numpy_selects_numpy():
    done = run_python(
        "import sys, numpy as np; from mpigrad import kernels; "
        "print('numba' in sys.modules, kernels.backend(np.zeros(3), np.ones(3)), "
        "kernels.accumulate(np.zeros(3), np.ones(3)).sum())",
        MPIGRAD_KERNELS="numpy",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "numpy", "3.0"]


def test_numba_is_required_and_loads_on_the_first_host_call():
    """Numba is a dependency, with no fallback: without it mpigrad imports (Numba loads on the
    first host call), and that call fails naming Numba."""
    done = run_python(
        "import sys, numpy as np; sys.modules['numba'] = None; from mpigrad import kernels; "
        "kernels.accumulate(np.zeros(3), np.ones(3))"
    )
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1].startswith("ModuleNotFoundError: import of numba halted")


def test_stencils_take_the_numpy_rows_under_mpigrad_kernels_numpy():
    """With MPIGRAD_KERNELS=numpy mpigrad.stencil and its gradient run on reference.py's slices,
    and nothing loads Numba."""
    done = run_python(
        "import sys, numpy as np; import mpigrad as mg; "
        "x = mg.tensor(np.arange(6.0), requires_grad=True); "
        "mg.stencil(x, [1.0, -2.0, 1.0]).sum().backward(); "
        "print(mg.stencil(x, [1.0, 2.0]).data.tolist(), x.grad.data.tolist(), "
        "sys.modules.get('numba') is not None)",
        MPIGRAD_KERNELS="numpy",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("]")[0] == "[2.0, 5.0, 8.0, 11.0, 14.0"
    assert done.stdout.split("] ")[1] == "[1.0, -1.0, 0.0, 0.0, -1.0, 1.0"
    assert done.stdout.split()[-1] == "False"


def test_unknown_mpigrad_kernels_value_is_rejected():
    done = run_python(
        "import numpy as np; from mpigrad import kernels; kernels.backend(np.zeros(3))",
        MPIGRAD_KERNELS="gpu",
    )
    assert done.returncode != 0
    assert "ValueError: MPIGRAD_KERNELS must be 'auto' or 'numpy', got 'gpu'" in done.stderr
