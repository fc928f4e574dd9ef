#!/usr/bin/env python3
"""Rank-local engine: mpigrad's forward + backward against hand-written numpy and torch CPU eager.

Cases (a sample is one forward and one backward pass; the gradients are set to None after it):

- ``chain``: ``--ops`` elementwise ops on a 1-element float64 tensor, cycling ``y * c``,
  ``sin(y)``, ``y + c``: the cost of recording and running one node.  Baseline: torch, the same
  chain; reported per op.  Target: mpigrad / torch <= 1.0.
- ``fanin``: ``--ops`` binary ops ``y * x``, ``y + x`` with one leaf ``x``, so that every op
  also sends a gradient to ``x``.  Baseline and target as for ``chain``.
- ``ops``: for each op of ``mpigrad.ops.__all__``, a chain of ``--ops`` calls of it on a
  1-element float64 leaf (``_op_rows``): the cost of recording and running that op.  A binary op
  has two rows, its other operand a 1-element constant Tensor (``tensor``) or a Python number
  (``scalar``).  An op that changes the shape alternates with its inverse, and both are named in
  the row (``exp, log``; ``unsqueeze, squeeze``; ``broadcast_to, sum_to``; ``stack`` with an
  integer index; ``cross_entropy`` with ``reshape``).  Baseline: torch, the same chain of its
  counterpart of each op (``stencil``: ``conv1d``; ``sum_to``: ``sum_to_size``; ``alias``:
  ``view_as``; ``maximum``/``minimum`` of a scalar: ``clamp``), so every op has one and none is
  left out of the targets.  Targets: every row mpigrad / torch <= 1.0, and their geometric mean
  <= 0.8.  ``--op NAME ...`` keeps the rows that time those ops.
- ``mlp``: 784-512-512-10, batch 128, relu, cross-entropy (mean) on integer targets, in each of
  ``--dtypes`` (float64 and float32).  Baselines: the same network in numpy with its backward
  written by hand (the compute floor: the same matmuls, sums, masks, log-softmax and NLL, nothing
  more), and torch.  Target: mpigrad / numpy <= 1.10 in each dtype (``make bench`` runs it at 1
  and 2 threads).  ``peak MiB``: what one step adds to the resident memory of a fresh process
  that has built the subject's network and batch (its peak during the first 5 steps, less its
  resident memory before them), measured in a child process per subject.  The child first runs
  one step of the same network at a tiny size, which loads what a process loads once (Numba and
  the kernels the step runs, for mpigrad: about 120 MiB; torch's lazily made state), then hands
  the free pages back to the kernel (``mpigrad.memory.release``).

Every subject's output and gradients are checked against a reference before timing.  torch is
optional (``make torch``): without it the torch rows are skipped, and the chain cases report
mpigrad's time per op alone (the ops case, whose reference is torch, then checks only that
every result is finite).

``--threads`` (default 1) sets the threads of BLAS, OpenMP, torch and mpigrad's kernels alike;
more than one gives stable numbers only on a quiet machine, and times torch's mlp in rounds of
its own (its idle OpenMP workers spin on the cores the next subject needs).  The garbage
collector stays on, as in user code (``--no-gc`` turns it off while timing); the allocator is as
mpigrad sets it on import (``MPIGRAD_KEEP_FREED_MEMORY=0`` keeps glibc's defaults).
``--profile CASE`` runs mpigrad's side of CASE under cProfile instead of timing.  The engine is
rank-local: under mpiexec, rank 0 measures and the other ranks exit at once, without
initializing MPI.

    python benchmarks/bench_engine.py [--quick] [--threads N] [--cases chain fanin ops mlp]
        [--reps N] [--ops N] [--op NAME ...] [--dtypes float64 float32] [--no-torch] [--no-gc]
        [--profile CASE]
"""

import argparse
import functools
import gc
import math
import statistics
import subprocess
import sys
from time import perf_counter
from typing import NamedTuple

import _common

CASES = ("chain", "fanin", "ops", "mlp")
DTYPES = ("float64", "float32")


