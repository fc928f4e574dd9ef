"""Collectives on mpigrad's collective communicator, for the ops in ``functions/``.

An op describes its call in a ``Call``: its argument checks run under ``call.checking()``,
``call.agree(rule)`` makes every rank agree on the call before any data moves (see Note [agreed
collectives]), and the op's Function then moves arrays with the functions below (``all_reduce``,
``broadcast``, ...).  Each is a non-blocking MPI collective on ``comms.collective``, waited for
through a ``Waiter`` (waiting.py): nothing waits forever, a stall says what it waits for, and a
failure notice of the open context ends the wait.  Inside a context, a recorded call's node is
recorded in the context, and a call made during its distributed backward keeps that pass going
while it waits (see Note [collectives in a context] in engine.py).
"""

# Note [agreed collectives]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# Every collective call first gathers, on every rank, a signature of WORDS integer words from
# every rank: this rank's count of collective calls so far, the kind of call, the call it is the
# adjoint of (-1: none), the op, the root, the number of open dual levels, the dtype, the shape
# (for a list of tensors: their count and a digest of their shapes), whether this rank found its
# arguments invalid, whether it records a graph (0: gradients are disabled, 1: none of its inputs
# requires grad, 2: it records), and the dual levels at which its inputs carry tangents.
# It is one Iallreduce (SUM) of float64 words: a row of WORDS per rank, each rank's own row its
# signature and the others zeros, so that the sum is every rank's row, exactly (each word is an
# integer below 2**53, added to zeros only); then a slot of SLOT words, which a small all_reduce
# (sum or avg of float64, at most SLOT values) fills with its data, so that its reduction comes
# with the agreement, in one collective instead of two.  Every call is this same MPI collective
# of the same size, and whether the slot holds data follows from agreed words (kind, op, dtype,
# shape): if the ranks disagree, the slot's sum is discarded and the call raises.
# Only then does the collective itself start (a small all_reduce's has ended), so ranks never meet
# in MPI collectives of different kinds or sizes (an erroneous program, on which MPI may hang or
# crash).  The words a kind needs agreed (its rule: SAME, RAGGED, ROOTED, NONE) must be equal on
# every rank; if not, or if a rank found its arguments invalid, every rank sees it in the same
# gathered words, then allgathers a description of each rank's call and raises one error naming
# the ranks and what differs.  The call count makes a rank that skipped a collective, or a
# backward that reaches the adjoints in another order, fail at the next collective instead of
# computing with another call's data.  Every rank records a graph when any does, and carries a
# tangent at every level where any does (a rank without one gets an ``anchor``: a 0-d leaf that
# requires grad or carries zero tangents in its inputs' place), so that the adjoint and tangent
# collectives run on every rank.  Inside a dist_autograd context a rank with gradients disabled
# could not record it, and its backward would never join the others' adjoint: every rank raises
# instead.
#
# A collective that does not complete (a timeout, a rank that ended) can be neither cancelled nor
# freed (MPI forbids both for non-blocking collectives): it is kept in ``comms.abandoned``, and
# the communicator is out of step for good: later collectives raise until destroy() and init().

import functools
import json
import time
import zlib

import numpy as np
from mpi4py import MPI

from .. import dual
from ..autograd.forward_ad import make_dual
from ..grad_mode import _State
from ..tensor import Tensor
from . import comm as _comm
from . import context as _context
from . import messages, waiting
from .errors import DistributedError

__all__ = [
    "Call",
    "tangents",
    "check_rooted_adjoint",
    "SAME",
    "RAGGED",
    "ROOTED",
    "NONE",
    "reduction",
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
]

KINDS = (
    "barrier",
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
)
OPS = ("sum", "avg", "max", "min", "prod")
_MPI_OPS = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}

