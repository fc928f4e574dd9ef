"""Posting and receiving mpigrad's messages: a header (with an inline payload) and, for a large
payload, a second message of raw bytes; the wire format is in messages.py.

The ops in ``functions/``, the distributed engine, the context's leaving agreement and the
waiting ranks' notices all send and receive through here.
"""

import numpy as np
from mpi4py import MPI

from . import buffers, messages
from . import comm as _comm
from .messages import Kind

__all__ = ["SendRequest", "post", "receive", "receive_probed", "keep_until_sent", "settle"]


class SendRequest:
    """A pending send; ``wait()`` returns once the tensor's buffer may be reused."""

    def __init__(self, requests, buffers, dest, tag):
        self._requests = requests
        self._buffers = buffers  # kept alive until the sends complete
        self._dest, self._tag = dest, tag
        self.context = None  # a weak reference to the context the tensor was sent in, if any

    def wait(self, timeout=None):
        """Block until the send completed; ``DistTimeoutError`` after ``timeout`` seconds
        (default ``MPIGRAD_TIMEOUT``), the send still pending (``wait`` may be called again)."""
        if not self.test():
            from . import waiting

            waiting.wait_for(self.test, "SendRequest.wait", timeout, self._describe,
                             peers=[self._dest], context=self.context and self.context())

    def _describe(self):
        return f"rank {self._dest} to receive the tensor sent to it with tag {self._tag}"

    def test(self):
        """True once complete (then ``wait()`` returns at once)."""
        if self._requests and MPI.Request.Testall(self._requests):
            self._requests, self._buffers = [], ()
        return not self._requests


_unsent = []  # SendRequests of failed operations, kept (with their buffers) until they complete


def keep_until_sent(request):
    """Keep ``request`` and its buffers alive until its sends complete (notices, and the sends
    of a failed pass or context, which no one may ever wait for: MPI must not read freed memory
    meanwhile)."""
    settle()
    if not request.test():
        _unsent.append(request)


def settle():
    """Forget the kept requests that have completed; True when none is left."""
    _unsent[:] = [r for r in _unsent if not r.test()]
    return not _unsent


def post(comms, channel, array, dest, tag, kind=Kind.TENSOR, **header):
    """Start sending ``array``'s message to ``dest``: the header (with an inline payload) on
    ``channel`` under ``tag``, a large payload on ``comms.payload`` under a fresh tag.
    See Note [inline payloads] in messages.py."""
    payload_tag = _comm.next_payload_tag() if array.nbytes > messages.INLINE_LIMIT else -1
    words, payload = messages.pack(array, kind, payload_tag=payload_tag, **header)
    requests = [channel.Isend([words, MPI.BYTE], dest, tag)]
    if payload is not None:
        requests.append(comms.payload.Isend([payload, MPI.BYTE], dest, payload_tag))
    return SendRequest(requests, (words, payload), dest, tag)


def receive(comms, words, source):
    """The header and array of a message whose header words have arrived from ``source``: the
    inline payload (a writable view into ``words``, which nothing else may use), or a large
    payload received now into a pooled buffer.  ValueError on a malformed header."""
    header = messages.decode_header(words)
    if header.inline:
        return header, messages.unpack_inline(header, words)
    array = buffers.receive_buffer(header.shape, header.dtype)
    comms.payload.Recv([array.reshape(-1).view(np.uint8), MPI.BYTE], source, header.payload_tag)
    return header, array


def receive_probed(comms, message, status):
    """Receive the message a matched probe found: (header, array, source)."""
    words = messages.empty_message()
    message.Recv([words, MPI.BYTE])
    source = status.Get_source()
    header, array = receive(comms, words, source)
    return header, array, source