def parse_args():
    p = _common.parser(__doc__)
    p.add_argument("--threads", type=_common.positive, default=1, help="threads (default 1)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--ops", type=_common.positive, default=1000, help="ops (chain, fanin, ops)")
    p.add_argument("--op", nargs="+", metavar="NAME", help="ops case: only the rows of these ops")
    p.add_argument("--no-torch", action="store_true", help="skip torch even where installed")
    p.add_argument("--no-gc", action="store_true", help="garbage collector off while timing")
    p.add_argument("--profile", choices=CASES, help="profile mpigrad's side of CASE instead")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="mlp's")
    p.add_argument("--peak-of", nargs=2, metavar=("SUBJECT", "DTYPE"), help=argparse.SUPPRESS)
    return p.parse_args()


ARGS = parse_args()
if _common.launcher_rank() != 0:
    sys.exit(0)  # rank 0 measures alone: a rank waiting in a barrier would busy-poll a core
_common.prepare(ARGS.threads)

import numpy as np  # noqa: E402

import mpigrad as mg  # noqa: E402

# --- workloads: the chain drivers take mpigrad's and torch's Tensors alike -------------------

MUL_C, ADD_C, CHAIN_X0 = 1.1, 0.1, 0.3
SIZES, BATCH = (784, 512, 512, 10), 128  # the mlp case
FANIN_X, FANIN_Y0 = 0.5, 0.3


def run_chain(y, n):
    """``n`` ops: y * c, sin(y), y + c, repeated."""
    for i in range(n):
        k = i % 3
        y = y * MUL_C if k == 0 else y.sin() if k == 1 else y + ADD_C
    return y


def run_fanin(y, x, n):
    """``n`` ops: y * x, y + x, repeated; each sends a gradient to ``x``."""
    for i in range(n):
        y = y * x if i % 2 == 0 else y + x
    return y


def chain_reference(case, n):
    """(y, dy/dx) of run_chain (x = y0) or run_fanin (y0 a constant), in Python floats."""
    if case == "chain":
        y, d = CHAIN_X0, 1.0
        for i in range(n):
            k = i % 3
            if k == 0:
                y, d = y * MUL_C, d * MUL_C
            elif k == 1:
                y, d = math.sin(y), d * math.cos(y)
            else:
                y = y + ADD_C
        return y, d
    x, y, d = FANIN_X, FANIN_Y0, 0.0
    for i in range(n):
        y, d = (y * x, d * x + y) if i % 2 == 0 else (y + x, d + 1.0)
    return y, d


def chain_subject(case, n, lib):
    """The chain or fanin case on ``lib`` (mpigrad or torch)."""
    if case == "chain":
        leaf = lib.tensor(np.array([CHAIN_X0]), requires_grad=True)
        forward = functools.partial(run_chain, leaf, n)
    else:
        leaf = lib.tensor(np.array([FANIN_X]), requires_grad=True)
        forward = functools.partial(run_fanin, lib.tensor(np.array([FANIN_Y0])), leaf, n)
    return subject([leaf], forward, lambda y: (_first(y), _first(leaf.grad)))


