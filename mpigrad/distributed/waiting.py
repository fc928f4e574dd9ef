"""How a rank waits in ``mpigrad.distributed``, and how ranks learn of each other's failures.

Every blocking call (``recv``, a request's ``wait``, ``sendrecv``, ``dist_autograd.backward``,
leaving a context) loops on a test of what it waits for with a ``Waiter``, which

- paces the loop (see Note [waiting]);
- raises ``DistTimeoutError`` once the call's ``timeout`` has passed (default: the environment
  variable ``MPIGRAD_TIMEOUT``, 1800 s when unset; ``0`` there means no limit), saying what the
  call waits for and what the ranks it waits on are doing (see Note [asking the others]);
- prints one line on stderr once the call has waited ``MPIGRAD_STALL_WARNING`` seconds (default
  60; ``0``: never), and again every as many seconds, saying the same (a stall inspector, as
  Horovod's);
- reads the notices of other ranks (see Note [failing together]) and answers their questions.

A call that completes soon costs nothing of this: the Waiter is made after FREE_POLLS misses.
"""

# Note [waiting]
# ~~~~~~~~~~~~~~
# MPICH's blocking calls spin a core.  A rank waiting here polls instead.  With a core to itself it
# spins for up to 10 ms (on a 2-core VM with the MPICH wheel, backing off after 50 us made a 1 MiB
# backward 4x slower, as the waiting rank overslept the message), then sleeps between polls.  When
# ranks share cores (more ranks may run on its cores than they are: ``comm.sharing``, from
# every rank's affinity mask, so that ranks bound each to its own core spin) it yields its core
# between polls for the first millisecond (a rank it waits for that shares the core runs at once:
# an agreement's rounds pass from rank to rank without a sleep each), then sleeps, 20 us growing to
# 200 us between polls, and up to 1 ms once it has waited 10 ms (the extra latency is then at most
# a tenth of the wait): short waits stay responsive, long ones cost the working ranks next to
# nothing (4 ranks on that 2-core VM: computing ranks ran at 1.00-1.03x their speed beside ranks
# waiting here, 1.6-2.0x beside MPICH's spinning Recv; the ratio, not the figures, is what carries
# to other machines).  Every CHECK_INTERVAL (every PATIENT_CHECK_INTERVAL once it has waited 10 ms,
# so that a long wait costs the working ranks nothing either) the Waiter also reads notices,
# answers questions, and checks its deadline and stall time.
#
# A non-blocking collective advances only inside MPI calls on the waiting rank (MPICH has no
# progress thread by default): between polls a many-round algorithm stands still, so a sleep per
# poll multiplies its time (on a 2-core VM a 64 MiB all_to_all took 3 s sleeping between polls,
# 80 ms yielding).  A wait made with ``progress=True`` therefore yields its core between polls,
# never sleeps, for its first _PROGRESS_SECONDS, long enough for any transfer that is under way;
# a rank still waiting after that waits for another rank, and sleeps as above.
#
# Note [failing together]
# ~~~~~~~~~~~~~~~~~~~~~~~
# A rank whose part of a context fails (an exception in its part of backward, its backward's
# timeout, leaving the context by an exception) sends an ERROR notice with its text to every other
# rank, on the control communicator under the context's tag, and raises at once: it never waits
# for an agreement that the others may not reach.  Every Waiter of that context reads the notices,
# so a rank waiting anywhere in the context raises within a check interval of the notice's arrival,
# naming the rank and quoting its text; a rank that gets to the context's next blocking call later
# finds the notice there.  A failed context stays failed: leave it, and enter a new one.  A rank
# whose program ends sends an EXIT notice (see shutdown.py); a Waiter that depends on that rank
# raises once the notice is EXIT_GRACE old (what the rank sent before it left has arrived by then).
#
# Note [asking the others]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# To say what a stall is waiting on, a Waiter sends a QUESTION to the ranks it depends on and
# collects ANSWERs for up to ASK_SECONDS.  A rank answers only while it is itself waiting in
# mpigrad (every Waiter reads questions): its answer says which call, context and backward pass it
# is in, and what it waits for.  A rank that does not answer is not waiting in mpigrad: it is
# computing, or blocked in a call of its own, so it has not reached the call this rank waits in.
# Plain messages were chosen over an MPI one-sided window that each rank would write its state
# into: reading a window needs no answer, but freeing one is collective, so a rank whose program
# ends alone would block in it (without the free, MPICH's UCX layer prints warnings at exit),
# and on some transports a passive read itself waits for the target to enter MPI.  Questions cost
# nothing until a call stalls, and work on every MPI.

