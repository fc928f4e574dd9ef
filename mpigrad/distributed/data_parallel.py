"""``DistributedDataParallel``: each rank trains on its own data, and every backward leaves in
``.grad`` the average (or sum) of every rank's gradients, averaged while backward runs.

Collective: constructing one, and every backward that reaches its parameters (outside
``no_sync()``), on every rank.  Adjoint: none of its own; it averages what the local backward
accumulated in ``.grad``.

    model = dist.DistributedDataParallel(mg.nn.Sequential(...))  # rank 0's parameters everywhere
    opt = mg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, t in shard:                                          # each rank its own shard
        opt.zero_grad()
        mg.cross_entropy(model(x), t).backward()   # buckets are averaged while backward runs
        opt.step()                                 # every rank takes the same step

With ``average=True`` the ranks' gradients are averaged: the global objective is the mean over
the ranks of each rank's loss (each rank's mean over its shard, say; with shards of unequal
sizes, weight the losses, or pass ``average=False`` for the sum of the ranks' losses).
"""

# Note [buckets]
# ~~~~~~~~~~~~~~
# The parameters' gradients travel in buckets, each reduced by one non-blocking MPI allreduce
# (MPI.SUM, in place) on the DDP's own communicator.  A parameter of at least ``ALONE_MB`` MiB
# (or of the cap, if smaller) is a bucket alone, reduced in its own ``.grad`` array where that
# array can be (contiguous, writable, not recorded): a message that large is already as fast per
# byte as MPI goes, so fusing it would only add a copy in and a copy out (measured in
# bench_ddp: 1.17x the time of a hand-written in-place Allreduce per gradient with every
# gradient copied, against about 1.0 without).  The smaller parameters are fused: copied into
# the flat buffer of a bucket of one dtype that holds them until it reaches ``bucket_cap_mb``
# MiB (the first of each dtype ``FIRST_BUCKET_MB``, or the cap if smaller), so that they cost
# one message, not one each.  Buckets fill in reverse parameter order at first, since backward
# reaches the last layers first; at the end of the first synchronised backward they are rebuilt
# once, from the order in which rank 0's gradients became ready (broadcast, so that every rank
# builds the same buckets), the parameters no gradient reached on rank 0 last.  Buckets are
# numbered in the order they fill up (of their last parameter).
#
# A parameter's post-accumulate-grad hook marks it ready; a bucket whose parameters are all
# ready is packed and its allreduce started at once, provided every bucket before it has
# started: buckets start in index order, the same on every rank, whatever order the hooks fire
# in there.  A callback queued for the end of backward then starts the buckets that have not
# started, in order, with zeros for a parameter with no ``.grad``, so that every rank starts the
# same allreduces in the same order and none waits for a bucket another will not send; then one
# more allreduce, of one word per parameter, 1 where the rank had a ``.grad`` (torch's "local
# used map"): a parameter that had none on any rank keeps ``.grad`` None, as every rank sees.
# It waits for all of them (through a ``Waiter``: nothing waits forever) and leaves each
# parameter's reduced gradient in its ``.grad``: in the array itself
# where it is the user's to write (see Note [gradient ownership] in engine.py), else in a new
# one.  To average, each rank multiplies its gradients by 1 / size as it packs them, while they
# are still in cache from the backward that made them (a product costs a quarter of a division;
# after the allreduce the arrays are cold), so that the allreduce sums the average.  Since the
# allreduce's result is the same on every rank, every rank's ``.grad``, and so its optimizer
# step, is bitwise the same.
#
# An allreduce that does not complete (a timeout, a rank that ended) can be neither cancelled
# nor freed: it is kept, with its buffer, for as long as the process lives (MPI may complete it
# later), and the DDP is out of step for good (see Note [agreed collectives] in collective.py).

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from mpi4py import MPI

from ..engine import current_pass, queue_callback
from ..nn import Module
from ..tensor import Tensor
from . import comm as _comm
from . import context as _context
from . import waiting
from .collective import allgather_bytes, by_rank
from .errors import DistributedError

__all__ = ["DistributedDataParallel"]