class MLP:
    """Subjects of the mlp case, all on the same weights and batch."""

    def __init__(self, dtype, seed=0, sizes=SIZES, batch=BATCH):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch, sizes[0])).astype(dtype)
        self.targets = rng.integers(0, sizes[-1], batch)
        self.params = []  # W1, b1, W2, b2, W3, b3 (He init)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            weight = rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
            self.params += [
                weight.astype(dtype),
                (rng.standard_normal(fan_out) * 0.1).astype(dtype),
            ]

    def numpy_step(self):
        """(loss, grads, times): the forward, and the backward derived by hand."""
        W1, b1, W2, b2, W3, b3 = self.params
        x, t = self.x, self.targets
        n = x.shape[0]
        rows = np.arange(n)
        t0 = perf_counter()
        z1 = x @ W1 + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ W2 + b2
        h2 = np.maximum(z2, 0)
        z3 = h2 @ W3 + b3
        shifted = z3 - z3.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[rows, t].mean()
        t1 = perf_counter()
        dz3 = np.exp(logp)  # softmax
        dz3[rows, t] -= 1.0
        dz3 /= n
        dW3 = h2.T @ dz3
        db3 = dz3.sum(axis=0)
        dz2 = (dz3 @ W3.T) * (z2 > 0)
        dW2 = h1.T @ dz2
        db2 = dz2.sum(axis=0)
        dz1 = (dz2 @ W2.T) * (z1 > 0)
        dW1 = x.T @ dz1
        db1 = dz1.sum(axis=0)
        t2 = perf_counter()
        times = {"time": t2 - t0, "forward": t1 - t0, "backward": t2 - t1}
        return loss, [dW1, db1, dW2, db2, dW3, db3], times

    def numpy_subject(self):
        def sample():
            return self.numpy_step()[2]

        sample.value = lambda: self.numpy_step()[:2]
        return sample

    def autograd_subject(self, lib):
        """The network on ``lib`` (mpigrad or torch)."""
        params = [lib.tensor(p, requires_grad=True) for p in self.params]
        x = lib.tensor(self.x)
        if lib is mg:
            relu, cross_entropy, targets = mg.relu, mg.cross_entropy, self.targets
        else:
            relu, cross_entropy = lib.relu, lib.nn.functional.cross_entropy
            targets = lib.from_numpy(self.targets)

        def forward():
            W1, b1, W2, b2, W3, b3 = params
            h = relu(relu(x @ W1 + b1) @ W2 + b2)
            return cross_entropy(h @ W3 + b3, targets)

        return subject(
            params,
            forward,
            lambda loss: (
                float(loss.detach().numpy()),
                [p.grad.detach().numpy().copy() for p in params],
            ),
        )


def subject(params, forward, read):
    """A sample: times one forward and one backward, then sets the params' .grad to None;
    ``.value()`` runs one and returns ``read(output)``."""

    def sample():
        t0 = perf_counter()
        out = forward()
        t1 = perf_counter()
        out.backward()
        t2 = perf_counter()
        for p in params:
            p.grad = None
        return {"time": t2 - t0, "forward": t1 - t0, "backward": t2 - t1}

    def value():
        out = forward()
        out.backward()
        result = read(out)
        for p in params:
            p.grad = None
        return result

    sample.value = value
    return sample


def _first(t):
    """The first element of a Tensor (mpigrad's or torch's) as a float."""
    return float(t.detach().numpy()[0])


def check(case, subjects, reference, tolerance=1e-10):
    """Every subject's (output, gradients) equals ``reference``'s to ``tolerance``, or exit."""
    want_out, want_grads = reference
    for name, sample in subjects.items():
        got_out, got_grads = sample.value()
        pairs = [("output", got_out, want_out)]
        if case == "mlp":
            pairs += [(f"grad {i}", g, w) for i, (g, w) in enumerate(zip(got_grads, want_grads))]
        else:
            pairs.append(("gradient", got_grads, want_grads))
        for what, got, want in pairs:
            got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
            scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
            if got.shape != want.shape or not np.allclose(
                got, want, rtol=tolerance, atol=tolerance * scale
            ):
                sys.exit(f"bench_engine: {case} {name}: {what} differs from the reference")


# --- the ops case: one chain per op ----------------------------------------------------------


class OpRow(NamedTuple):
    """A chain of the ops case: ``step(lib, y, k, c)`` is step ``k`` on ``lib`` (mpigrad or
    torch) from ``y``, with the operand ``c = operand(lib)`` (None for a unary op);
    ``torch_step`` where torch's call differs.  The leaf has ``shape`` and the value ``x0``."""

    label: str
    names: tuple  # the names of mpigrad.ops.__all__ it times
    step: object
    torch_step: object = None
    operand: object = None
    kind: str = ""  # binary ops: "tensor" or "scalar", the other operand
    shape: tuple = (1,)
    x0: float = 0.3


def _constant(lib, value, shape=(1,)):
    """A constant (no gradient) float64 Tensor of ``lib`` filled with ``value``."""
    return lib.tensor(np.full(shape, value))


