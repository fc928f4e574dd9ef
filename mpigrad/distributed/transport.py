"""Posting and receiving mpigrad's messages: a header (with an inline payload) and, for a large
payload, a second message of raw bytes; the wire format is in messages.py.  Agreements' raw
words travel through here too, so every message is counted where ``drain`` looks.

The ops in ``functions/``, the distributed engine, agreements, the context's leaving and the
waiting ranks' notices all send and receive through here:

- ``post`` starts sending an array's message, ``post_words`` raw words (an agreement's);
- ``Receive`` is a receive posted for one message (a header and inline payload, or raw words);
  ``header_of`` decodes the header that came, ``payload_of`` takes the message's array and
  ``arrays_of`` its array and tangents;
- ``poll`` receives a message that has come, whole (header and array), if there is one;
  ``take`` receives a probed message's raw words.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import buffers, messages
from . import comm as _comm
from .messages import Kind

__all__ = [
    "SendRequest",
    "post",
    "post_words",
    "Receive",
    "header_of",
    "payload_of",
    "arrays_of",
    "poll",
    "take",
    "keep_until_sent",
    "settle",
    "drain",
]


class SendRequest:
    """A pending send; ``wait()`` returns once the tensor's buffer may be reused."""

    def __init__(self, requests, buffers, dest, tag):
        self._requests = requests
        self._buffers = buffers  # kept alive until the sends complete
        self._dest, self._tag = dest, tag
        self.context = None  # a weak reference to the context the tensor was sent in, if any

    def wait(self, timeout: float | None = None) -> None:
        """Block until the send completed; ``DistTimeoutError`` after ``timeout`` seconds
        (default ``MPIGRAD_TIMEOUT``), the send still pending (``wait`` may be called again)."""
        if not self.test():
            from . import waiting

            waiting.wait_for(
                self.test,
                "SendRequest.wait",
                timeout,
                self._describe,
                peers=[self._dest],
                context=self.context and self.context(),
            )

    def _describe(self):
        return f"rank {self._dest} to receive the tensor sent to it with tag {self._tag}"

    def test(self):
        """True once complete (then ``wait()`` returns at once)."""
        requests = self._requests
        if requests and (
            requests[0].Test() if len(requests) == 1 else MPI.Request.Testall(requests)
        ):
            self._requests, self._buffers = [], ()
        return not self._requests


_unsent = []  # SendRequests no one waits for, kept (with their buffers) until they complete
_SETTLE_EVERY = 64  # kept requests between two looks at which have completed


def keep_until_sent(request):
    """Keep ``request`` and its buffers alive until its sends complete: notices, agreements' and
    passes' sends, which no one waits for (a failed pass's may never be received), and MPI must
    not read freed memory meanwhile."""
    if not request.test():
        _unsent.append(request)
        if len(_unsent) % _SETTLE_EVERY == 0:
            settle()


def settle():
    """Forget the kept requests that have completed; True when none is left."""
    _unsent[:] = [r for r in _unsent if not r.test()]
    return not _unsent


def _isend(comms, channel, data, dest, tag):
    request = channel.Isend([data, MPI.BYTE], dest, tag)
    comms.sent[id(channel)][dest] += 1
    return request


def post(comms, channel, array, dest, tag, kind=Kind.TENSOR, tangents=(), **header):
    """Start sending ``array``'s message (with ``tangents``, as ``messages.pack`` takes them) to
    ``dest``: the header (with an inline payload) on ``channel`` under ``tag``, large payloads
    on ``comms.payload`` under a fresh tag.  See Note [inline payloads] in messages.py."""
    inline = messages.fits_inline(array.nbytes, len(tangents))
    payload_tag = -1 if inline else _comm.next_payload_tag()
    words, payloads = messages.pack(
        array, kind, payload_tag=payload_tag, tangents=tangents, **header
    )
    requests = [_isend(comms, channel, words, dest, tag)]
    for payload in payloads:
        requests.append(_isend(comms, comms.payload, payload, dest, payload_tag))
    return SendRequest(requests, (words, payloads), dest, tag)


def post_words(comms, channel, words, dest, tag):
    """Start sending ``words`` (bytes; no header) to ``dest`` on ``channel`` under ``tag``."""
    return SendRequest([_isend(comms, channel, words, dest, tag)], words, dest, tag)


