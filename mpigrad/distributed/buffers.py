"""Arrays to receive large payloads into, reused between transfers.

Note [received buffers]: where the C allocator hands freed memory back to the kernel, a fresh array
pays for a page fault on every page its payload is received into (64 MiB took 46 ms where a
reused array took 4 ms, on a 2-core VM), so payloads of
``POOL_MIN_BYTES`` or more (forward tensors and gradients alike) are received into buffers kept
between transfers.  Who holds a buffer is explicit, never read from a reference count (CPython's
counts are not stable across versions, and a miscount would overwrite a live tensor):

- the pool hands a buffer out through a ``Lease``, whose ``__array_interface__`` gives numpy the
  buffer's memory with the payload's dtype and shape.  The array ``receive_buffer`` returns has
  the lease as its base, and every view of that array keeps the array, and so the lease, alive:
  the tensor or gradient the payload became owns the buffer while any array over it lives;
- when the last of them dies the lease dies, and a weak reference's callback gives the buffer
  back: it becomes idle, and the next payload of the same size is received into it.

The process's pool is used only where mpigrad does not have the C allocator keep freed memory
(``mpigrad.memory.kept()`` False: ``MPIGRAD_KEEP_FREED_MEMORY=0``, glibc's own variables set, or
not glibc).  Where it does, a fresh array reuses the pages a freed one left, without a fault, and
the pool would only add its bookkeeping (measured on a 2-core VM, 2 ranks: a 1 MiB receive 108 us
into a fresh array, 169 us into a pooled one; 8 MiB: 821 against 929 us; 64 MiB: equal).

Idle buffers are bounded in total bytes, the least recently given back dropped first:
``MPIGRAD_POOL_BYTES`` (default 256 MiB; read once, when the pool is first used; 0 turns pooling
off).  Buffers handed out are not counted: they belong to tensors.  ``release()`` drops every idle
buffer, and a buffer handed out before it is freed, not kept, when its last array dies.
"""

import threading
import weakref
from collections import deque

import numpy as np

from .. import memory
from . import settings

__all__ = [
    "receive_buffer",
    "release",
    "pool",
    "BufferPool",
    "Lease",
    "POOL_MIN_BYTES",
]

POOL_MIN_BYTES = 1 << 20
"""Payloads below this size get a fresh array: page faults are cheap there."""


class Lease:
    """A pooled ``buffer`` handed out as an array of ``shape`` and ``dtype``: ``np.asarray(lease)``
    is that array (see Note [received buffers])."""

    __slots__ = ("__array_interface__", "buffer", "__weakref__")

    def __init__(self, buffer, shape, dtype):
        self.buffer = buffer  # keeps the memory alive, whatever becomes of the pool
        self.__array_interface__ = {
            "version": 3,
            "shape": shape,
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (buffer.ctypes.data, False),
            "strides": None,
        }


class BufferPool:
    """Buffers for payloads of ``POOL_MIN_BYTES`` or more, reused between transfers, with at most
    ``limit_bytes`` of them idle (0: none kept, every payload gets a fresh array)."""

    def __init__(self, limit_bytes):
        self.limit_bytes = limit_bytes
        self._idle = []  # uint8 buffers given back, the least recently given back first
        self._idle_bytes = 0
        # Buffers whose lease died, not yet idle: a lease can die anywhere (a garbage collection
        # inside receive included), so its callback only appends here and settles if it can.
        self._back = deque()
        self._leases = {}  # weak reference to each lease handed out -> its buffer
        self._lock = threading.Lock()

    @property
    def idle_bytes(self):
        """Total bytes of the idle buffers: at most ``limit_bytes``."""
        self._settle()
        return self._idle_bytes

    def receive(self, shape, dtype):
        """A writable array of ``shape`` and ``dtype`` to receive into: an idle buffer of its size
        if there is one, else a new one, handed out through a ``Lease``; below
        ``POOL_MIN_BYTES`` a fresh array."""
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if nbytes < POOL_MIN_BYTES or not self.limit_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            self._settle_locked()
            buffer = self._take(nbytes)
        self._settle()  # what came back while the lock was held
        if buffer is None:
            buffer = np.empty(nbytes, np.uint8)
        lease = Lease(buffer, shape, dtype)
        self._leases[weakref.ref(lease, self._given_back)] = buffer
        return np.asarray(lease)

    def release(self):
        """Drop every idle buffer, and forget those handed out: they are freed when their last
        array dies.  The pool stays usable."""
        with self._lock:
            self._leases.clear()  # their weak references, and so their callbacks, go
            self._back.clear()
            self._idle.clear()
            self._idle_bytes = 0

    def _take(self, nbytes):
        idle = self._idle
        for i in range(len(idle) - 1, -1, -1):  # the most recently given back: warmest in cache
            if idle[i].nbytes == nbytes:
                self._idle_bytes -= nbytes
                return idle.pop(i)
        return None

    def _given_back(self, ref):
        buffer = self._leases.pop(ref, None)
        if buffer is not None:  # None: released meanwhile
            self._back.append(buffer)
            self._settle()

    def _settle(self):
        """Make the given-back buffers idle, unless the lock is held: its holder settles before
        it lets go, and the loop catches a buffer given back between its check and letting go."""
        while self._back and self._lock.acquire(blocking=False):
            try:
                self._settle_locked()
            finally:
                self._lock.release()

    def _settle_locked(self):
        back, idle = self._back, self._idle
        while back:
            buffer = back.popleft()
            idle.append(buffer)
            self._idle_bytes += buffer.nbytes
        while self._idle_bytes > self.limit_bytes:
            self._idle_bytes -= idle.pop(0).nbytes


_pool = None


def pool():
    """This process's pool, made at the first call with the limit ``MPIGRAD_POOL_BYTES`` gives
    (read then, once), or 0 where ``mpigrad.memory.kept()`` (Note [received buffers]).  Raises
    ValueError naming the variable for a value that is not a whole number of bytes, 0 or more."""
    global _pool
    if _pool is None:
        limit = settings.pool_bytes()
        _pool = BufferPool(0 if memory.kept() else limit)
    return _pool


def receive_buffer(shape, dtype):
    """An array of ``shape`` and ``dtype`` to receive into, from this process's pool (see Note
    [received buffers]): writable, and the caller's until it and its views are gone."""
    return pool().receive(shape, dtype)


def release():
    """Drop this process's idle buffers (``BufferPool.release``); ``destroy()`` calls it."""
    if _pool is not None:
        _pool.release()