import itertools
import json
import os
import sys
import time

from mpi4py import MPI

from . import comm as _comm
from . import messages, settings, transport
from .errors import DistributedError, DistTimeoutError
from .messages import Kind

__all__ = [
    "Waiter",
    "wait_for",
    "resolve_timeout",
    "Question",
    "describe_answers",
    "send_notice",
    "read_notices",
]


CHECK_INTERVAL = 1e-3  # seconds between reading notices and checking the clock
PATIENT_CHECK_INTERVAL = 20e-3  # the same, once the rank has waited _PATIENT_AFTER
FREE_POLLS = 64  # polls a call makes before it takes a Waiter (tens of microseconds)
QUESTION_AFTER, QUESTION_EVERY = 1.0, 5.0  # when a waiting rank asks the others: see diverged
EXIT_GRACE = 0.5  # seconds a departed rank's last messages get to arrive
ASK_SECONDS = 0.25  # how long a stalled rank collects answers
_SPIN_SECONDS = 10e-3  # with a core to itself; see Note [waiting]
_YIELD_SECONDS = 1e-3
_PROGRESS_SECONDS = 2.0  # a wait that drives MPI's progress yields, not sleeps, this long
_SLEEP_MIN, _SLEEP_MAX, _SLEEP_PATIENT = 20e-6, 200e-6, 1e-3
_PATIENT_AFTER = 10e-3  # waited this long, a rank may sleep up to _SLEEP_PATIENT between polls


def resolve_timeout(timeout, op):
    """``timeout`` in seconds, None for no limit: None takes ``MPIGRAD_TIMEOUT``'s default
    (read once per process); ``float('inf')`` means no limit."""
    if timeout is None:
        return settings.timeout()
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(f"{op}: timeout must be a positive number of seconds, got {timeout!r}")
    return None if seconds == float("inf") else seconds


_current = None  # the Waiter this rank waits in, which answers questions
BACKWARD, LEAVING, DESTROY = "dist_autograd.backward", "leaving the context", "destroy"
_AGREEING = (BACKWARD, LEAVING, DESTROY)  # calls every rank makes together, with collectives