def _index(lib, values):
    return lib.tensor(np.array(values)) if lib is not mg else np.array(values)


def _binary(name, step, value, torch_scalar_step=None, x0=0.3):
    """The two rows of a binary op: the other operand a Tensor, then a Python number."""
    return [
        OpRow(name, (name,), step, None, lambda lib: _constant(lib, value), "tensor", x0=x0),
        OpRow(name, (name,), step, torch_scalar_step, lambda lib: value, "scalar", x0=x0),
    ]


def _unary(name, step, torch_step=None, **row):
    return OpRow(name, (name,), step, torch_step, **row)


def _alternate(first, second):
    """A step that applies ``first`` at even steps and ``second`` at odd ones."""
    return lambda lib, y, k, c: first(lib, y, c) if k % 2 == 0 else second(lib, y, c)


def _op_rows():
    """Every row of the ops case; values stay finite and gradients away from 0 and inf over
    thousands of steps where the op allows (sqrt's, cos's and sigmoid's gradients shrink)."""
    cond = lambda lib: lib.tensor(np.array([True]))  # noqa: E731
    rows = [
        *_binary("add", lambda lib, y, k, c: y + c, 0.1),
        *_binary("sub", lambda lib, y, k, c: y - c, 0.1),
        *_binary("mul", lambda lib, y, k, c: y * c, 1.001),
        *_binary("div", lambda lib, y, k, c: y / c, 1.001),
        *_binary("pow", lambda lib, y, k, c: y**c, 1.0001, x0=1.3),
        *_binary(
            "maximum",
            lambda lib, y, k, c: lib.maximum(y, c),
            0.1,
            lambda lib, y, k, c: y.clamp(min=c),
        ),
        *_binary(
            "minimum",
            lambda lib, y, k, c: lib.minimum(y, c),
            0.5,
            lambda lib, y, k, c: y.clamp(max=c),
        ),
        OpRow(
            "where",
            ("where",),
            lambda lib, y, k, c: lib.where(c[0], y, c[1]),
            operand=lambda lib: (cond(lib), _constant(lib, 0.0)),
            kind="tensor",
        ),
        OpRow(
            "where",
            ("where",),
            lambda lib, y, k, c: lib.where(c, y, 0.0),
            operand=cond,
            kind="scalar",
        ),
        _unary("neg", lambda lib, y, k, c: -y),
        OpRow(
            "exp, log",
            ("exp", "log"),
            _alternate(lambda lib, y, c: lib.exp(y), lambda lib, y, c: lib.log(y)),
        ),
        _unary("sqrt", lambda lib, y, k, c: lib.sqrt(y), x0=1.3),
        _unary("abs", lambda lib, y, k, c: lib.abs(y), x0=-0.3),
        _unary("sin", lambda lib, y, k, c: lib.sin(y)),
        _unary("cos", lambda lib, y, k, c: lib.cos(y)),
        _unary("tanh", lambda lib, y, k, c: lib.tanh(y)),
        _unary("sigmoid", lambda lib, y, k, c: lib.sigmoid(y)),
        _unary("relu", lambda lib, y, k, c: lib.relu(y)),
        _unary("clamp", lambda lib, y, k, c: lib.clamp(y, -1.0, 1.0)),
        OpRow(
            "astype",
            ("astype",),
            _alternate(
                lambda lib, y, c: y.astype(np.float32), lambda lib, y, c: y.astype(np.float64)
            ),
            _alternate(lambda lib, y, c: y.float(), lambda lib, y, c: y.double()),
        ),
        _unary("sum", lambda lib, y, k, c: lib.sum(y, 0, True)),
        _unary("mean", lambda lib, y, k, c: lib.mean(y, 0, True)),
        _unary(
            "max", lambda lib, y, k, c: mg.max(y, 0, True), lambda lib, y, k, c: y.amax(0, True)
        ),
        _unary(
            "min", lambda lib, y, k, c: mg.min(y, 0, True), lambda lib, y, k, c: y.amin(0, True)
        ),
        OpRow(
            "broadcast_to, sum_to",
            ("broadcast_to", "sum_to"),
            _alternate(
                lambda lib, y, c: lib.broadcast_to(y, (1, 1)), lambda lib, y, c: mg.sum_to(y, (1,))
            ),
            _alternate(
                lambda lib, y, c: y.broadcast_to((1, 1)), lambda lib, y, c: y.sum_to_size((1,))
            ),
        ),
        _unary(
            "reshape",
            _alternate(
                lambda lib, y, c: lib.reshape(y, (1, 1)), lambda lib, y, c: lib.reshape(y, (1,))
            ),
        ),
        _unary("permute", lambda lib, y, k, c: lib.permute(y, (1, 0)), shape=(1, 1)),
        _unary("transpose", lambda lib, y, k, c: lib.transpose(y, 0, 1), shape=(1, 1)),
        OpRow(
            "unsqueeze, squeeze",
            ("unsqueeze", "squeeze"),
            _alternate(lambda lib, y, c: lib.unsqueeze(y, 0), lambda lib, y, c: lib.squeeze(y, 0)),
        ),
        _unary("getitem", lambda lib, y, k, c: y[0:1]),
        _unary(
            "index_select",
            lambda lib, y, k, c: lib.index_select(y, 0, c),
            operand=lambda lib: _index(lib, [0]),
        ),
        _unary("cat", lambda lib, y, k, c: lib.cat([y], 0)),
        OpRow(
            "stack",
            ("stack",),
            _alternate(lambda lib, y, c: lib.stack([y], 0), lambda lib, y, c: y[0]),
        ),
        _unary("split", lambda lib, y, k, c: lib.split(y, 1, 0)[0]),
        _unary(
            "pad",
            lambda lib, y, k, c: mg.pad(y, (0, 0)),
            lambda lib, y, k, c: lib.nn.functional.pad(y, (0, 0)),
        ),
        _unary("alias", lambda lib, y, k, c: mg.alias(y), lambda lib, y, k, c: y.view_as(y)),
        OpRow(
            "matmul",
            ("matmul",),
            lambda lib, y, k, c: lib.matmul(y, c),
            operand=lambda lib: _constant(lib, 1.001, (1, 1)),
            kind="tensor",
            shape=(1, 1),
        ),
        OpRow(
            "linear",
            ("linear",),
            lambda lib, y, k, c: mg.linear(y, c),
            lambda lib, y, k, c: lib.nn.functional.linear(y, c),
            lambda lib: _constant(lib, 1.001, (1, 1)),
            "tensor",
            shape=(1, 1),
        ),
        _unary("softmax", lambda lib, y, k, c: lib.softmax(y, -1)),
        _unary("log_softmax", lambda lib, y, k, c: lib.log_softmax(y, -1)),
        _unary("logsumexp", lambda lib, y, k, c: lib.logsumexp(y, 0, True)),
        OpRow(
            "cross_entropy, reshape",
            ("cross_entropy",),
            _alternate(
                lambda lib, y, c: mg.cross_entropy(y, c), lambda lib, y, c: lib.reshape(y, (1, 1))
            ),
            _alternate(
                lambda lib, y, c: lib.nn.functional.cross_entropy(y, c),
                lambda lib, y, c: lib.reshape(y, (1, 1)),
            ),
            lambda lib: _index(lib, [0]),
            shape=(1, 1),
        ),
        OpRow(
            "mse_loss",
            ("mse_loss",),
            lambda lib, y, k, c: mg.mse_loss(y, c),
            lambda lib, y, k, c: lib.nn.functional.mse_loss(y, c),
            lambda lib: _constant(lib, 0.25, ()),
            "tensor",
            shape=(),
        ),
        OpRow(
            "stencil",
            ("stencil",),
            lambda lib, y, k, c: mg.stencil(y, c),
            lambda lib, y, k, c: lib.nn.functional.conv1d(y, c),
            lambda lib: np.array([1.001]) if lib is mg else _constant(lib, 1.001, (1, 1, 1)),
            "tensor",
            shape=(1, 1),
        ),
    ]
    unknown = {name for row in rows for name in row.names} - set(mg.ops.__all__)
    missing = set(mg.ops.__all__) - {name for row in rows for name in row.names}
    if unknown or missing:
        sys.exit(
            f"bench_engine: ops case: no row for {sorted(missing)}; rows for ops that "
            f"mpigrad.ops.__all__ lacks: {sorted(unknown)}"
        )
    if ARGS.op:
        strangers = set(ARGS.op) - set(mg.ops.__all__)
        if strangers:
            sys.exit(f"bench_engine: --op: not in mpigrad.ops.__all__: {sorted(strangers)}")
        rows = [row for row in rows if set(row.names) & set(ARGS.op)]
    return rows


