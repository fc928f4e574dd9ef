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
# Every collective call is first agreed by every rank, in one MPI collective of one size for
# every call, whatever the number of ranks: an Iallreduce (SUM) of _LENGTH float64 words.
# A call's signature (WORDS ints: this rank's count of collective calls so far, the kind of call,
# the call it is the adjoint of (-1: none), the op, the root, the number of open dual levels, the
# dtype, the shape (for a list of tensors: their count and a digest of their shapes), whether
# this rank found its arguments invalid, whether it records a graph (0: gradients are disabled,
# 1: none of its inputs requires grad, 2: it records), and the dual levels at which its inputs
# carry tangents) is not sent as it is.  What must be equal on every rank (the words its kind's
# rule compares: SAME, RAGGED, ROOTED, NONE) goes as 16-bit chunks c, each beside c * c: a 64-bit
# digest of the compared words but the call count and the adjoint's, and those two (modulo
# 2**16).
# Summed over P ranks, the chunks are P * c and P * c * c on every rank if and only if every
# rank's is c (the sum of the squares of the differences from c is then 0): so each rank tests
# its own chunks against the sums, and every rank finds the same.  (Exact in float64 below 2**21
# ranks.)  The digest of the shapes goes the same way, so that ragged calls know whether the
# ranks' shapes are all equal.  Then come counts (the ranks that found their arguments invalid,
# that have gradients disabled, that record, that carry a tangent at each open level), the
# root's dtype and ndim (for scatter, whose other ranks pass no tensors), and a slot that a small
# all_reduce (sum or avg of at most SLOT float64 values) fills with its data, so that its
# reduction comes with the agreement, in one collective instead of two.  A rank's words but its
# call count and adjoint's are the same for every call of one kind, op, dtype and shape: they
# are made once and kept (``_templates``).
# Only then does the collective itself start (a small all_reduce's has ended), so ranks never meet
# in MPI collectives of different kinds or sizes (an erroneous program, on which MPI may hang or
# crash).  If the compared chunks differ, or a rank found its arguments invalid, every rank sees
# it in the same sums, discards them, then allgathers each rank's signature and a description of
# its call and raises one error naming the ranks and what differs.  The call count makes a rank
# that skipped a collective, or a backward that reaches the adjoints in another order, fail at
# the next collective instead of computing with another call's data.  Every rank records a graph
# when any does, and carries a tangent at every level where any does (a rank without one gets an
# ``anchor``: a 0-d leaf that requires grad or carries zero tangents in its inputs' place), so
# that the adjoint and tangent collectives run on every rank.  Inside a dist_autograd context a
# rank with gradients disabled could not record it, and its backward would never join the
# others' adjoint: every rank raises instead.
#
# A collective that does not complete (a timeout, a rank that ended) can be neither cancelled nor
# freed (MPI forbids both for non-blocking collectives): it is kept in ``comms.abandoned``, with
# its buffers (mpi4py keeps none), for as long as the process lives (MPI may complete it later,
# writing into them), and the communicator is out of step for good: later collectives raise
# until destroy() and init().

# Note [collective rules on arrays]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The Functions of all_reduce, broadcast, all_gather, reduce_scatter and all_to_all declare
# ``takes_arrays``: their forward computes on arrays (``x.data``), and their backward and jvp
# rules are adjoint collectives, which take and return arrays or Tensors alike, and arithmetic
# that numpy and Tensors share.  So a backward that records nothing runs them on arrays, as the
# built-in rules (Note [array mode] in engine.py), instead of as a user's Function (Tensors in,
# read-only views out: on one rank, 5 of the 103 us of an 8 B all_reduce's forward and
# backward).  Their rules return fresh arrays (the collectives' outputs), as that contract
# requires.  reduce, gather and scatter, whose rules make placeholders off the root, run as
# users' Functions.

import hashlib
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
SAME, RAGGED, ROOTED, NONE = PROBLEM, DIGEST, DTYPE, DTYPE
MAX_LEVELS = 8  # the open dual levels a collective carries tangents at, at most
SLOT = 64  # the float64 values an all_reduce reduces with its agreement, at most