class Waiter:
    """The pace, deadline, stall warnings and notices of one blocking call; see the module
    docstring.  ``describe()`` says what the call waits for; ``context`` is the open context the
    call belongs to (its notices are read); ``check()`` runs with the notices;
    ``state()`` goes into this rank's answers; ``started`` is when the call began (default: now);
    ``stage`` limits the failures that fail the call (see ``DistAutogradContext.stage``);
    ``peers`` are the ranks it depends on (None: all); ``agreeing`` marks a call that every
    rank makes together, as a collective (see ``diverged``); ``progress`` marks a wait whose
    completion needs this rank's polls (a non-blocking collective: see Note [waiting]);
    ``summarize(answers, ranks)`` turns the answers of the ranks asked into text (default
    ``describe_answers``)."""

    def __init__(
        self,
        op,
        timeout,
        describe,
        *,
        context=None,
        peers=None,
        summarize=None,
        check=None,
        state=None,
        started=None,
        stage=None,
        agreeing=False,
        progress=False,
    ):
        global _current
        self.comms = _comm.get()
        self.op, self.describe, self.context, self.peers = op, describe, context, peers
        self.agreeing = agreeing or op in _AGREEING
        self.summarize = summarize or describe_answers
        self.check, self.state, self.stage = check, state, stage
        self.waiting_since = time.monotonic()  # the pace counts from here (Note [waiting])
        self.start = self.waiting_since if started is None else started
        self.timeout = resolve_timeout(timeout, op)
        self.deadline = None if self.timeout is None else self.start + self.timeout
        stall = settings.stall_warning()
        self.next_warning = None if stall is None else self.start + stall
        self.next_check = self.start + CHECK_INTERVAL
        self.question = None  # the question out now, if any
        self.next_question = self.start + QUESTION_AFTER
        if self.deadline is not None:  # its answers are in when the deadline comes
            self.next_question = min(self.next_question, self.deadline - ASK_SECONDS)
        self.shared_cores = self.comms.shared_cores
        self.progress = progress
        self.sleep = _SLEEP_MIN
        self.outer, _current = _current, self

    def close(self):
        global _current
        _current = self.outer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reset_pace(self):
        """Something arrived: wait afresh (spin again, then sleep a little)."""
        self.waiting_since = time.monotonic()
        self.sleep = _SLEEP_MIN

    def pause(self):
        """Return at once while spinning pays, else sleep a little longer each time; every
        check interval read notices and check the clock (which may raise)."""
        now = time.monotonic()
        waited = now - self.waiting_since
        if now >= self.next_check:
            self.next_check = now + (
                CHECK_INTERVAL if waited < _PATIENT_AFTER else PATIENT_CHECK_INTERVAL
            )
            self._check(now)
        if not self.shared_cores and waited < _SPIN_SECONDS:
            return
        if waited < (_PROGRESS_SECONDS if self.progress else _YIELD_SECONDS):
            os.sched_yield()
            return
        time.sleep(self.sleep)
        cap = _SLEEP_MAX if waited < _PATIENT_AFTER else _SLEEP_PATIENT
        self.sleep = min(2 * self.sleep, cap)

    def _check(self, now):
        comms = self.comms
        answer_questions(comms)
        read_exits(comms)
        if self.context is not None:
            read_notices(self.context)
            if self.context.failed(self.stage):
                raise self.context.failure(self.op)
        if self.check is not None:
            self.check()
        departed = [
            r
            for r, (text, when) in comms.departed.items()
            if (self.peers is None or r in self.peers) and now - when > EXIT_GRACE
        ]
        if departed:
            r = departed[0]
            raise DistributedError(
                f"rank {comms.rank}: rank {r}'s program ended ({comms.departed[r][0]}) while "
                f"this rank waits in {self._where()} for: {self.describe()}"
            )
        timed_out = self.deadline is not None and now > self.deadline
        warn = self.next_warning is not None and now > self.next_warning
        if self.question is None and (now > self.next_question or timed_out or warn):
            self.question = Question(comms, self._ranks())  # answered while this rank polls
        if self.question is None or not (self.question.collect() or timed_out or warn):
            return
        question, self.question = self.question, None
        while not question.collect():  # the answers are needed now
            time.sleep(1e-3)
        self._schedule_question(time.monotonic())
        answers, ranks = question.answers, question.asked
        reasons = []
        if now - self.start >= QUESTION_AFTER:  # what was sent has arrived: see diverged
            reasons = [
                reason
                for r in sorted(answers)
                if (reason := diverged(self.answer(), answers[r], r, comms.rank))
            ]
        others = self.summarize(answers, ranks) if ranks else "no other rank takes part"
        if timed_out:
            raise DistTimeoutError(
                f"rank {comms.rank}: {self._where()} timed out after {self.timeout:g} s still "
                f"waiting for: {self.describe()}; {others}"
                + "".join(f"; {reason}, so it will never come" for reason in reasons)
            )
        if reasons:
            raise DistributedError(
                f"rank {comms.rank}: {self._where()} waits for: {self.describe()}; but "
                f"{reasons[0]}, so it will never come (every rank must enter the same contexts, "
                "and run the same backward passes in them, in the same order)"
            )
        if warn:
            self.next_warning = now + settings.stall_warning()
            print(
                f"mpigrad: rank {comms.rank} has waited {now - self.start:.1f} s in "
                f"{self._where()} for: {self.describe()}; {others}",
                file=sys.stderr,
                flush=True,
            )

    def _schedule_question(self, now):
        """The next question: QUESTION_EVERY from now, or sooner, so that its answers are in
        when the deadline comes."""
        self.next_question = now + QUESTION_EVERY
        if self.deadline is not None and self.deadline - ASK_SECONDS > now:
            self.next_question = min(self.next_question, self.deadline - ASK_SECONDS)

    def _ranks(self):
        """The other ranks this call depends on."""
        ranks = range(self.comms.size) if self.peers is None else self.peers
        return [r for r in ranks if r != self.comms.rank]

    def _where(self):
        if self.context is None:
            return self.op
        return f"{self.op} in context {self.context.context_id}"

    def answer(self):
        """This rank's answer to a question: see Note [asking the others]."""
        from .context import last_id

        context = self.context
        return {
            "op": self.op,
            "waiting": self.describe(),
            "state": None if self.state is None else self.state(),
            "context": None if context is None else context.context_id,
            "last": last_id(),
            "passes": 0 if context is None else context.passes,
            "peers": None if self.peers is None else list(self.peers),
            "agreeing": self.agreeing,
        }