def op_subject(row, n, lib):
    """The chain of ``row`` on ``lib`` (mpigrad or torch): ``n`` steps from a leaf."""
    leaf = lib.tensor(np.full(row.shape, row.x0), requires_grad=True)
    c = None if row.operand is None else row.operand(lib)
    step = row.step if lib is mg or row.torch_step is None else row.torch_step

    def forward():
        y = leaf
        for k in range(n):
            y = step(lib, y, k, c)
        return y

    def read(y):
        return _value(y), _value(leaf.grad)

    return subject([leaf], forward, read)


def _value(t):
    """The one element of a Tensor (mpigrad's or torch's) as a float."""
    return float(t.detach().numpy().reshape(-1)[0])


def check_op(row, subjects):
    """mpigrad's output and gradient equal torch's (relative 1e-8: the two libraries' libm
    calls may differ in the last bit, and a chain carries that on), or are finite without
    torch; else exit."""
    got = subjects["mpigrad"].value()
    want = subjects["torch"].value() if "torch" in subjects else None
    for what, g, w in zip(("output", "gradient"), got, want or got):
        if not math.isfinite(g) or not math.isclose(g, w, rel_tol=1e-8, abs_tol=1e-300):
            sys.exit(f"bench_engine: ops {row.label} {row.kind}: {what} {g!r}, torch {w!r}")


