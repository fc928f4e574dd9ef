"""The environment variables that configure ``mpigrad.distributed``, each read once per process,
when it is first needed.

- ``MPIGRAD_TIMEOUT``: the default ``timeout`` of every blocking call, in seconds (default 1800;
  0: none).  See waiting.py.
- ``MPIGRAD_STALL_WARNING``: seconds a call waits before it says on stderr what it waits for
  (default 60; 0: never).  See waiting.py.
- ``MPIGRAD_POOL_BYTES``: the most bytes of received buffers kept idle for reuse (default 256 MiB;
  0: none), where mpigrad does not keep freed memory (``MPIGRAD_KEEP_FREED_MEMORY=0``).  See
  buffers.py.
- ``MPIGRAD_ABORT_ON_EXCEPTION``: ``0`` keeps Python's handling of an uncaught exception, which
  otherwise aborts the whole job.  See shutdown.py.

A value that is not what the variable takes raises ValueError naming the variable.
"""

import functools
import os

__all__ = [
    "TIMEOUT",
    "STALL_WARNING",
    "POOL_BYTES",
    "ABORT_ON_EXCEPTION",
    "timeout",
    "stall_warning",
    "pool_bytes",
    "abort_on_exception",
]

TIMEOUT = "MPIGRAD_TIMEOUT"
STALL_WARNING = "MPIGRAD_STALL_WARNING"
POOL_BYTES = "MPIGRAD_POOL_BYTES"
ABORT_ON_EXCEPTION = "MPIGRAD_ABORT_ON_EXCEPTION"


def _read(name, default, convert, what):
    """``convert`` of the variable's value (``default`` when unset or empty), which must be a
    number of 0 or more; ValueError naming the variable and ``what`` it takes otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = convert(text)
    except ValueError:
        value = -1
    if not value >= 0:  # also refuses nan
        raise ValueError(f"{name}={text!r}: expected {what}")
    return value


@functools.cache
def timeout():
    """Seconds, or None for no limit."""
    if "MPIGRAD_BACKWARD_TIMEOUT" in os.environ:
        raise ValueError(
            f"MPIGRAD_BACKWARD_TIMEOUT is no longer read: {TIMEOUT} sets the "
            "timeout of every blocking call of mpigrad.distributed, backward too"
        )
    return _read(TIMEOUT, 1800.0, float, "a number of seconds, 0 for none") or None


@functools.cache
def stall_warning():
    """Seconds, or None for never."""
    return _read(STALL_WARNING, 60.0, float, "a number of seconds, 0 for never") or None


@functools.cache
def pool_bytes():
    return _read(
        POOL_BYTES,
        256 << 20,
        int,
        "a whole number of bytes, 0 or more (the most received buffers kept idle; 0 "
        "turns pooling off)",
    )


def abort_on_exception():
    return os.environ.get(ABORT_ON_EXCEPTION, "1").strip() != "0"
