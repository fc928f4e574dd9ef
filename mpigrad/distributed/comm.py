"""The communicators mpigrad talks on, duplicated from the user's, and rank checks.

``init(comm)`` duplicates the user's communicator (COMM_WORLD by default) four times, so that
no message of mpigrad's can match a receive of the user's, nor one of its kinds another:

- ``data``: headers of forward tensors (``send``/``recv``), under the user's tags;
- ``payload``: the raw bytes of payloads too large to ride inline, under tags mpigrad
  draws from a counter (see Note [inline payloads] in messages.py);
- ``gradient``: the autograd layer's gradient and no-gradient messages in backward;
- ``control``: the autograd layer's agreements (a pass's outcome, errors).

The last two are unused until the autograd layer exists; they are made here so that the set
of duplications, which is collective, never changes with what a program does.

``init`` is collective over the communicator, as a duplication is. Without an explicit call,
the first call of any ``mpigrad.distributed`` function initializes on COMM_WORLD, so then
every rank must make such a call.
"""

from mpi4py import MPI

__all__ = ["init", "destroy", "is_initialized", "get_rank", "get_world_size", "Communicators"]


class Communicators:
    """The user's communicator and mpigrad's duplicates of it."""

    def __init__(self, comm):
        self.user = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.data = comm.Dup()
        self.payload = comm.Dup()
        self.gradient = comm.Dup()
        self.control = comm.Dup()
        for dup, name in ((self.data, "data"), (self.payload, "payload"),
                          (self.gradient, "gradient"), (self.control, "control")):
            dup.Set_name(f"mpigrad {name}")
        self._tag_bound = self.payload.Get_attr(MPI.TAG_UB) + 1
        self._next_tag = 0

    def next_payload_tag(self):
        """A fresh tag for a payload on ``payload``; wraps after MPI's TAG_UB messages."""
        tag = self._next_tag
        self._next_tag = (tag + 1) % self._tag_bound
        return tag

    def check_peer(self, peer, op, role):
        """ValueError unless peer is a rank of the communicator (no wildcards, no PROC_NULL)."""
        if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < self.size:
            raise ValueError(
                f"{op}: {role} {peer!r} is not a rank of the communicator: ranks are 0 to "
                f"{self.size - 1} (world size {self.size}; this is rank {self.rank}). "
                "mpigrad.distributed takes explicit ranks only (no ANY_SOURCE, no PROC_NULL)"
            )
        return int(peer)

    def free(self):
        for dup in (self.data, self.payload, self.gradient, self.control):
            dup.Free()


_comms = None
_passes = 0  # backward passes so far in this process; see pass_tag


def pass_tag():
    """The gradient-communicator tag of a new backward pass (see Note [pass tags] in the
    distributed engine).  Counted per process, not per communicator, so that a message of an
    abandoned pass cannot match a later pass even on a communicator made again by init."""
    global _passes
    _passes += 1
    return _passes % get()._tag_bound


def init(comm=None):
    """Initialize on comm (COMM_WORLD if None): collective over it. Returns nothing.

    Calling it again with the same communicator does nothing; with another one it raises
    (call ``destroy()`` first).
    """
    global _comms
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
    _comms = Communicators(comm)


def destroy():
    """Free mpigrad's communicators (collective); a later call initializes again."""
    global _comms
    if _comms is not None:
        comms, _comms = _comms, None
        comms.free()


def is_initialized():
    return _comms is not None


def get():
    """The Communicators, initializing on COMM_WORLD on first use."""
    if _comms is None:
        init()
    return _comms


def get_rank():
    """This process's rank in the communicator mpigrad was initialized on."""
    return get().rank


def get_world_size():
    """The size of the communicator mpigrad was initialized on."""
    return get().size