def measure_ops(torch, report):
    """Time every row of the ops case, record and tabulate them; returns the targets where
    torch ran."""
    reps = ARGS.reps or (3 if ARGS.quick else 40)
    table = _common.Table(
        "op:22 operand:7 mpigrad:8.3f fwd:7.3f bwd:7.3f torch:8.3f fwd:7.3f bwd:7.3f ratio:6.2f",
        note=f"ops case: {ARGS.ops} calls of one op each, forward + backward, us per op "
        f"(medians of {reps}), {ARGS.threads} thread(s), gc {'off' if ARGS.no_gc else 'on'}; "
        "fwd, bwd: medians of each part; ratio: mpigrad / torch",
    )
    ratios, noises = {}, {}
    for row in _op_rows():
        subjects = {"mpigrad": op_subject(row, ARGS.ops, mg)}
        if torch is not None:
            subjects["torch"] = op_subject(row, ARGS.ops, torch)
        check_op(row, subjects)
        gc.collect()
        if ARGS.no_gc:
            gc.disable()
        try:
            samples = _common.interleave(subjects, reps, warmup=1 if ARGS.quick else 5)
        finally:
            gc.enable()
        scale = 1e6 / ARGS.ops
        stats = {name: _common.summary(s["time"], scale) for name, s in samples.items()}
        for name, st in stats.items():
            st["forward"], st["backward"] = (
                _common.summary(samples[name][p], scale)["median"] for p in PARTS
            )
        ratio = None
        if "torch" in stats:
            ratio = round(stats["mpigrad"]["median"] / stats["torch"]["median"], 3)
            ratios[(row.label, row.kind)] = ratio
            noises[(row.label, row.kind)] = _common.noise(ratio, stats["mpigrad"], stats["torch"])
        for name, st in stats.items():
            report.record(
                case="ops",
                subject=name,
                op=row.label,
                names=list(row.names),
                operand=row.kind,
                unit="us/op",
                reps=reps,
                ops=ARGS.ops,
                baseline="torch",
                **st,
                ratio=ratio if name == "mpigrad" else (1.0 if ratio is not None else None),
            )
        torch_stats = stats.get("torch", {})
        table.row(
            row.label,
            row.kind or "-",
            *(stats["mpigrad"][part] for part in ("median", *PARTS)),
            *(torch_stats.get(part) for part in ("median", *PARTS)),
            ratio,
        )
    if not ratios:
        return []
    worst = max(ratios, key=ratios.get)
    geomean = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
    # The rows' relative noises, independent, average down in the mean of the logs.
    spread = math.sqrt(statistics.fmean((noises[k] / ratios[k]) ** 2 for k in ratios))
    return [
        (
            f"ops: every op's mpigrad / torch, medians (largest: {' '.join(filter(None, worst))})",
            ratios[worst],
            "<= 1.0",
            noises[worst],
        ),
        (
            f"ops: geometric mean over {len(ratios)} rows of mpigrad / torch",
            round(geomean, 3),
            "<= 0.8",
            round(geomean * spread / math.sqrt(len(ratios)), 4),
        ),
    ]


