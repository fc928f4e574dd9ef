"""The communicators mpigrad talks on, duplicated from the user's, and checks of ranks and tags.

``init(comm)`` duplicates the user's communicator (COMM_WORLD by default) seven times (or takes
up those that ``destroy`` kept: see Note [reusing communicators]), so that no message of
mpigrad's can match a receive of the user's, nor one of its kinds another:

- ``data_free``: the headers (with any inline payload) of tensors sent outside any context
  (``send``/``recv``), under the user's tags;
- ``data[0]``, ``data[1]``: the same inside a context, by the parity of its id (see Note [data
  communicators]);
- ``payload``: the raw bytes of payloads too large to ride inline, of any message, under tags
  mpigrad draws from a counter (see Note [inline payloads] in messages.py);
- ``gradient``: the distributed backward's gradients, markers and agreement, under the tags of
  the pass (see Note [pass tags]);
- ``control``: notices (a rank failed in a context, a rank's program ended), the agreement that
  leaves a context, the questions a stalled rank asks and their answers (see waiting.py), and
  the collectives of ``init`` (aligning context ids) and ``destroy`` (counting messages);
- ``collective``: the collectives users call (``all_reduce``, ``broadcast``, ...) and the
  signatures the ranks agree on before each (see Note [agreed collectives] in collective.py);
  nothing point-to-point travels on it.

``init`` is collective over the communicator, as a duplication is.  Without an explicit call,
the first call of any ``mpigrad.distributed`` function initializes on COMM_WORLD, so then every
rank must make such a call.  ``init`` also arranges what happens when a rank's program ends
(see shutdown.py).
"""

from __future__ import annotations

import operator
import os
import sys
import time
import weakref

import numpy as np
from mpi4py import MPI

from ..kernels import threads
from . import settings
from .errors import DistTimeoutError

__all__ = [
    "init",
    "destroy",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "Communicators",
    "get",
]


