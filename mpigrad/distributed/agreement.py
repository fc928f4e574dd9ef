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

import struct

import numpy as np

from . import transport

__all__ = ["Agreement", "equality_words", "same_everywhere"]

_MODULUS = 1_000_003  # a prime: values are compared modulo it, so squares sum exactly in int64


def equality_words(value):
    """Two words to add to an agreement's vector, whose totals tell ``same_everywhere`` whether
    the int ``value`` is the same on every rank (modulo ``_MODULUS``)."""
    value %= _MODULUS
    return [value, value * value]


def same_everywhere(totals, size):
    """True if the totals of ``equality_words`` over ``size`` ranks come from one value, and
    only then up to multiples of ``_MODULUS``: with v the values modulo it,
    size * sum(v**2) == sum(v)**2 exactly when every v is equal (Cauchy-Schwarz)."""
    values, squares = totals
    return size * squares == values * values


def _added(total, share):
    """``total`` plus the summed words at the start of ``share``, word by word."""
    return [a + b for a, b in zip(total, share)]


class Agreement:
    """The sum over all ranks of an int64 vector, reached by messages of raw int64 words on
    ``channel`` under ``tag`` (nothing else travels under it, so each message is received into
    a receive posted for it; no header).  ``run(vector, extra, poll)`` calls ``poll()`` while it
    waits; a message the caller took before ``run`` (its source's whole message) goes into
    ``early[source]``."""

    def __init__(self, comms, channel, tag):
        self.comms, self.channel, self.tag = comms, channel, tag
        self.early = {}  # source -> its message, taken by the caller before run
        self.posted = {}  # source -> the receive posted for its message by post_receives
        self.waiting = None  # the posted receive now waited for
        self.started = False
        self.step = "this rank to finish its part"

    def sources(self):
        """The ranks whose messages ``run`` takes on this rank, in the order it takes them."""
        rank, size = self.comms.rank, self.comms.size
        p = 1 << (size.bit_length() - 1)
        if rank >= p:
            return [rank - p]
        folded = [rank + p] if rank + p < size else []
        return folded + [rank ^ (1 << k) for k in range(p.bit_length() - 1)]

    def post_receives(self, words):
        """Post the receives of every message ``run`` will take, of ``words`` int64 words each
        (its vector's and its extra words), ahead of ``run``: a rank calls it while it waits
        anyway, so that ``run`` finds its messages received as they came."""
        for source in self.sources():
            if source not in self.early and source not in self.posted:
                self.posted[source] = transport.Receive(
                    self.comms, self.channel, source, self.tag, np.empty(words, np.int64)
                )

    def run(self, vector, extra, poll):
        """The total of ``vector`` over all ranks, as a list; each message also carries this
        rank's ``extra`` words (its last ones).  ``poll()`` may raise to abandon the agreement
        (then call ``cancel``).  The words are Python ints packed with ``struct``: a vector is
        a few words, and numpy would cost more than it saves."""
        self.started = True
        total, extra = list(vector), list(extra)
        rank, size = self.comms.rank, self.comms.size
        p = 1 << (size.bit_length() - 1)
        words = len(total) + len(extra)
        if rank >= p:
            self._send(rank - p, total, extra)
            total = self._take(rank - p, words, poll, "its total")[: len(total)]
        else:
            if rank + p < size:
                total = _added(total, self._take(rank + p, words, poll, "its share"))
            for k in range(p.bit_length() - 1):
                partner = rank ^ (1 << k)
                self._send(partner, total, extra)
                share = self._take(partner, words, poll, f"its share (round {k})")
                total = _added(total, share)
            if rank + p < size:
                self._send(rank + p, total, extra)
        self.step = "done"
        return total

    def _send(self, dest, total, extra):
        message = struct.pack(f"={len(total) + len(extra)}q", *total, *extra)
        transport.keep_until_sent(
            transport.post_words(self.comms, self.channel, message, dest, self.tag)
        )

    def _take(self, source, words, poll, what):
        """The words of ``source``'s message, ``words`` of them (each source sends this rank
        one): its summed words first, then its extra ones."""
        self.step = f"rank {source} to send {what} of the agreement"
        message = self.early.pop(source, None)
        if message is None:
            receive = self.posted.pop(source, None)
            if receive is None:
                receive = transport.Receive(
                    self.comms, self.channel, source, self.tag, np.empty(words, np.int64)
                )
            self.waiting = receive
            while not receive.test():
                poll()
            message, self.waiting = receive.words, None
        return list(struct.unpack_from(f"={words}q", message))

    def cancel(self):
        """Cancel the receives the agreement waits for or posted ahead (it is being
        abandoned)."""
        receives = list(self.posted.values())
        if self.waiting is not None:
            receives.append(self.waiting)
        self.posted, self.waiting = {}, None
        for receive in receives:
            receive.cancel()
