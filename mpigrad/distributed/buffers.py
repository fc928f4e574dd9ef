"""Arrays to receive large payloads into, reused between transfers.

Note [received buffers]: a fresh 64 MiB array costs 46 ms of page faults where a reused one costs
4 ms (measured here), so large payloads (forward tensors and gradients alike) are received into
buffers kept between transfers.  A buffer is reused only when nothing but the pool refers to it:
the tensor or gradient it became was dropped.
"""

import sys

import numpy as np

__all__ = ["receive_buffer", "POOL_MIN_BYTES"]

POOL_MIN_BYTES = 1 << 20
"""Payloads below this size get a fresh array: page faults are cheap there."""
_PER_SIZE = 4  # buffers kept per payload size
_pool = {}  # nbytes -> [uint8 buffers]


def receive_buffer(shape, dtype):
    """An array of ``shape`` and ``dtype`` to receive into (see Note [received buffers])."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    kept = _pool.setdefault(nbytes, [])
    for buffer in kept:
        # References: the list, this loop's name and getrefcount's argument; a view adds one.
        if sys.getrefcount(buffer) == 3:
            return buffer.view(dtype).reshape(shape)
    buffer = np.empty(nbytes, np.uint8)
    if len(kept) < _PER_SIZE:
        kept.append(buffer)
    return buffer.view(dtype).reshape(shape)