# The agreement's float64 words (see Note [agreed collectives]): chunk pairs of the compared
# words' digest, of the call count and of the adjoint's call count plus one (each modulo 2**16),
# and of the shapes' digest; then counts over the ranks, the root's dtype code and ndim (each
# plus one), and the slot.
_DIGEST, _CALL, _SHAPES, _JOINED = 0, 8, 12, 20
_PROBLEMS, _DISABLED, _RECORDING, _TANGENTS = 20, 21, 22, 23
_ROOT_DTYPE = _TANGENTS + MAX_LEVELS
_SLOT = _ROOT_DTYPE + 2
_LENGTH = _SLOT + SLOT
_templates = {}  # see Note [agreed collectives]
_MAX_TEMPLATES = 1024
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


def _pairs(value, chunks):
    """``value`` (an int of 0 or more) as ``chunks`` 16-bit chunks, lowest first, each followed by
    its square (see Note [agreed collectives])."""
    pairs = []
    for _ in range(chunks):
        chunk = value & 0xFFFF
        pairs += (chunk, chunk * chunk)
        value >>= 16
    return pairs


def _digest(value):
    """A 64-bit digest of ``value`` (ints and tuples of them), the same in every process."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little")


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
    this call's number (``seq``), whether any rank records a graph (``record``), the ``anchor``
    (None, or a 0-d leaf standing in for this rank's inputs) and whether every rank's shapes are
    this rank's (``same_shapes``): see Note [agreed collectives]."""

    def __init__(self, kind, timeout=None, adjoint_of=-1):
        self.comms = _comm.get()
        self.kind, self.timeout, self.adjoint_of = kind, timeout, adjoint_of
        self.started = time.monotonic()
        self.context = context = _context.current()
        self.running = context and context.running  # the distributed backward it is part of
        if self.running is not None and timeout is None:  # the pass's timeout bounds its waits
            self.timeout, self.started = self.running.timeout, self.running.started
        self.op = self.root = self.problem = self.anchor = self.reduced = self.root_array = None
        self.tensors, self.listed, self.levels = (), False, ()
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
        many leading signature words must be equal), or raise on every rank; see Note [agreed
        collectives]."""
        comms = self.comms
        if comms.out_of_step is not None:
            raise DistributedError(
                f"{self.kind}: rank {comms.rank}: an earlier collective, {comms.out_of_step}, so "
                "mpigrad's collective communicator is out of step: call "
                "mpigrad.distributed.destroy() and init() on every rank"
            )
        self.levels = levels = dual._levels if _State.forward_ad_enabled else ()
        if len(levels) > MAX_LEVELS and self.problem is None:
            self.problem = ValueError(
                f"collectives carry tangents of at most {MAX_LEVELS} nested dual levels; "
                f"{len(levels)} are open"
            )
        self.seq = seq = comms.collective_calls
        comms.collective_calls = seq + 1
        template, expected = self._template(rule)
        mine = template.copy()
        seq &= 0xFFFF
        adjoint = (self.adjoint_of + 1) & 0xFFFF
        mine[_CALL], mine[_CALL + 1] = seq, seq * seq
        mine[_CALL + 2], mine[_CALL + 3] = adjoint, adjoint * adjoint
        data = self._slot_data()
        if data is not None:
            mine[_SLOT : _SLOT + data.size] = data if data.ndim == 1 else data.reshape(-1)
        summed = np.empty(_LENGTH)
        request = comms.collective.Iallreduce(mine, summed, op=MPI.SUM)
        self._wait(request, "every rank to join it", mine, summed)
        # Plain lists: at these sizes, faster than numpy's comparisons.
        sums, size = summed[:_SLOT].tolist(), comms.size
        if (
            sums[_PROBLEMS]
            or sums[:_CALL] != expected[:_CALL]
            or sums[_CALL] != size * seq
            or sums[_CALL + 1] != size * seq * seq
            or sums[_CALL + 2] != size * adjoint
            or sums[_CALL + 3] != size * adjoint * adjoint
        ):
            self._fail(rule)
        self.same_shapes = sums[_SHAPES:_JOINED] == expected[_SHAPES:]
        self.record = record = sums[_RECORDING] > 0
        if record and sums[_DISABLED] and self.context is not None:
            self._refuse_disabled()
        if sums[_ROOT_DTYPE]:
            self.root_array = (messages.DTYPES[int(sums[_ROOT_DTYPE]) - 1], int(sums[-1]) - 1)
        if data is not None:
            reduced = summed[_SLOT : _SLOT + data.size]
            self.reduced = reduced if data.ndim == 1 else reduced.reshape(data.shape)
        fill = record and self.recording == 1
        missing = ()
        if levels:
            missing = [
                i for i in range(len(levels)) if sums[_TANGENTS + i] and not self.tangents >> i & 1
            ]
        if fill or missing:
            self.anchor = Tensor(np.zeros(()), requires_grad=fill)
            for i in missing:
                self.anchor = make_dual(self.anchor, np.zeros(()), level=levels[i])

    def _template(self, rule):
        """This rank's agreement words but the call counts and the slot, and their first _JOINED
        words times the number of ranks (a list): made once for every call of one kind, op,
        root, dtype, shapes, levels and state (see Note [agreed collectives]).  Sets
        ``tangents`` (the levels at which its inputs carry tangents, as bits) and ``recording``
        (the RECORD word)."""
        tensors, levels = self.tensors, self.levels
        tangents = 0
        if levels:
            for t in tensors:
                for level in t._fw or ():
                    if level in levels:
                        tangents |= 1 << levels.index(level)
        self.tangents = tangents
        recording = 0
        if _State.grad_enabled:
            recording = 1
            for t in tensors:
                if t._requires_grad:
                    recording = 2
                    break
        self.recording = recording
        shapes = None
        if tensors and self.problem is None:
            first = tensors[0]
            shapes = (
                first.dtype,
                tuple([t.shape for t in tensors]) if self.listed else first.shape,
            )
        key = (
            self.comms.size,
            self.comms.rank,
            rule,
            self.kind,
            self.op,
            self.root,
            len(levels),
            self.problem is not None,
            recording,
            tangents,
            shapes,
        )
        template = _templates.get(key)
        if template is None:
            if len(_templates) >= _MAX_TEMPLATES:
                _templates.clear()
            template = _templates[key] = self._make_template(rule, shapes)
        return template

    def _make_template(self, rule, shapes):
        words = self._signature()
        compared = words[KIND:ADJOINT] + words[ADJOINT + 1 : rule]
        template = np.zeros(_LENGTH)
        template[_DIGEST:_CALL] = _pairs(_digest(compared), 4)
        template[_SHAPES:_JOINED] = _pairs(_digest(shapes and shapes[1]), 4)
        template[_PROBLEMS] = self.problem is not None
        template[_DISABLED] = self.recording == 0
        template[_RECORDING] = self.recording == 2
        for i in range(len(self.levels)):
            template[_TANGENTS + i] = self.tangents >> i & 1
        if shapes is not None and self.root == self.comms.rank:
            template[_ROOT_DTYPE : _ROOT_DTYPE + 2] = (words[DTYPE] + 1, words[NDIM] + 1)
        return template, (template[:_JOINED] * self.comms.size).tolist()

    def _slot_data(self):
        """The array this call reduces with its agreement (see Note [agreed collectives]), or
        None."""
        if self.kind != "all_reduce" or self.problem is not None or self.op not in ("sum", "avg"):
            return None
        data = self.tensors[0].data
        return data if data.dtype == np.float64 and data.size <= SLOT else None

    def _signature(self):
        """This rank's signature words, a list of ints (see Note [agreed collectives])."""
        tensors = self.tensors
        words = [
            self.seq,
            _KIND_CODES[self.kind],
            self.adjoint_of,
            -1 if self.op is None else _OP_CODES[self.op],
            -1 if self.root is None else self.root,
            len(self.levels),
        ]
        shape = ()
        if not tensors or self.problem is not None:
            words += [-1, -1, -1, -1]
        elif self.listed:
            first = tensors[0]
            words += [messages.dtype_code(first.dtype), first.ndim, len(tensors)]
            words.append(zlib.crc32(repr([t.shape for t in tensors]).encode()))
        else:
            first = tensors[0]
            words += [messages.dtype_code(first.dtype), first.ndim, -1, -1]
            shape = first.shape
        words += shape
        words += _UNUSED[len(shape)]
        words += (self.problem is not None, self.recording, self.tangents)
        return words

    def _refuse_disabled(self):
        """Inside a context, raise on every rank, which all call this, that a rank cannot record
        this call that others record (see Note [agreed collectives])."""
        rows = [theirs["words"] for theirs in self._every_rank()]
        disabled = [r for r, row in enumerate(rows) if row[RECORD] == 0]
        raise RuntimeError(
            f"{self.kind}: rank(s) {disabled} called it with gradients disabled, while "
            f"other ranks record it (collective call {self.seq}, in dist_autograd context "
            f"{self.context.context_id}): inside a context every rank records a collective that "
            "any rank records, or its backward would wait for them forever; disable gradients on "
            f"every rank or on none (raised on every rank; this is rank {self.comms.rank})"
        )

    def apply(self, function, *xs):
        """``function.apply(self, anchor, *xs)``, the op's Function on this agreed call.  A
        recorded call's node ``communicates`` (so that every rank's backward runs it), and inside
        a context it is recorded in the context too (see Note [collectives in a context] in
        engine.py).  A call that no rank records and that carries no tangent runs with
        gradients disabled, Function.apply's shortest path: its result is the same."""
        if not self.record and not self.levels and _State.grad_enabled:
            _State.grad_enabled = False
            try:
                return function.apply(self, self.anchor, *xs)
            finally:
                _State.grad_enabled = True
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

    def _every_rank(self):
        """Every rank's signature (``words``), the description of its call (``call``) and the
        problem it found (``problem``: None, or its type's name and text), by rank; every rank
        calls this."""
        problem = None if self.problem is None else [type(self.problem).__name__, str(self.problem)]
        mine = {"words": self._signature(), "call": self.describe(), "problem": problem}
        every = allgather_bytes(
            self.comms.collective,
            json.dumps(mine).encode(),
            lambda request, *buffers: self._wait(
                request, "every rank to describe its call", *buffers
            ),
        )
        return [json.loads(text) for text in every]

    def _fail(self, rule):
        """Raise, on every rank, what the agreement found wrong (every rank calls this)."""
        described = self._every_rank()
        where = f"(raised on every rank; this is rank {self.comms.rank})"
        for r, theirs in enumerate(described):
            if theirs["problem"] is not None:
                name, text = theirs["problem"]
                raise _ERRORS.get(name, DistributedError)(f"{self.kind}: rank {r}: {text} {where}")
        rows = [theirs["words"] for theirs in described]
        column = next(c for c in range(rule) if len({row[c] for row in rows}) > 1)
        calls = by_rank([theirs["call"] for theirs in described])
        reason = _REASONS.get(column, "the shapes differ")  # the SHAPE words
        raise DistributedError(
            f"{self.kind}: the ranks' calls do not match: {reason}: {calls}. Every "
            "rank must make the same collective calls in the same order, with matching "
            "arguments (outside a dist_autograd context, every rank's backward must reach the "
            f"same collectives in the same order) {where}"
        )

    def _wait(self, request, what, *buffers):
        """Wait for ``request`` (a collective on ``comms.collective``, on ``buffers``) to
        complete; if the wait raises, the request is abandoned, and its buffers are kept for as
        long as the process lives, since MPI may still complete it (see Note [agreed
        collectives])."""
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
            comms.abandoned.append((request, buffers))
            comms.out_of_step = (
                f"{self.kind} (collective call {self.seq}), did not complete "
                f"on rank {comms.rank} ({type(e).__name__})"
            )
            raise

    def every_shape(self):
        """Every rank's shape, by rank (rule RAGGED; one tensor each).  Every rank calls it:
        where the shapes differ, it is an allgather."""
        mine = self.tensors[0].shape
        if self.same_shapes:
            return [mine] * self.comms.size
        ndim = len(mine)  # the same on every rank: agreed
        shape, shapes = np.array(mine, np.int64), np.empty((self.comms.size, ndim), np.int64)
        self._wait(
            self.comms.collective.Iallgather(shape, shapes), "every rank's shape", shape, shapes
        )
        return [tuple(shape) for shape in shapes.tolist()]


