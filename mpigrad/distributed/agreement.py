"""Agreeing on a sum over all ranks, on point-to-point messages.

Note [agreements]: the end of a backward pass and the leaving of a context need every rank to
learn a sum of integer vectors (message counts, context ids).  ``Agreement`` computes it by
recursive doubling: with ``p`` the largest power of two up to the world size, ranks ``p`` and up
first fold their vector onto rank ``r - p``; the first ``p`` ranks then exchange partial sums with
``r ^ 2**k`` in round ``k``; finally the folded ranks get the total back.  That is ``log2 p``
rounds, as an allreduce.  It is not an allreduce because a rank that fails leaves it: an MPI
collective that some ranks never join can be neither cancelled nor freed safely (under UCX,
freeing its communicator let the stale operation pair with the next one, on a new communicator
of the same identity), while a point-to-point message no one receives stays unmatched under a
tag that no later agreement uses, until ``destroy`` receives it (``transport.drain``).  A
waiting rank learns of the failure from the failed rank's notice (see Note [failing together]
in waiting.py).

Each message also carries its sender's own ``extra`` words, unsummed, so a receiver can check
them (the context uses it to see a rank leave a context without its backward pass).
"""

import numpy as np

from . import transport
from .messages import Kind

__all__ = ["Agreement"]

_FOLD, _RESULT = -1, -2  # the rounds of the folded ranks' messages (rounds 0 and up: exchanges)


class Agreement:
    """The sum over all ranks of an int64 vector, reached by messages of kind AGREE on
    ``channel`` under ``tag``.  Messages of the agreement that the caller receives go to
    ``offer`` (also before ``run``); ``run(vector, extra, poll)`` calls ``poll()`` until the
    messages it needs have come."""

    def __init__(self, comms, channel, tag, context_id):
        self.comms, self.channel, self.tag, self.context_id = comms, channel, tag, context_id
        self.inbox = {}  # (source, round) -> the sender's message
        self.sent = []
        self.total = self.extra = None
        self.step = "this rank to finish its part"

    def offer(self, header, array, source):
        """Take a message of this agreement (``header.message_id`` is its round)."""
        self.inbox[(source, header.message_id)] = array

    def run(self, vector, extra, poll):
        """The total of ``vector`` over all ranks; each message also carries this rank's
        ``extra`` words (its last ones).  ``poll()`` must receive what arrives, and may raise to
        abandon the agreement."""
        self.total = np.array(vector, np.int64)
        self.extra = np.array(extra, np.int64)
        rank, size = self.comms.rank, self.comms.size
        p = 1 << (size.bit_length() - 1)
        if rank >= p:
            self._send(rank - p, _FOLD)
            self.total[:] = self._take(rank - p, _RESULT, poll)
        else:
            if rank + p < size:
                self.total += self._take(rank + p, _FOLD, poll)
            for k in range(p.bit_length() - 1):
                partner = rank ^ (1 << k)
                self._send(partner, k)
                self.total += self._take(partner, k, poll)
            if rank + p < size:
                self._send(rank + p, _RESULT)
        for request in self.sent:
            transport.keep_until_sent(request)
        self.step = "done"
        return self.total

    def _send(self, dest, round_):
        message = np.concatenate([self.total, self.extra])
        self.sent.append(transport.post(self.comms, self.channel, message, dest, self.tag,
                                        Kind.AGREE, context_id=self.context_id,
                                        message_id=round_))

    def _take(self, source, round_, poll):
        what = "its total" if round_ == _RESULT else f"its share (round {round_})"
        self.step = f"rank {source} to send {what} of the agreement"
        key = (source, round_)
        while key not in self.inbox:
            poll()
        return self.inbox.pop(key)[:len(self.total)]