# Signature words; see Note [agreed collectives].  The words a rule compares come first, so that
# each rule is a prefix (SAME: up to the shape; RAGGED: up to the count; ROOTED and NONE: the
# call alone); the words every rank's are joined from (PROBLEM, RECORD, TANGENTS) come last.
(SEQ, KIND, ADJOINT, OP, ROOT, LEVELS, DTYPE, NDIM, COUNT, DIGEST) = range(10)
SHAPE = 10
PROBLEM = SHAPE + messages.MAX_NDIM
RECORD, TANGENTS = PROBLEM + 1, PROBLEM + 2
WORDS = TANGENTS + 1
SLOT = 64  # the float64 values an all_reduce reduces with its agreement, at most
SAME, RAGGED, ROOTED, NONE = PROBLEM, DIGEST, DTYPE, DTYPE
_UNUSED = [[-1] * (messages.MAX_NDIM - n) for n in range(messages.MAX_NDIM + 1)]
_REASONS = {
    SEQ: "the ranks have made different numbers of collective calls before this one",
    KIND: "the ranks are in different collective calls",
    ADJOINT: "the ranks are in different collective calls",
    OP: "the ops differ",
    ROOT: "the roots differ",
    LEVELS: "the numbers of open dual levels differ",
    DTYPE: "the dtypes differ",
    NDIM: "the shapes differ",
    COUNT: "the list lengths differ",
    DIGEST: "the shapes differ",
}
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}
_KIND_CODES = {kind: i for i, kind in enumerate(KINDS)}
_OP_CODES = {op: i for i, op in enumerate(OPS)}
_NO_TENSORS = [-1] * (SHAPE - DTYPE) + _UNUSED[0]  # from DTYPE to the last SHAPE word


@functools.lru_cache(maxsize=256)
def _tensor_words(dtype, shape):
    """The signature words from DTYPE to the last SHAPE word of one tensor of ``dtype`` and
    ``shape`` (a tuple, as a call's words are built for every call)."""
    return (messages.dtype_code(dtype), len(shape), -1, -1, *shape, *_UNUSED[len(shape)])


def reduction(op):
    """The name in OPS of ``op`` (one of them, or MPI.SUM, MPI.MAX, MPI.MIN, MPI.PROD)."""
    if isinstance(op, MPI.Op):
        for name in ("sum", "max", "min", "prod"):
            if op == _MPI_OPS[name]:
                return name
    elif isinstance(op, str) and op in OPS:
        return op
    raise ValueError(
        f"op {op!r} is not a reduction mpigrad differentiates: use 'sum', 'avg', 'max', 'min' or "
        "'prod' (or MPI.SUM, MPI.MAX, MPI.MIN, MPI.PROD)"
    )