def allgather_bytes(channel, data, wait):
    """Every rank's ``data`` (bytes), by rank: collective over ``channel``; ``wait(request,
    *buffers)`` waits for each of its two non-blocking steps."""
    size = channel.Get_size()
    length, lengths = np.array([len(data)], np.int64), np.empty(size, np.int64)
    wait(channel.Iallgather(length, lengths), length, lengths)
    received = bytearray(int(lengths.sum()))
    displs = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
    counts = lengths.tolist()
    wait(
        channel.Iallgatherv([data, MPI.BYTE], [received, counts, displs, MPI.BYTE]), data, received
    )
    return [bytes(received[d : d + n]) for d, n in zip(displs, counts)]


def by_rank(texts):
    """``texts`` (one per rank) as ``"rank 0: a; ranks 1, 2: b"``, the ranks with equal texts
    together, in the order the texts first appear."""
    groups = {}
    for r, text in enumerate(texts):
        groups.setdefault(text, []).append(str(r))
    return "; ".join(
        f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}: {text}"
        for text, ranks in groups.items()
    )


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
    the call's agreement reduced it already when it is small (see Note [agreed collectives]),
    and then a forward that runs again (Note [nested tangents] in dual.py) reads it again."""
    if call.reduced is not None:
        return call.reduced / call.comms.size if call.op == "avg" else call.reduced.copy()
    array, out = np.ascontiguousarray(array), np.empty(array.shape, array.dtype)
    call._wait(
        call.comms.collective.Iallreduce(array, out, op=_MPI_OPS[call.op]),
        "every rank's data",
        array,
        out,
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
        out,
    )
    return out


def reduce(call, array):
    """The reduction of every rank's ``array`` on the root; an empty array elsewhere."""
    root = call.comms.rank == call.root
    array, out = np.ascontiguousarray(array), np.empty(array.shape if root else (0,), array.dtype)
    call._wait(
        call.comms.collective.Ireduce(
            array, out if root else None, op=_MPI_OPS[call.op], root=call.root
        ),
        "every rank's data",
        array,
        out,
    )
    if root and call.op == "avg":
        out /= call.comms.size
    return out