def wait_for(test, op, timeout, describe, **options):
    """Return once ``test()`` is true, waiting with a ``Waiter(op, timeout, describe,
    **options)`` if it is not true within FREE_POLLS tests."""
    for _ in range(FREE_POLLS):
        if test():
            return
    with Waiter(op, timeout, describe, **options) as waiter:
        while not test():
            waiter.pause()


# --- notices ------------------------------------------------------------------------------------


def send_notice(comms, kind, text, tag, context_id=messages.NO_CONTEXT, stage=-1):
    """Send a notice (ERROR, EXIT) with ``text`` to every other rank on the control
    communicator; its sends complete on their own (``transport.keep_until_sent``)."""
    payload = messages.text_array(text)
    for dest in range(comms.size):
        if dest != comms.rank and dest not in comms.departed:
            transport.keep_until_sent(
                transport.post(
                    comms,
                    comms.control,
                    payload,
                    dest,
                    tag,
                    kind,
                    context_id=context_id,
                    message_id=stage,
                )
            )


def _received(comms, tag):
    """Each message now waiting on the control communicator under ``tag``."""
    status = MPI.Status()
    while received := transport.poll(comms, comms.control, MPI.ANY_SOURCE, tag, status):
        yield received


def read_exits(comms):
    for _, array, source in _received(comms, comms.exit_tag):
        comms.departed.setdefault(source, (messages.text_of(array), time.monotonic()))


def read_notices(context):
    """Take the context's ERROR notices into ``context.failures``."""
    comms = _comm.get()
    for header, array, source in _received(comms, comms.control_tag(context.context_id)):
        if header.context_id == context.context_id:  # else a notice of a long-failed context
            context.failures.setdefault(source, (header.message_id, messages.text_of(array)))


# --- questions and answers: see Note [asking the others] ------------------------------------------

_questions = itertools.count()


def answer_questions(comms):
    """Answer every question waiting for this rank (with what it is waiting in now, if any)."""
    for header, _, source in _received(comms, comms.query_tag):
        waiter = _current
        reply = waiter.answer() if waiter is not None else {"op": None}
        transport.keep_until_sent(
            transport.post(
                comms,
                comms.control,
                messages.text_array(json.dumps(reply)),
                source,
                comms.answer_tag,
                Kind.ANSWER,
                message_id=header.message_id,
            )
        )


class Question:
    """A question sent to ``ranks`` (departed ranks are not asked): ``answers`` fills in as
    ``collect()`` reads them; answers of earlier questions are dropped."""

    def __init__(self, comms, ranks, seconds=ASK_SECONDS):
        self.comms, self.number = comms, next(_questions)
        self.asked = [r for r in ranks if r not in comms.departed]
        self.deadline = time.monotonic() + seconds
        self.answers = {}
        for r in self.asked:
            transport.keep_until_sent(
                transport.post(
                    comms,
                    comms.control,
                    messages.text_array(""),
                    r,
                    comms.query_tag,
                    Kind.QUERY,
                    message_id=self.number,
                )
            )

    def collect(self):
        """Read the answers that have come; True once all have, or the time is up."""
        answer_questions(self.comms)  # a rank asking this one meanwhile gets its answer
        for header, array, source in _received(self.comms, self.comms.answer_tag):
            if header.message_id == self.number:
                self.answers[source] = json.loads(messages.text_of(array))
        return len(self.answers) == len(self.asked) or time.monotonic() > self.deadline