class Call:
    """One collective call of this rank: its kind, op, root and tensors, then, once agreed,
    every rank's signature (``rows``), this call's number (``seq``), whether any rank records a
    graph (``record``) and the ``anchor`` (None, or a 0-d leaf standing in for this rank's
    inputs: see Note [agreed collectives])."""

    def __init__(self, kind, timeout=None, adjoint_of=-1):
        self.comms = _comm.get()
        self.kind, self.timeout, self.adjoint_of = kind, timeout, adjoint_of
        self.started = time.monotonic()
        self.context = context = _context.current()
        self.running = context and context.running  # the distributed backward it is part of
        if self.running is not None and timeout is None:  # the pass's timeout bounds its waits
            self.timeout, self.started = self.running.timeout, self.running.started
        self.op = self.root = self.problem = self.anchor = self.reduced = None
        self.tensors, self.listed = (), False
        try:
            waiting.resolve_timeout(self.timeout, kind)
        except ValueError as e:  # raised by ``agree`` on every rank, which waits even so
            self.problem, self.timeout = e, None

    def checking(self):
        """A context manager to run the call's argument checks in: a TypeError or ValueError
        they raise is raised by ``agree`` on every rank (the first problem found, the timeout's
        included)."""
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, (TypeError, ValueError)):
            if self.problem is None:
                self.problem = error
            return True
        return False

    def check_root(self, root, role):
        self.root = self.comms.check_peer(root, self.kind, role)

    def take(self, x):
        """``x`` (a Tensor or numpy array) as the call's one Tensor."""
        self.tensors = (_tensor(x, self.kind),)
        return self.tensors[0]

    def take_list(self, xs, what="xs"):
        """``xs`` (a list of ``world_size`` Tensors or arrays of one dtype and ndim) as Tensors."""
        size = self.comms.size
        if not isinstance(xs, (list, tuple)) or len(xs) != size:
            got = (
                f"a {type(xs).__name__} of length {len(xs)}"
                if isinstance(xs, (list, tuple))
                else f"a {type(xs).__name__}"
            )
            raise ValueError(f"{what} must be a list of world_size ({size}) tensors, got {got}")
        tensors = tuple(_tensor(x, self.kind) for x in xs)
        kinds = {(t.dtype, t.ndim) for t in tensors}
        if len(kinds) > 1:
            raise ValueError(
                f"the tensors of {what} must share one dtype and ndim, got "
                f"{[f'{t.dtype} {t.shape}' for t in tensors]}"
            )
        self.tensors, self.listed = tensors, True
        return list(tensors)

    def check_reducible(self):
        """ValueError unless the call's dtype can be reduced with its op."""
        dtype = self.tensors[0].dtype
        if (
            dtype.kind == "b"
            or (dtype.kind == "c" and self.op in ("max", "min"))
            or (dtype.kind in "iu" and self.op == "avg")
        ):
            raise ValueError(f"op {self.op!r} cannot reduce tensors of dtype {dtype}")

    # --- agreement ----------------------------------------------------------------------------

    def agree(self, rule):
        """Agree with every rank on this call under ``rule`` (SAME, RAGGED, ROOTED, NONE: how
        many leading words must be equal), or raise on every rank; see Note [agreed
        collectives]."""
        comms = self.comms
        if comms.out_of_step is not None:
            raise DistributedError(
                f"{self.kind}: rank {comms.rank}: an earlier collective, {comms.out_of_step}, so "
                "mpigrad's collective communicator is out of step: call "
                "mpigrad.distributed.destroy() and init() on every rank"
            )
        levels = dual._levels if _State.forward_ad_enabled else ()
        words = self._signature(levels)
        self.seq = words[SEQ]
        comms.collective_calls += 1
        size, data = comms.size, self._slot_data()
        start = comms.rank * WORDS
        mine = np.zeros(size * WORDS + SLOT)
        mine[start : start + WORDS] = words
        if data is not None:
            mine[size * WORDS : size * WORDS + data.size] = data.reshape(-1)
        summed = np.empty_like(mine)
        self._wait(comms.collective.Iallreduce(mine, summed, op=MPI.SUM), "every rank to join it")
        # Plain lists: at the sizes of a call, faster than numpy's indexing.
        self.rows = rows = summed[: size * WORDS].astype(np.int64).reshape(size, WORDS).tolist()
        agreed, record, tangents = words[:rule], False, 0
        for row in rows:
            if row[PROBLEM] or row[:rule] != agreed:
                self._fail(rows, rule)
            record = record or row[RECORD] == 2
            tangents |= row[TANGENTS]
        self.record = record
        if data is not None:
            self.reduced = summed[size * WORDS : size * WORDS + data.size].reshape(data.shape)
        if record and self.context is not None:
            self._check_recording(rows)
        missing = tangents & ~words[TANGENTS]
        fill = record and words[RECORD] == 1
        if fill or missing:
            self.anchor = Tensor(np.zeros(()), requires_grad=fill)
            for i, level in enumerate(levels):
                if missing >> i & 1:
                    self.anchor = make_dual(self.anchor, np.zeros(()), level=level)

    def _slot_data(self):
        """The array this call reduces with its agreement (see Note [agreed collectives]), or
        None."""
        if self.kind != "all_reduce" or self.problem is not None or self.op not in ("sum", "avg"):
            return None
        data = self.tensors[0].data
        return data if data.dtype == np.float64 and data.size <= SLOT else None

    def _signature(self, levels):
        """This rank's signature words, a list of ints (see Note [agreed collectives])."""
        tensors = self.tensors
        words = [
            self.comms.collective_calls,
            _KIND_CODES[self.kind],
            self.adjoint_of,
            -1 if self.op is None else _OP_CODES[self.op],
            -1 if self.root is None else self.root,
            len(levels),
        ]
        if not tensors or self.problem is not None:
            words += _NO_TENSORS
        elif self.listed:
            first = tensors[0]
            words += [messages.dtype_code(first.dtype), first.ndim, len(tensors)]
            words.append(zlib.crc32(repr([t.shape for t in tensors]).encode()))
            words += _UNUSED[0]
        else:
            first = tensors[0]
            words += _tensor_words(first.dtype, first.shape)
        tangents = 0
        for t in tensors:
            for level in t._fw or ():
                if level in levels:
                    tangents |= 1 << levels.index(level)
        record = (1 + any(t._requires_grad for t in tensors)) if _State.grad_enabled else 0
        words += (self.problem is not None, record, tangents)
        return words

    def _check_recording(self, rows):
        """Inside a context, raise on every rank if a rank cannot record this call that others
        record (see Note [agreed collectives])."""
        disabled = [r for r, row in enumerate(rows) if row[RECORD] == 0]
        if disabled:
            context_id = self.context.context_id
            raise RuntimeError(
                f"{self.kind}: rank(s) {disabled} called it with gradients disabled, while "
                f"other ranks record it (collective call {self.seq}, in dist_autograd context "
                f"{context_id}): inside a context every rank records a collective that any rank "
                "records, or its backward would wait for them forever; disable gradients on "
                f"every rank or on none (raised on every rank; this is rank {self.comms.rank})"
            )

    def apply(self, function, *xs):
        """``function.apply(self, anchor, *xs)``, the op's Function on this agreed call.  A
        recorded call's node ``communicates`` (so that every rank's backward runs it), and inside
        a context it is recorded in the context too (see Note [collectives in a context] in
        engine.py)."""
        out = function.apply(self, self.anchor, *xs)
        if self.record and _State.grad_enabled:
            first = out[0] if isinstance(out, tuple) else out
            node = first.grad_fn
            if node is not None:
                node.communicates = True
                if self.context is not None:
                    self.context.collectives.append((node, first.shape, first.dtype))
        return out

    def apply_listed(self, function, *xs):
        """``apply`` of a Function with one output per rank, as a list (Function.apply returns
        a single output, at one rank, unwrapped)."""
        out = self.apply(function, *xs)
        return list(out) if isinstance(out, tuple) else [out]

    def describe(self):
        """This call, as the error of a mismatch shows it."""
        args = [] if self.op is None else [f"op={self.op!r}"]
        args += [] if self.root is None else [f"root={self.root}"]
        text = f"{self.kind}({', '.join(args)})"
        if self.tensors and self.problem is None:
            shapes = [t.shape for t in self.tensors] if self.listed else self.tensors[0].shape
            text += f" of {self.tensors[0].dtype} {shapes}"
        text += f", collective call {self.seq}"
        if self.adjoint_of >= 0:
            text += f" (in the backward of collective call {self.adjoint_of})"
        return text

    def _fail(self, rows, rule):
        """Raise, on every rank, what the agreement found wrong (every rank calls this)."""
        me = self.comms.rank
        problem = None if self.problem is None else [type(self.problem).__name__, str(self.problem)]
        mine = json.dumps({"call": self.describe(), "problem": problem}).encode()
        described = [json.loads(text) for text in self._allgather_bytes(mine)]
        where = f"(raised on every rank; this is rank {me})"
        for r, theirs in enumerate(described):
            if theirs["problem"] is not None:
                name, text = theirs["problem"]
                raise _ERRORS.get(name, DistributedError)(f"{self.kind}: rank {r}: {text} {where}")
        column = next(c for c in range(rule) if len({row[c] for row in rows}) > 1)
        groups = {}
        for r, theirs in enumerate(described):
            groups.setdefault(theirs["call"], []).append(str(r))
        calls = "; ".join(
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}: {call}"
            for call, ranks in groups.items()
        )
        reason = _REASONS.get(column, "the shapes differ")  # the SHAPE words
        raise DistributedError(
            f"{self.kind}: the ranks' calls do not match: {reason}: {calls}. Every "
            "rank must make the same collective calls in the same order, with matching "
            "arguments (outside a dist_autograd context, every rank's backward must reach the "
            f"same collectives in the same order) {where}"
        )

    def _allgather_bytes(self, data):
        """Every rank's ``data`` (bytes), by rank."""
        size, channel = self.comms.size, self.comms.collective
        lengths = np.empty(size, np.int64)
        self._wait(
            channel.Iallgather(np.array([len(data)], np.int64), lengths),
            "every rank to describe its call",
        )
        received = bytearray(int(lengths.sum()))
        displs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._wait(
            channel.Iallgatherv(
                [data, MPI.BYTE], [received, lengths.tolist(), displs.tolist(), MPI.BYTE]
            ),
            "every rank to describe its call",
        )
        return [bytes(received[d : d + n]) for d, n in zip(displs.tolist(), lengths.tolist())]

    def _wait(self, request, what):
        """Wait for ``request`` (a collective on ``comms.collective``) to complete; if the
        wait raises, the request is abandoned (see Note [agreed collectives])."""
        if request.Test():
            return
        comms = self.comms
        test = request.Test if self.running is None else self.running.progressing(request.Test)
        try:
            waiting.wait_for(
                test,
                self.kind,
                self.timeout,
                lambda: f"{what} ({self.kind}, collective call {self.seq})",
                context=_context.current(),
                agreeing=True,
                progress=True,
                started=self.started,
            )
        except BaseException as e:
            comms.abandoned.append(request)
            comms.out_of_step = (
                f"{self.kind} (collective call {self.seq}), did not complete "
                f"on rank {comms.rank} ({type(e).__name__})"
            )
            raise

    def shape_of(self, rank):
        """The shape rank ``rank`` passed (rules SAME and RAGGED)."""
        row = self.rows[rank]
        return tuple(row[SHAPE : SHAPE + row[NDIM]])