def all_gather(call, array):
    """Every rank's ``array`` (shapes as the ranks passed them), by rank."""
    shapes = call.every_shape()
    total = sum(_pieces(None, shapes, array.dtype)[1])
    buffer = np.empty(total, np.uint8)
    pieces, counts, displs = _pieces(buffer, shapes, array.dtype)
    array = np.ascontiguousarray(array)
    call._wait(
        call.comms.collective.Iallgatherv(
            [_bytes(array), MPI.BYTE], [buffer, counts, displs, MPI.BYTE]
        ),
        "every rank's data",
        array,
        buffer,
    )
    return pieces


def gather(call, array):
    """Every rank's ``array`` on the root, by rank; None elsewhere."""
    comms = call.comms
    shapes = call.every_shape()
    array = np.ascontiguousarray(array)
    if comms.rank != call.root:
        call._wait(
            comms.collective.Igatherv([_bytes(array), MPI.BYTE], None, root=call.root),
            "every rank's data",
            array,
        )
        return None
    buffer = np.empty(sum(_pieces(None, shapes, array.dtype)[1]), np.uint8)
    pieces, counts, displs = _pieces(buffer, shapes, array.dtype)
    call._wait(
        comms.collective.Igatherv(
            [_bytes(array), MPI.BYTE], [buffer, counts, displs, MPI.BYTE], root=call.root
        ),
        "every rank's data",
        array,
        buffer,
    )
    return pieces