FIRST_BUCKET_MB = 1.0
ALONE_MB = 1.0  # see Note [buckets]
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_OP = "DistributedDataParallel"
_abandoned = []  # (communicator, requests, buffers) that never completed: see Note [buckets]


class _Bucket:
    """Parameters of one dtype (by position) whose gradients travel in one allreduce, of
    ``buffer``: their gradients flat, or one parameter's ``.grad`` array itself (``alone``); see
    Note [buckets]."""

    def __init__(self, positions, params, alone):
        self.positions = positions
        self.params = [params[i] for i in positions]
        self.alone = alone
        sizes = [p.size for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.own = None if alone else np.empty(self.offsets[-1], self.params[0].dtype)
        self.buffer = self.own

    def pack(self, used, scale):
        """Make ``buffer`` hold each parameter's ``.grad`` times ``scale`` (None: 1; zeros where
        it has none), and set ``used[position]`` to whether it has one."""
        if self.alone:
            (p,), (position,) = self.params, self.positions
            grad = p.grad
            used[position] = grad is not None
            if grad is not None and _reducible_in_place(grad, p):
                self.buffer = grad.data.reshape(-1)  # a view
                if scale is not None:
                    np.multiply(self.buffer, scale, out=self.buffer)
                return
            if self.own is None:
                self.own = np.empty(p.size, p.dtype)
            self.buffer = self.own
        buffer, offsets = self.buffer, self.offsets
        for i, p in enumerate(self.params):
            view = buffer[offsets[i] : offsets[i + 1]]
            grad = p.grad
            used[self.positions[i]] = grad is not None
            if grad is None:
                view[...] = 0
            elif scale is not None:
                np.multiply(grad.data.reshape(-1), scale, out=view)
            else:
                np.copyto(view, grad.data.reshape(-1))

    def unpack(self, used):
        """Leave the reduced buffer in the parameters' ``.grad``, None where no rank had a
        gradient (``used``, by position, summed)."""
        buffer, offsets = self.buffer, self.offsets
        if self.alone and buffer is not self.own:  # reduced in .grad itself
            return
        for i, p in enumerate(self.params):
            if not used[self.positions[i]]:
                continue
            view = buffer[offsets[i] : offsets[i + 1]].reshape(p.shape)
            grad = p.grad
            if grad is None or not _reducible_in_place(grad, p):
                p.grad = grad = Tensor._make(np.empty_like(view))
            np.copyto(grad.data, view)


def _reducible_in_place(grad, p):
    """Whether ``grad`` (``p.grad``) is an array the DDP may overwrite: writable, row-major
    contiguous (the layout every rank reduces in), of ``p``'s shape and dtype, not recorded
    (create_graph: its graph may hold it)."""
    data = grad.data
    return (
        grad.grad_fn is None
        and data.flags.writeable
        and data.flags.c_contiguous
        and data.shape == p.shape
        and data.dtype == p.dtype
    )


def _assign(order, params, cap):
    """Buckets (lists of positions, and whether alone) of the parameters taken in ``order``,
    numbered in the order they fill up; see Note [buckets]."""
    alone_at = min(int(ALONE_MB * 2**20), cap)
    first = min(int(FIRST_BUCKET_MB * 2**20), cap)
    filling, full = {}, []
    for position in order:
        p = params[position]
        if p.data.nbytes >= alone_at:
            full.append(([position], True))
            continue
        members, size, limit = filling.get(p.dtype, ([], 0, first))
        members.append(position)
        size += p.data.nbytes
        if size >= limit:
            full.append((members, False))
            filling[p.dtype] = ([], 0, cap)
        else:
            filling[p.dtype] = (members, size, limit)
    full += [(members, False) for members, _, _ in filling.values() if members]
    index = {position: i for i, position in enumerate(order)}
    return sorted(full, key=lambda bucket: index[bucket[0][-1]])


class _Pass:
    """One synchronised backward's progress: how many parameters each bucket still waits for,
    the next bucket to start, the requests started, and (first pass) the order seen."""

    def __init__(self, buckets, observe):
        self.backward = current_pass()
        self.waiting = [len(b.positions) for b in buckets]
        self.next = 0
        self.requests = []
        self.complete = 0  # requests known complete, a prefix of ``requests``
        self.seen = [] if observe else None


class DistributedDataParallel:
    """Data parallelism over the ranks mpigrad is initialized on (see ``init``).

    ``module_or_params``: an ``mpigrad.nn.Module`` (then ``model(x)`` calls it and
    ``model.module`` is it) or a list of parameters: leaf Tensors that require grad, of float32
    or float64.  Construction is collective: it checks that every rank passed the same
    parameters (count, shapes, dtypes) and options, raising on every rank, naming the first
    parameter that differs, if not; then it copies rank 0's parameter values into every
    rank's arrays, in place.

    Every backward that reaches the parameters then leaves in their ``.grad`` the average over
    the ranks (the sum with ``average=False``) of the ranks' ``.grad``, a rank whose backward
    gave a parameter no gradient contributing zeros for it (a parameter that got a gradient on no
    rank keeps ``.grad`` None).  A gradient of ``ALONE_MB`` MiB or more (or of the cap) is
    reduced in its own ``.grad`` array; the smaller ones travel fused in buckets of
    ``bucket_cap_mb`` MiB; each bucket is reduced while the rest of backward runs (see Note
    [buckets]).  Inside ``no_sync()`` backward only accumulates into ``.grad``; the next backward
    outside it averages what accumulated.
    Every rank's backward must reach at least one of the parameters (or, with a module, the
    output of a call of the model), in the same backward passes.  ``timeout``: how long a
    backward waits for the other ranks (default ``MPIGRAD_TIMEOUT``), after which it raises
    ``DistTimeoutError`` and the DDP can no longer be used.
    """

    def __init__(
        self,
        module_or_params: Module | Iterable[Tensor],
        bucket_cap_mb: float = 25,
        average: bool = True,
        timeout: float | None = None,
    ) -> None:
        comms = _comm.get()
        self.module = module_or_params if isinstance(module_or_params, Module) else None
        if self.module is not None:
            named = list(self.module.named_parameters())
        else:
            named = []
            for p in module_or_params:
                if not any(p is q for _, q in named):
                    named.append((None, p))
        self.names = [name for name, _ in named]
        self.params = params = [p for _, p in named]
        self._out_of_step = None
        problem = _problem(named, bucket_cap_mb, timeout)
        cap = float(bucket_cap_mb) if problem is None else 0.0
        self.cap = int(cap * 2**20)
        self.average, self.size = bool(average), comms.size
        self.timeout = timeout if problem is None else None  # a bad one is reported below
        self.comm, request = comms.user.Idup()
        self._wait([request], "every rank to construct it", ())
        self.comm.Set_name("mpigrad DistributedDataParallel")
        try:
            self._agree(named, problem, (cap, self.average))
            self._broadcast_parameters()
        except BaseException:
            if self._out_of_step is None:
                self.comm.Free()
            raise
        self._build(range(len(params) - 1, -1, -1))
        self._rebuilt = False
        self._used = np.zeros(len(params), np.int64)  # see Note [buckets]
        self._scale = 1 / self.size if self.average else None  # see Note [buckets]
        self._sync = True
        self._pass = None
        ref = weakref.ref(self)
        handles = [
            p.register_post_accumulate_grad_hook(_ready_hook(ref, i)) for i, p in enumerate(params)
        ]
        weakref.finalize(self, _release, handles, self.comm)

    # --- the module -----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module; a backward from its output takes part in the averaging even where
        it reaches none of the parameters."""
        if self.module is None:
            raise TypeError(
                "DistributedDataParallel of a list of parameters has no module to call: compute "
                "with the parameters, then call backward"
            )
        out = self.module(*args, **kwargs)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outputs:
            if isinstance(t, Tensor) and t.requires_grad:
                t.register_hook(_output_hook(weakref.ref(self)))
        return out

    def parameters(self) -> list[Tensor]:
        """The parameters, in order (what an optimizer takes)."""
        return list(self.params)

    def named_parameters(self) -> list[tuple[str | None, Tensor]]:
        """(name, parameter) pairs, for a module; (None, parameter) for a list."""
        return list(zip(self.names, self.params))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """A block whose backward passes accumulate into ``.grad`` without communicating; the
        first backward after it averages what accumulated."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    # --- one backward ---------------------------------------------------------------------------

    def _begin(self):
        """The first hook of a synchronised backward: queue its end."""
        if self._pass is not None:  # the backward it belonged to raised before its end
            buffers = [b.buffer for b in self._buckets] + [self._used]
            _abandoned.append((self.comm, self._pass.requests, buffers))
            self._pass = None
            self._out_of_step = f"was cut short on rank {_comm.get().rank} by an exception"
        if self._out_of_step is not None:
            raise DistributedError(
                f"{_OP}: rank {_comm.get().rank}: an earlier backward's averaging "
                f"{self._out_of_step}, so this DDP is out of step with the other ranks: make a "
                "new one on every rank"
            )
        self._pass = _Pass(self._buckets, observe=not self._rebuilt)
        queue_callback(self._finish)

    def _ready(self, position):
        """A parameter's gradient is accumulated: start the buckets that are complete now."""
        if not self._sync:
            return
        if self._pass is None or self._pass.backward is not current_pass():
            self._begin()
        state = self._pass
        if state.seen is not None:
            state.seen.append(position)
        bucket = self._bucket_of[position]
        state.waiting[bucket] -= 1
        buckets = self._buckets
        while state.next < len(buckets) and not state.waiting[state.next]:
            self._start(state)
        requests = state.requests
        while state.complete < len(requests) and requests[state.complete].Test():
            state.complete += 1  # testing also moves the allreduces on: MPI has no thread here

    def _start(self, state):
        """Start the next bucket's allreduce."""
        bucket = self._buckets[state.next]
        bucket.pack(self._used, self._scale)
        state.requests.append(self.comm.Iallreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM))
        state.next += 1

    def _finish(self):
        """The end of a synchronised backward: start the rest, wait, write ``.grad``."""
        state, self._pass = self._pass, None
        while state.next < len(self._buckets):
            self._start(state)
        used = self._used
        state.requests.append(self.comm.Iallreduce(MPI.IN_PLACE, used, op=MPI.SUM))
        self._wait(
            state.requests[state.complete :],
            "every rank's gradients",
            [b.buffer for b in self._buckets] + [used],
        )
        for bucket in self._buckets:
            bucket.unpack(used)
        if state.seen is not None:
            self._rebuild(state.seen)

    def _rebuild(self, seen):
        """Rebuild the buckets from the order rank 0's gradients were ready in (Note [buckets])."""
        rest = set(range(len(self.params))) - set(seen)
        order = np.array(seen + sorted(rest, reverse=True), np.int64)
        self._wait([self.comm.Ibcast(order, root=0)], "rank 0's order of gradients", (order,))
        self._build(order.tolist())
        self._rebuilt = True

    def _build(self, order):
        """Make the buckets of the parameters in ``order`` (positions); see Note [buckets]."""
        self._buckets = [
            _Bucket(members, self.params, alone)
            for members, alone in _assign(order, self.params, self.cap)
        ]
        self._bucket_of = {p: i for i, b in enumerate(self._buckets) for p in b.positions}

    # --- agreement and waiting ------------------------------------------------------------------

    def _agree(self, named, problem, options):
        """Raise on every rank unless every rank passed the same parameters and options."""
        mine = {
            "problem": problem,
            "params": [[p.dtype.str, list(p.shape)] for _, p in named] if problem is None else [],
            "names": [name for name, _ in named],
            "options": list(options),
        }
        every = allgather_bytes(
            self.comm,
            json.dumps(mine).encode(),
            lambda request, *buffers: self._wait([request], "every rank's parameters", buffers),
        )
        every = [json.loads(text) for text in every]
        where = f"(raised on every rank; this is rank {_comm.get().rank})"
        for r, theirs in enumerate(every):
            if theirs["problem"] is not None:
                kind, text = theirs["problem"]
                raise (TypeError if kind == "TypeError" else ValueError)(
                    f"{_OP}: rank {r}: {text} {where}"
                )
        if any(theirs["options"] != every[0]["options"] for theirs in every):
            described = "; ".join(
                f"rank {r}: bucket_cap_mb={t['options'][0]:g}, average={bool(t['options'][1])}"
                for r, t in enumerate(every)
            )
            raise ValueError(f"{_OP}: the ranks' options differ: {described} {where}")
        counts = [len(theirs["params"]) for theirs in every]
        for i in range(max(counts)):
            texts = [
                f"{np.dtype(t['params'][i][0])} {tuple(t['params'][i][1])}"
                if i < len(t["params"])
                else "none"
                for t in every
            ]
            if len(set(texts)) == 1:
                continue
            name = next(t["names"][i] for t in every if i < len(t["names"]))
            described = by_rank(texts)
            raise ValueError(
                f"{_OP}: the ranks' parameters differ, first at parameter {i}"
                + (f" ({name!r})" if name is not None else "")
                + f": {described} (counts: {counts}); every rank must pass the same model "
                f"{where}"
            )

    def _broadcast_parameters(self):
        """Copy rank 0's parameter values into every rank's arrays: one broadcast per dtype."""
        for dtype in DTYPES:
            params = [p for p in self.params if p.dtype == dtype]
            if not params:
                continue
            flat = np.concatenate([p.data.reshape(-1) for p in params])
            self._wait([self.comm.Ibcast(flat, root=0)], "rank 0's parameters", (flat,))
            offset = 0
            for p in params:
                values = flat[offset : offset + p.size].reshape(p.shape)
                offset += p.size
                if p.data.flags.writeable:
                    np.copyto(p.data, values)
                else:
                    p.data = values.copy()

    def _wait(self, requests, what, buffers):
        """Wait for ``requests`` on the DDP's communicator, on ``buffers``; a wait that raises
        leaves them abandoned and the DDP out of step (see Note [buckets])."""
        requests = [r for r in requests if r != MPI.REQUEST_NULL]
        try:
            waiting.wait_for(
                lambda: MPI.Request.Testall(requests),
                _OP,
                self.timeout,
                lambda: what,
                context=_context.current(),
                agreeing=True,
                progress=True,
            )
        except BaseException as e:
            _abandoned.append((self.comm, requests, buffers))
            self._out_of_step = f"did not complete on rank {_comm.get().rank} ({type(e).__name__})"
            raise