# --- measuring --------------------------------------------------------------------------------


def subjects_of(case, torch, dtype="float64"):
    """(subjects, reference) of ``case``."""
    if case == "mlp":
        bench = MLP(dtype)
        subjects = {"mpigrad": bench.autograd_subject(mg), "numpy": bench.numpy_subject()}
        if torch is not None:
            subjects["torch"] = bench.autograd_subject(torch)
        return subjects, subjects["numpy"].value()
    subjects = {"mpigrad": chain_subject(case, ARGS.ops, mg)}
    if torch is not None:
        subjects["torch"] = chain_subject(case, ARGS.ops, torch)
    return subjects, chain_reference(case, ARGS.ops)


PARTS = ("forward", "backward")
COLUMNS = ("median", "q1", "q3", "mean", "forward", "backward", "faults", "peak", "ratio")
PEAK_STEPS = 5


def step_peak(name, dtype):
    """MiB that ``PEAK_STEPS`` steps of the mlp subject ``name`` add to the resident memory of a
    fresh process that has built it (its peak, from /proc/self/status): run in a child."""
    command = [sys.executable, __file__, "--peak-of", name, dtype, "--threads", str(ARGS.threads)]
    command += [] if name == "torch" else ["--no-torch"]  # the child prints the MiB alone
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def _resident_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_of(name, dtype, torch):
    """The child of ``step_peak``: prints the MiB."""

    def subject(bench):
        if name == "numpy":
            return bench.numpy_subject()
        return bench.autograd_subject({"mpigrad": mg, "torch": torch}[name])

    subject(MLP(dtype, sizes=(4, 3, 3, 2), batch=2))()  # loads what a process loads once
    sample = subject(MLP(dtype))
    mg.memory.release()  # the free pages that loading left would hide what a step takes
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the resident memory now
    before = _resident_kib("VmRSS")
    for _ in range(PEAK_STEPS):
        sample()
    print(round((_resident_kib("VmHWM") - before) / 1024, 1))