def check_rooted_adjoint(call, adjoint, instead):
    """Raise unless a distributed backward of the open context runs: the only backward that
    reaches on every rank the adjoint (``adjoint``, from the root) of ``call``, a collective
    whose result only its root has (reduce, gather)."""
    context = _context.current()
    if context is None or context.running is None:
        op = call.kind
        raise RuntimeError(
            f"{op}: rank {call.comms.rank}: the gradient of {op}'s result (collective call "
            f"{call.seq}) cannot flow back outside a dist_autograd context's backward: the other "
            f"ranks got None, so their backward never reaches its adjoint ({adjoint} from rank "
            f"{call.root}). Use {instead}, which is differentiable everywhere, or differentiate "
            f"{op} inside a dist_autograd context"
        )


def tangents(inputs, ts):
    """The tangents ``ts`` of ``inputs``, zeros where an input carries none: a rank takes part
    in a tangent's collective whether or not its inputs carry one."""
    return [
        Tensor._make(np.zeros(x.shape, x.dtype)) if t is None else t for x, t in zip(inputs, ts)
    ]


def _tensor(x, kind):
    """``x`` as a Tensor; TypeError or ValueError naming the problem if it cannot be sent."""
    if isinstance(x, Tensor):
        messages.check_sendable(x.data)
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        array = np.asarray(x)
        messages.check_sendable(array)
        return Tensor._make(array)
    raise TypeError(f"expected a Tensor or a numpy array, got {type(x).__name__}")