def scatter(call, arrays):
    """This rank's piece of the root's ``arrays`` (ignored elsewhere)."""
    comms, root = call.comms, call.root
    dtype, ndim = call.root_array
    shapes = None
    if comms.rank == root:
        shapes = np.array([a.shape for a in arrays], np.int64).reshape(comms.size, ndim)
    shape = np.empty(ndim, np.int64)
    call._wait(
        comms.collective.Iscatter(shapes, shape, root=root), f"rank {root}'s shapes", shapes, shape
    )
    out = np.empty(tuple(shape.tolist()), dtype)
    send = buffer = None
    if comms.rank == root:
        buffer = np.concatenate([_bytes(np.ascontiguousarray(a)) for a in arrays])
        _, counts, displs = _pieces(None, [a.shape for a in arrays], dtype)
        send = [buffer, counts, displs, MPI.BYTE]
    call._wait(
        comms.collective.Iscatterv(send, [_bytes(out), MPI.BYTE], root=root),
        f"rank {root}'s data",
        buffer,
        out,
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
        send,
        out,
    )
    if call.op == "avg":
        out /= comms.size
    return out


def all_to_all(call, arrays):
    """What every rank sent this rank (``arrays[j]`` goes to rank ``j``), by rank."""
    comms, dtype = call.comms, arrays[0].dtype
    ndim = arrays[0].ndim
    mine = np.array([a.shape for a in arrays], np.int64).reshape(comms.size, ndim)
    shapes = np.empty((comms.size, ndim), np.int64)
    call._wait(comms.collective.Ialltoall(mine, shapes), "every rank's shapes", mine, shapes)
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
        send,
        buffer,
    )
    return pieces