class Communicators:
    """The user's communicator, its ``group`` (which this object frees), and mpigrad's
    duplicates of it: new ones, or ``dups`` (those a ``destroy`` kept, in the order of
    ``_NAMES``), which the ranks made together under ``token`` (see Note [reusing
    communicators])."""

    def __init__(self, comm, group, token, dups=None):
        self.user, self.group, self.token = comm, group, token
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        if dups is None:
            dups = [comm.Dup() for _ in range(7)]
            for dup, name in zip(dups, _NAMES):
                dup.Set_name(f"mpigrad {name}")
        (
            self.data_free,
            data_even,
            data_odd,
            self.payload,
            self.gradient,
            self.control,
            self.collective,
        ) = dups
        self.data = (data_even, data_odd)
        self.collective_calls = 0  # collective calls this rank has made on it
        # Collectives that never completed on this rank (see Note [agreed collectives]), and why.
        self.abandoned, self.out_of_step = [], None
        self.shared_cores = _shares_cores(comm)  # see Note [waiting] in waiting.py
        # MPI attaches TAG_UB to COMM_WORLD; Open MPI's duplicates of COMM_SELF lack it.
        self.tag_ub = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)
        # Control tags: two per context (its notices, its leaving agreement) below the three
        # reserved at the top; gradient tags: four per context (two passes' messages and
        # agreements).  The spans keep the parity (and the pair) of a tag through the modulo.
        self.exit_tag, self.query_tag = self.tag_ub, self.tag_ub - 1
        self.answer_tag = self.tag_ub - 2
        self._control_span = self.answer_tag & ~1
        self._gradient_span = (self.tag_ub + 1) & ~3
        self.departed = {}  # rank -> what it said when its program ended (see shutdown.py)
        # Messages posted to each rank and messages received, per communicator (by id), and the
        # receives posted and not complete: what destroy() must settle (transport.drain).
        self.channels = tuple(dup for dup, _ in self._named())
        self.sent = {id(c): [0] * self.size for c in self.channels}
        self.received = dict.fromkeys(map(id, self.channels), 0)
        self.receiving = weakref.WeakSet()

    def _named(self):
        """The point-to-point communicators and their names (all but ``collective``)."""
        return tuple(zip(self.duplicates()[:-1], _NAMES))

    def duplicates(self):
        """Every communicator of mpigrad's, in the order of ``_NAMES``."""
        return (
            self.data_free,
            *self.data,
            self.payload,
            self.gradient,
            self.control,
            self.collective,
        )

    # Note [data communicators]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~
    # A context's tensors travel on ``data[id % 2]``, so those of two consecutive contexts never
    # share a communicator.  When a context is left, the ranks agree on how many tensors were sent
    # to each of them in it (see context.py); a rank that received fewer finds the rest on its
    # context's communicator without ever taking a message of the next context, which a faster rank
    # may already have sent.  A tensor sent in a context other than the receiver's therefore never
    # matches its receive: the waiting receive looks for it on the other communicators and reports
    # both contexts.
    def data_comm(self, context_id):
        """The communicator of tensors sent in ``context_id`` (None: outside any context)."""
        return self.data_free if context_id is None else self.data[context_id & 1]

    def control_tag(self, context_id, agreement=False):
        """The control tag of a context's notices, or of its leaving agreement."""
        return (2 * context_id + agreement) % self._control_span

    # Note [pass tags]
    # ~~~~~~~~~~~~~~~~
    # A backward pass sends its gradients and markers under a gradient-communicator tag made of
    # its context id and the parity of its index among the context's passes, and its agreement
    # under the next tag: two passes that can overlap in time (a rank may start the next pass of
    # a context, or the first of the next context, while a slower rank still receives the end of
    # this one) never share a tag, and a failed context's leftover messages can never be taken
    # for a later pass's.
    def gradient_tag(self, context_id, pass_index, agreement=False):
        """The gradient tag of a context's pass's messages, or of its agreement (see Note
        [pass tags])."""
        return (4 * context_id + 2 * (pass_index & 1) + agreement) % self._gradient_span

    def check_peer(self, peer, op, role, null=False):
        """``peer`` as an int if it is a rank of the communicator (any integer type: numpy's
        too), or ``MPI.PROC_NULL`` where ``null`` allows it (the peer of a point-to-point
        transfer); ValueError otherwise (no wildcards)."""
        index = _integer(peer)
        if null and index == MPI.PROC_NULL:
            return index
        if index is None or not 0 <= index < self.size:
            allowed = "no ANY_SOURCE; PROC_NULL" if null else "no ANY_SOURCE, no PROC_NULL"
            raise ValueError(
                f"{op}: {role} {peer!r} is not a rank of the communicator: ranks are 0 to "
                f"{self.size - 1} (world size {self.size}; this is rank {self.rank}). "
                f"mpigrad.distributed takes explicit ranks only ({allowed}"
                + (" stands for no peer)" if null else ")")
            )
        return index

    def check_tag(self, tag, op, role="tag"):
        """``tag`` as an int if it is a valid user tag (0 to MPI's TAG_UB, any integer type);
        ValueError otherwise (no ANY_TAG)."""
        index = _integer(tag)
        if index is None or not 0 <= index <= self.tag_ub:
            raise ValueError(
                f"{op}: {role} {tag!r} is not a valid tag: tags are integers from 0 to "
                f"{self.tag_ub} (MPI's TAG_UB; this is rank {self.rank}). "
                "mpigrad.distributed takes explicit tags only (no ANY_TAG)"
            )
        return index

    def free(self):
        """Free the communicators (those of collectives that never completed are kept: see Note
        [agreed collectives] in collective.py)."""
        for dup, _ in self._named():
            dup.Free()
        if self.abandoned:  # MPI may still complete them
            _abandoned.extend(self.abandoned)
        else:
            self.collective.Free()
        self.group.Free()


_NAMES = ("data", "data even", "data odd", "payload", "gradient", "control", "collective")


def sharing(mine, masks):
    """How many ranks may run on the cores ``mine`` (a set of CPU numbers) of a rank: those of
    ``masks``, the core sets of every rank on its node (its own included), that meet ``mine``.
    The rank shares its cores when that is more than ``len(mine)``."""
    return sum(1 for cores in masks if cores & mine)