# --- moving arrays, once a call is agreed ---------------------------------------------------------


def _bytes(array):
    """A C-contiguous array's bytes, as a flat uint8 view."""
    return array.reshape(-1).view(np.uint8)


def _pieces(buffer, shapes, dtype):
    """Consecutive arrays of ``shapes`` in ``buffer`` (bytes), and their byte counts and
    offsets."""
    counts = [int(np.prod(s, dtype=np.int64)) * dtype.itemsize for s in shapes]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
    if buffer is None:
        return None, counts, displs
    return (
        [buffer[d : d + n].view(dtype).reshape(s) for d, n, s in zip(displs, counts, shapes)],
        counts,
        displs,
    )


def all_reduce(call, array):
    """The reduction of every rank's ``array`` by ``call.op`` (avg: the sum over the size);
    the call's agreement reduced it already when it is small (see Note [agreed collectives])."""
    out = call.reduced
    if out is None:
        out = np.empty(array.shape, array.dtype)
        call._wait(
            call.comms.collective.Iallreduce(
                np.ascontiguousarray(array), out, op=_MPI_OPS[call.op]
            ),
            "every rank's data",
        )
    if call.op == "avg":
        out /= call.comms.size
    return out


def broadcast(call, array):
    """The root's ``array``, on every rank (a new array)."""
    out = (
        np.array(array, order="C")
        if call.comms.rank == call.root
        else np.empty(array.shape, array.dtype)
    )
    call._wait(
        call.comms.collective.Ibcast([_bytes(out), MPI.BYTE], root=call.root),
        f"rank {call.root}'s data",
    )
    return out


def reduce(call, array):
    """The reduction of every rank's ``array`` on the root; an empty array elsewhere."""
    root = call.comms.rank == call.root
    out = np.empty(array.shape if root else (0,), array.dtype)
    call._wait(
        call.comms.collective.Ireduce(
            np.ascontiguousarray(array), out if root else None, op=_MPI_OPS[call.op], root=call.root
        ),
        "every rank's data",
    )
    if root and call.op == "avg":
        out /= call.comms.size
    return out