def diverged(mine, theirs, rank, me):
    """Why the state ``rank`` answered proves that it will never do what this rank ``me`` (in
    state ``mine``) waits for, or None.  An answer comes only from a rank that is itself blocked
    in mpigrad, and at least a second after the wait began, so what was sent has arrived.

    Contexts are entered and left by every rank in the same order, and leaving one, like a
    backward pass, is an agreement of all ranks: two ranks waiting in different contexts never
    meet again (but for a moment at the end of a leaving agreement, which reaches the ranks one
    after another).  A rank in an agreement sends no tensor until it is over; two ranks that each
    wait for the other's tensor wait forever."""
    op = theirs.get("op")
    if op is None:
        return None  # it is computing: it may yet come
    context, their_context = mine["context"], theirs["context"]
    agreeing, they_agree = mine["agreeing"], theirs["agreeing"]
    waits_for_me = theirs["peers"] is None or me in theirs["peers"]
    if context != their_context:
        if context is not None and their_context is not None:
            if (
                their_context == context - 1
                and op == LEAVING
                or their_context == context + 1
                and mine["op"] == LEAVING
            ):
                return None
            return f"rank {rank} waits in {op} in context {their_context}"
        if context is None:
            if their_context > mine["last"]:
                return (
                    f"rank {rank} waits in {op} in context {their_context}, which this rank "
                    "has not entered"
                )
            return (
                None
                if op == LEAVING
                else f"rank {rank} waits in {op} in context "
                f"{their_context}, which this rank has left"
            )
        if theirs["last"] >= context:
            return None if mine["op"] == LEAVING else f"rank {rank} has left context {context}"
        return (
            f"rank {rank} waits in {op} for this rank before context {context}"
            if waits_for_me
            else None
        )
    passes, their_passes = mine["passes"], theirs["passes"]
    if mine["op"] == BACKWARD and op == LEAVING and their_passes < passes:
        return (
            f"rank {rank} is leaving context {context} after {their_passes} backward "
            f"pass(es), without this one (pass {passes})"
        )
    if mine["op"] == LEAVING and op == BACKWARD and their_passes > passes:
        return (
            f"rank {rank} runs backward pass {their_passes} of context {context}, which this "
            f"rank is leaving after {passes}"
        )
    if not agreeing and they_agree:
        return f"rank {rank} is in {op} (context {context}) and sends nothing until all join it"
    if waits_for_me and not they_agree:
        if agreeing:
            return (
                f"rank {rank} waits in {op} for this rank, which is in {mine['op']} and "
                "sends nothing until all join it"
            )
        return f"rank {rank} waits in {op} for this rank, as this rank waits for it"
    return None


def describe_answers(answers, ranks=None):
    """One phrase per rank: what it answered, or that it is not waiting in mpigrad."""
    comms = _comm.get()
    ranks = sorted(set(answers) | set(ranks or ()) | set(comms.departed))
    parts = []
    for r in ranks:
        if r == comms.rank:
            continue
        if r in comms.departed:
            parts.append(f"rank {r}: its program ended ({comms.departed[r][0]})")
            continue
        reply = answers.get(r)
        if reply is None or reply["op"] is None:
            parts.append(f"rank {r}: not waiting in mpigrad (computing, or blocked elsewhere)")
        else:
            where = (
                reply["op"]
                if reply["context"] is None
                else f"{reply['op']} in context {reply['context']}"
            )
            parts.append(f"rank {r}: in {where}, waiting for: {reply['waiting']}")
    return "; ".join(parts)