def measure(case, torch, report, table, dtype="float64"):
    """Time ``case``, record and tabulate it; returns its target (name, value, goal, noise)
    where its baseline ran."""
    subjects, reference = subjects_of(case, torch, dtype)
    check(case, subjects, reference, 1e-10 if dtype == "float64" else 1e-4)
    peaks = {}
    if case == "mlp":
        unit, scale, baseline, goal = "ms", 1e3, "numpy", "<= 1.10"
        fields = {"sizes": list(SIZES), "batch": BATCH, "baseline": baseline, "dtype": dtype}
        reps = ARGS.reps or (7 if ARGS.quick else 150)
        peaks = {name: step_peak(name, dtype) for name in subjects}
    else:
        unit, scale, baseline, goal = "us/op", 1e6 / ARGS.ops, "torch", "<= 1.0"
        fields = {"ops": ARGS.ops, "baseline": baseline, "dtype": dtype}
        reps = ARGS.reps or (7 if ARGS.quick else 200)
    gc.collect()
    if ARGS.no_gc:
        gc.disable()
    # Note [torch's own rounds]: on more than one thread, torch's OpenMP workers spin a while
    # after each op, on the cores the next subject in the round computes on; the mlp case times
    # torch in rounds of its own then (with it in the rounds, the mpigrad step that followed it
    # took 2.0x numpy's at 2 threads; without, 1.05-1.15x).
    apart = {"torch"} & set(subjects) if case == "mlp" and ARGS.threads > 1 else set()
    warmup = 2 if ARGS.quick else 10
    try:
        together = {name: sample for name, sample in subjects.items() if name not in apart}
        samples = _common.interleave(together, reps, warmup=warmup)
        for name in apart:
            samples.update(_common.interleave({name: subjects[name]}, reps, warmup=warmup))
    finally:
        gc.enable()
    base = _common.summary(samples[baseline]["time"], scale) if baseline in samples else None
    stats = {name: _common.summary(s["time"], scale) for name, s in samples.items()}
    for name, s in samples.items():
        st = stats[name]
        st["forward"], st["backward"] = (_common.summary(s[p], scale)["median"] for p in PARTS)
        st["faults"] = _common.summary(s["faults"])["median"]
        st["peak"] = peaks.get(name)
        st["ratio"] = None if base is None else round(st["median"] / base["median"], 3)
        report.record(case=case, subject=name, unit=unit, reps=reps, **fields, **st)
        table.row(case, dtype, name, unit, *(st[column] for column in COLUMNS))
    if base is not None:
        ratio = stats["mpigrad"]["ratio"]
        where = f"{dtype}, {ARGS.threads} thread(s)" if case == "mlp" else ""
        name = f"{case}{where and f' {where}'}: mpigrad / {baseline}, medians"
        return name, ratio, goal, _common.noise(ratio, stats["mpigrad"], base)


def profile(case):
    import cProfile
    import pstats

    if case == "ops":
        chains = [op_subject(row, ARGS.ops, mg) for row in _op_rows()]

        def sample():
            for chain in chains:
                chain()

    elif case == "mlp":
        sample = MLP("float64").autograd_subject(mg)
    else:
        sample = chain_subject(case, ARGS.ops, mg)
    reps = ARGS.reps or (5 if ARGS.quick else 100)
    for _ in range(5):
        sample()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        sample()
    prof.disable()
    print(f"== cProfile of mpigrad, case {case}, {reps} samples (forward + backward)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def main():
    torch = None
    if not ARGS.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: torch rows skipped (make torch installs it)")
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
    from mpigrad import kernels

    kernels.set_num_threads(ARGS.threads)
    if ARGS.profile:
        profile(ARGS.profile)
        return
    if ARGS.peak_of:
        peak_of(*ARGS.peak_of, torch)
        return
    report = _common.Report(ARGS, threads=ARGS.threads, gc=not ARGS.no_gc)
    cases = [case for case in ARGS.cases if case != "ops"]  # the ops case has its own table
    goals = []
    if cases:
        table = _common.Table(
            "case:6 dtype:8 subject:8 unit:6 median:9.3f q1:9.3f q3:9.3f mean:9.3f fwd:9.3f "
            "bwd:9.3f faults:7.0f peak_MiB:9.1f ratio:6.2f",
            note=f"forward + backward per sample, {ARGS.threads} thread(s), gc "
            f"{'off' if ARGS.no_gc else 'on'}, freed memory kept: {mg.memory.kept()}; fwd, bwd: "
            "medians of each part; faults: minor page faults; peak MiB: what a step adds to a "
            "fresh process (mlp); ratio: to the case's baseline (torch for chain and fanin, "
            "numpy for mlp)",
        )
        goals += [
            measure(case, torch, report, table, dtype)
            for case in cases
            for dtype in (ARGS.dtypes if case == "mlp" else ["float64"])
        ]
    if "ops" in ARGS.cases:
        goals += measure_ops(torch, report)
    for goal in filter(None, goals):
        report.target(*goal)
    report.close()


if __name__ == "__main__":
    main()