def all_gather(call, array):
    """Every rank's ``array`` (shapes as the ranks passed them), by rank."""
    shapes = [call.shape_of(r) for r in range(call.comms.size)]
    total = sum(_pieces(None, shapes, array.dtype)[1])
    buffer = np.empty(total, np.uint8)
    pieces, counts, displs = _pieces(buffer, shapes, array.dtype)
    call._wait(
        call.comms.collective.Iallgatherv(
            [_bytes(np.ascontiguousarray(array)), MPI.BYTE], [buffer, counts, displs, MPI.BYTE]
        ),
        "every rank's data",
    )
    return pieces


def gather(call, array):
    """Every rank's ``array`` on the root, by rank; None elsewhere."""
    comms = call.comms
    if comms.rank != call.root:
        call._wait(
            comms.collective.Igatherv(
                [_bytes(np.ascontiguousarray(array)), MPI.BYTE], None, root=call.root
            ),
            "every rank's data",
        )
        return None
    shapes = [call.shape_of(r) for r in range(comms.size)]
    buffer = np.empty(sum(_pieces(None, shapes, array.dtype)[1]), np.uint8)
    pieces, counts, displs = _pieces(buffer, shapes, array.dtype)
    call._wait(
        comms.collective.Igatherv(
            [_bytes(np.ascontiguousarray(array)), MPI.BYTE],
            [buffer, counts, displs, MPI.BYTE],
            root=call.root,
        ),
        "every rank's data",
    )
    return pieces


def scatter(call, arrays):
    """This rank's piece of the root's ``arrays`` (ignored elsewhere)."""
    comms, root = call.comms, call.root
    dtype = messages.DTYPES[call.rows[root][DTYPE]]
    ndim = call.rows[root][NDIM]
    shapes = None
    if comms.rank == root:
        shapes = np.array([a.shape for a in arrays], np.int64).reshape(comms.size, ndim)
    shape = np.empty(ndim, np.int64)
    call._wait(comms.collective.Iscatter(shapes, shape, root=root), f"rank {root}'s shapes")
    out = np.empty(tuple(shape.tolist()), dtype)
    send = None
    if comms.rank == root:
        buffer = np.concatenate([_bytes(np.ascontiguousarray(a)) for a in arrays])
        _, counts, displs = _pieces(None, [a.shape for a in arrays], dtype)
        send = [buffer, counts, displs, MPI.BYTE]
    call._wait(
        comms.collective.Iscatterv(send, [_bytes(out), MPI.BYTE], root=root), f"rank {root}'s data"
    )
    return out


def reduce_scatter(call, arrays):
    """This rank's piece of the sum (or average) of every rank's ``arrays``, piece by piece."""
    comms = call.comms
    send = np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in arrays])
    out = np.empty(arrays[comms.rank].shape, send.dtype)
    call._wait(
        comms.collective.Ireduce_scatter(send, out, [a.size for a in arrays], op=_MPI_OPS[call.op]),
        "every rank's data",
    )
    if call.op == "avg":
        out /= comms.size
    return out


def all_to_all(call, arrays):
    """What every rank sent this rank (``arrays[j]`` goes to rank ``j``), by rank."""
    comms, dtype = call.comms, arrays[0].dtype
    ndim = arrays[0].ndim
    shapes = np.empty((comms.size, ndim), np.int64)
    call._wait(
        comms.collective.Ialltoall(
            np.array([a.shape for a in arrays], np.int64).reshape(comms.size, ndim), shapes
        ),
        "every rank's shapes",
    )
    shapes = [tuple(s) for s in shapes.tolist()]
    buffer = np.empty(sum(_pieces(None, shapes, dtype)[1]), np.uint8)
    pieces, counts, displs = _pieces(buffer, shapes, dtype)
    send = np.concatenate([_bytes(np.ascontiguousarray(a)) for a in arrays])
    _, send_counts, send_displs = _pieces(None, [a.shape for a in arrays], dtype)
    call._wait(
        comms.collective.Ialltoallv(
            [send, send_counts, send_displs, MPI.BYTE], [buffer, counts, displs, MPI.BYTE]
        ),
        "every rank's data",
    )
    return pieces