def _shares_cores(comm):
    """Whether this rank shares its cores with more ranks than they are, among the ranks of
    ``comm`` on its node (collective), from the ranks' affinity masks rather than their number,
    so that ranks a launcher binds each to cores of their own (Open MPI's default, Slurm's
    --cpu-bind, MPICH's -bind-to core) are seen not to share.  Tells the kernels' thread policy
    the count (``threads.set_sharing``)."""
    if hasattr(os, "sched_getaffinity"):
        mine = os.sched_getaffinity(0)
    else:  # every rank may run anywhere
        mine = set(range(os.cpu_count() or 1))
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks = sharing(mine, node.allgather(mine))
    finally:
        node.Free()
    threads.set_sharing(ranks)
    return ranks > len(mine)


def _integer(value):
    """``value`` as an int if it is of an integer type (Python's or numpy's; not bool), else
    None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


_comms = None
# The abandoned collectives (request, buffers) of freed communicators, kept for as long as the
# process lives: MPI may still complete them, into their buffers.
_abandoned = []
_payload_tags = 0  # per process, so that a new init never reuses a tag of a message in flight


def next_payload_tag():
    """A fresh tag for a payload on ``payload``; wraps after MPI's TAG_UB messages."""
    global _payload_tags
    tag = _payload_tags
    _payload_tags = (tag + 1) % (get().tag_ub + 1)
    return tag


def init(comm: MPI.Intracomm | None = None, timeout: float | None = None) -> None:
    """Initialize on comm (COMM_WORLD if None): collective over it. Returns nothing.

    Calling it again with the same communicator does nothing; with another one it raises
    (call ``destroy()`` first).  ``destroy()`` then ``init()`` also brings ranks whose contexts
    went out of step (a failed program) back into step: see Note [context ids] in context.py.
    A rank of ``comm`` that never calls it (nor any ``mpigrad.distributed`` function, for
    COMM_WORLD) leaves the others waiting: they say so on stderr after
    ``MPIGRAD_STALL_WARNING`` seconds and raise ``DistTimeoutError`` after ``timeout`` seconds
    (default ``MPIGRAD_TIMEOUT``), and ``comm`` then holds a collective that never completed.
    """
    global _comms
    from . import context, shutdown, waiting

    seconds = waiting.resolve_timeout(timeout, "init")
    comm = MPI.COMM_WORLD if comm is None else comm
    if _comms is not None:
        if comm == _comms.user:
            return
        raise RuntimeError(
            "mpigrad.distributed is already initialized on another communicator "
            f"({_comms.user.Get_name()!r}, size {_comms.size}); it cannot switch to "
            f"{comm.Get_name()!r} (size {comm.Get_size()}) without destroy() first. Note that "
            "any mpigrad.distributed call initializes on COMM_WORLD if init was not called."
        )
    shutdown.install()  # first: an error of init's own ends the job too
    _comms = _communicators(comm, seconds)
    context.align_ids(_comms.control)


# Note [reusing communicators]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# destroy() does not free the duplicates it has drained: it keeps them, one set per group of
# ranks, and the next init() on a communicator of that group (the same ranks in the same order:
# COMM_WORLD, or any duplicate of it) takes them up again instead of duplicating anew.  Under
# Open MPI's ob1 transport at 3 ranks, about one destroy in 25 of the tests' init/destroy cycles
# hung in its first collective on a freshly duplicated control communicator, every rank inside
# it and point-to-point messages on it still flowing, once earlier cycles had freed theirs (MPI
# hands freed communicators' identities to new ones); with the duplicates kept, none did in 90
# runs.  It also saves seven duplications and frees per cycle.  Whether to reuse is agreed in one
# allreduce over the new communicator: every rank must hold the same set (``token``: a number
# the ranks agreed when they made it, larger than any this rank had seen), else every rank makes
# new ones.  A kept set is never freed (freeing is collective, and the ranks that hold it need
# not be together when another set replaces it): a program keeps one set per group of ranks it
# initializes on.  A set with a collective that never completed is freed, never kept.
_spares = []  # the Communicators destroy() kept, one per group
_tokens = 0  # tokens of sets this rank has made: the next is at least this


def _kept_for(group):
    """The kept set of ``group``'s ranks, or None."""
    return next((s for s in _spares if MPI.Group.Compare(s.group, group) == MPI.IDENT), None)