def _problem(named, bucket_cap_mb, timeout):
    """What is wrong with this rank's arguments, as [exception type name, text], or None."""
    try:
        cap = float(bucket_cap_mb)
    except (TypeError, ValueError):
        cap = float("nan")
    if not cap > 0:
        return ["ValueError", f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}"]
    try:
        waiting.resolve_timeout(timeout, _OP)
    except ValueError as e:
        return ["ValueError", str(e).removeprefix(f"{_OP}: ")]
    if not named:
        return ["ValueError", "no parameters"]
    for i, (name, p) in enumerate(named):
        what = f"parameter {i}" + (f" ({name!r})" if name is not None else "")
        if not isinstance(p, Tensor):
            return ["TypeError", f"{what} is a {type(p).__name__}, expected a Tensor"]
        if not p.requires_grad:
            return [
                "ValueError",
                f"{what} does not require grad: every parameter must (set requires_grad=True, "
                "or leave it out)",
            ]
        if not p.is_leaf:
            return ["ValueError", f"{what} is not a leaf (grad_fn=<{p.grad_fn.name()}>)"]
        if p.dtype not in DTYPES:
            return ["ValueError", f"{what} has dtype {p.dtype}: float32 and float64 only"]
    return None


def _ready_hook(ref, position):
    def ready(param):
        ddp = ref()
        if ddp is not None:
            ddp._ready(position)

    ready.__name__ = f"DistributedDataParallel parameter {position}"
    return ready


def _output_hook(ref):
    def begin(grad):
        ddp = ref()
        if (
            ddp is not None
            and ddp._sync
            and (ddp._pass is None or ddp._pass.backward is not current_pass())
        ):
            ddp._begin()

    return begin


def _release(handles, comm):
    """Remove a collected DDP's hooks, and free its communicator unless a request on it was
    abandoned (see Note [buckets])."""
    for handle in handles:
        handle.remove()
    if not any(c is comm for c, _, _ in _abandoned) and not MPI.Is_finalized():
        comm.Free()