class Receive:
    """A receive posted on ``channel`` for one message from ``source`` under ``tag``, into
    ``words``: by default a buffer for any message of ``post`` (then read it with ``header_of``
    and ``payload_of``)."""

    def __init__(self, comms, channel, source, tag, words=None):
        self._comms, self._channel = comms, channel
        self.words = messages.empty_message() if words is None else words
        self._request = channel.Irecv([self.words, MPI.BYTE], source, tag)
        self.done = False  # whether the message has come

    def test(self):
        """Whether the message has come."""
        if not self.done and self._request.Test():
            self._arrived()
        return self.done

    def cancel(self):
        """Cancel the receive if it is still posted; True if its message came first after all
        (then ``done``, as after a ``test()`` that returned True)."""
        if self.done:
            return False
        self._request.Cancel()
        status = MPI.Status()
        self._request.Wait(status)
        if status.Is_cancelled():
            return False
        self._arrived()
        return True

    def _arrived(self):
        self.done = True
        self._comms.received[id(self._channel)] += 1


def header_of(comms, words, source):
    """The header at the start of ``words``, a message from rank ``source``; ValueError naming
    both ranks and the problem if it is malformed."""
    try:
        return messages.decode_header(words)
    except ValueError as e:
        raise ValueError(
            f"rank {comms.rank} received a malformed message from rank {source}: {e}"
        ) from None


def payload_of(comms, header, words, source):
    """The array of the message from rank ``source`` whose ``header`` came in ``words``: the
    inline payload (a writable view into ``words``, which nothing else may use), or a large
    payload received now into a pooled buffer.  Tangents, if the message carries any, are
    received and dropped (``arrays_of`` keeps them)."""
    if header.tangents:
        return arrays_of(comms, header, words, source)[0]
    if header.inline:
        return messages.unpack_inline(header, words)
    return _received(comms, header, source)


def arrays_of(comms, header, words, source):
    """The arrays of the message from rank ``source`` whose ``header`` came in ``words``: the
    primal, then its tangents (Note [tangents on the wire] in messages.py), each as
    ``payload_of`` gives the primal."""
    count = len(header.tangents) + 1
    if header.inline:
        return [messages.unpack_inline(header, words, i) for i in range(count)]
    return [_received(comms, header, source) for _ in range(count)]


def _received(comms, header, source):
    """The next payload of the message from ``source`` with ``header``, received now."""
    array = buffers.receive_buffer(header.shape, header.dtype)
    comms.payload.Recv([array.reshape(-1).view(np.uint8), MPI.BYTE], source, header.payload_tag)
    comms.received[id(comms.payload)] += 1
    return array


def poll(comms, channel, source, tag, status):
    """The message from ``source`` under ``tag`` on ``channel`` (wildcards allowed), received
    whole if one has come: (header, array, source); None if none has.  ``status`` (an
    ``MPI.Status``) receives the message's envelope."""
    message = channel.improbe(source, tag, status)
    if message is None:
        return None
    words = take(comms, channel, message, messages.empty_message())
    source = status.Get_source()
    header = header_of(comms, words, source)
    return header, payload_of(comms, header, words, source), source


def take(comms, channel, message, words):
    """Receive the probed ``message`` (an ``MPI.Message`` of ``channel``) into ``words``, as
    bytes; returns ``words``."""
    message.Recv([words, MPI.BYTE])
    comms.received[id(channel)] += 1
    return words


def drain(comms, timeout):
    """Make mpigrad's communicators safe to free (collective): cancel or complete the receives
    posted on them, receive and drop every message sent to this rank that it never received, and
    complete this rank's sends.  The ranks first agree on how many messages each was sent on each
    communicator (every message is counted where it is posted and where it is received).

    Freeing a communicator with a message in flight is not safe: MPI may give a new communicator
    the freed one's identity, and Open MPI's ob1 then matched a stale message of the old one in
    place of the new one's (a hang); under UCX a stale collective paired with a new one."""
    from . import waiting

    for request in list(comms.receiving):
        request.cancel("was cancelled: mpigrad.distributed.destroy() ran before it was waited for")
    channels = comms.channels
    local = np.array([comms.sent[id(c)] for c in channels], np.int64)
    total = np.empty_like(local)
    agreement = comms.control.Iallreduce(local, total, op=MPI.SUM)
    waiting.wait_for(
        agreement.Test,
        waiting.DESTROY,
        timeout,
        lambda: "the other ranks to call destroy() (it is collective)",
    )
    status = MPI.Status()
    for channel, expected in zip(channels, total[:, comms.rank].tolist()):

        def drained(channel=channel, expected=expected):
            while comms.received[id(channel)] < expected:
                message = channel.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
                if message is None:
                    return False
                take(comms, channel, message, bytearray(status.Get_count(MPI.BYTE)))
            return True

        name = channel.Get_name()
        waiting.wait_for(
            drained,
            waiting.DESTROY,
            timeout,
            lambda name=name: f"the messages still owed to this rank on {name}",
        )
    waiting.wait_for(settle, waiting.DESTROY, timeout, lambda: "this rank's sends to complete")