def _communicators(comm, timeout):
    """The ``Communicators`` of ``comm``: the kept set if every rank of ``comm`` holds it, else
    new duplicates (collective over ``comm``; see Note [reusing communicators]).  Its first
    collective waits at most ``timeout`` seconds (None: no limit) for every rank to call it."""
    global _tokens
    group = comm.Get_group()
    spare = _kept_for(group)
    kept = -1 if spare is None else spare.token
    words = np.array([kept, -kept, _tokens], np.int64)
    agreed = np.empty_like(words)
    request = comm.Iallreduce(words, agreed, op=MPI.MAX)
    try:
        _await_every_rank(comm, request, timeout)
    except BaseException:
        _abandoned.append((request, (words, agreed)))  # MPI may complete it later, into them
        group.Free()
        raise
    if kept >= 0 and agreed[0] == kept == -agreed[1]:
        _spares.remove(spare)
        spare.group.Free()
        return Communicators(comm, group, kept, spare.duplicates())
    _tokens = int(agreed[2]) + 1
    return Communicators(comm, group, _tokens - 1)


_INIT_SPIN_SECONDS = 10e-3  # how long init polls without sleeping for the other ranks


def _await_every_rank(comm, request, timeout):
    """Wait for ``request``, ``init``'s first collective over ``comm``, which completes once every
    rank has called ``init``.  No Waiter (it needs mpigrad's communicators, not made yet): it
    polls, yielding the core, for ``_INIT_SPIN_SECONDS``, then every millisecond; it says on stderr
    what it waits for every ``MPIGRAD_STALL_WARNING`` seconds, and raises DistTimeoutError after
    ``timeout`` seconds (None: never)."""
    start = time.monotonic()
    stall = settings.stall_warning()
    warn_at = None if stall is None else start + stall
    what = (
        f"the other ranks of its communicator ({comm.Get_name()!r}, {comm.Get_size()} ranks) to "
        "call mpigrad.distributed.init(), which is collective (the first call of any "
        "mpigrad.distributed function initializes on COMM_WORLD, so then every rank must make one)"
    )
    while not request.Test():
        now = time.monotonic()
        if timeout is not None and now - start > timeout:
            raise DistTimeoutError(
                f"rank {comm.Get_rank()}: init timed out after {timeout:g} s still waiting for: "
                f"{what}; the communicator now holds a collective that never completed"
            )
        if warn_at is not None and now > warn_at:
            warn_at = now + stall
            print(
                f"mpigrad: rank {comm.Get_rank()} has waited {now - start:.1f} s in init for: "
                f"{what}",
                file=sys.stderr,
                flush=True,
            )
        if now - start < _INIT_SPIN_SECONDS:
            os.sched_yield()
        else:
            time.sleep(1e-3)


def _keep(comms):
    """Keep ``comms``, drained, for the next init over its ranks; it replaces a set that some
    of them did not hold (see Note [reusing communicators])."""
    replaced = _kept_for(comms.group)
    if replaced is not None:
        _spares.remove(replaced)
    _spares.append(comms)


def destroy(timeout: float | None = None) -> None:
    """Release mpigrad's communicators and pooled receive buffers (collective); a later call
    initializes again.  Raises if a context is open.  The drained communicators are kept for
    the next ``init`` over the same ranks, which takes them up again (see Note [reusing
    communicators]); MPI_Finalize frees them.

    Messages still in flight on the communicators are received and dropped first, and receives
    still posted are cancelled (see ``transport.drain``).  If that does not finish within
    ``timeout`` seconds (default ``MPIGRAD_TIMEOUT``; a rank that never calls destroy), it raises
    ``DistTimeoutError`` and leaves the communicators allocated: a later ``init`` makes new ones.
    """
    global _comms
    if _comms is None:
        return
    from . import buffers, context, transport

    if context.current() is not None:
        raise RuntimeError(
            f"rank {_comms.rank}: destroy() inside context {context.current().context_id}: "
            "leave the context first"
        )
    comms = _comms
    buffers.release()
    try:
        transport.drain(comms, timeout)
    finally:
        _comms = None
    if comms.abandoned:
        comms.free()
    else:
        _keep(comms)


def is_initialized() -> bool:
    return _comms is not None


def get():
    """The Communicators, initializing on COMM_WORLD on first use."""
    if _comms is None:
        init()
    return _comms


def get_rank() -> int:
    """This process's rank in the communicator mpigrad was initialized on."""
    return get().rank


def get_world_size() -> int:
    """The size of the communicator mpigrad was initialized on."""
    return get().size
