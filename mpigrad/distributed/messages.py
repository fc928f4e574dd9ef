"""The wire format of mpigrad's messages: a fixed-size int64 header, then the raw array bytes.

Pure numpy: this module builds (``pack``) and parses (``decode_header``, ``unpack_inline``)
messages; ``transport.py`` moves them with MPI.

Header (``HEADER_WORDS`` int64 words, in this order)::

    version, kind, context_id, message_id, requires_grad, dtype, ndim,
    shape[0], ..., shape[MAX_NDIM - 1], levels, tangents, nbytes, payload_tag

and then ``tangents`` words, one per tangent the message carries (see Note [tangents on the
wire]), and the inline payload, if any.

- ``version`` is ``FORMAT_VERSION``; a receiver rejects any other.
- ``kind`` is a ``Kind``: TENSOR (forward data), GRADIENT, NO_GRADIENT (the marker a recv
  function sends when it has no gradient), ERROR (a rank's failure in a context, as text), AGREE
  (a round of an agreement: ``message_id`` is the round), QUERY and ANSWER (a stalled rank asks
  what the others are doing: ``message_id`` numbers the question), EXIT (a rank's program ended).
- ``context_id`` is ``NO_CONTEXT`` (-1) outside a distributed autograd context, and
  ``message_id`` is -1 when the message is not recorded in one.
- ``dtype`` is a code of ``DTYPE_CODES``; unused ``shape`` entries are 0.
- ``payload_tag`` is -1 when the payload rides inline, else the tag of the separate payload
  message. See Note [inline payloads].
- ``levels`` is the number of dual levels open on the sender and ``tangents`` the number of
  tangent arrays the message carries: both 0 for a message without tangents.
"""

import struct
from enum import IntEnum
from typing import NamedTuple

import numpy as np

# Note [inline payloads]
# ~~~~~~~~~~~~~~~~~~~~~~
# A payload of at most INLINE_LIMIT bytes rides in the same MPI message as its header, right
# after it (one ``bytes`` object), so a small tensor costs one message, not two. A larger
# payload goes as a second message of raw bytes, straight from the (C-contiguous) array, on
# the payload communicator under the tag the header names in ``payload_tag``. That tag is
# unique per sender (a counter), so the receiver finds the right payload whatever order its
# requests complete in, and no user tag can collide with it. Headers travel as MPI_BYTE, and
# the receiver always posts a receive of MESSAGE_WORDS words' bytes: MPI lets a message be
# shorter than its receive buffer.

# Note [tangents on the wire]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A tensor's forward-mode tangents travel in its message, as the tree Tensor._fw makes (Note
# [nested tangents] in mpigrad/dual.py): the primal is array 0 and tangent i (1-based) is the
# tangent, at the level of depth ``depth``, of array ``parent`` < i. A level's depth is its
# position among the levels open on the sender, outermost first: the receiver gives a tangent of
# depth d its own d-th open level, and refuses tangents unless it has as many levels open as the
# sender (``levels``). Every array has the primal's dtype and shape. The payload rides inline when
# the descriptors and all the arrays fit in INLINE_LIMIT bytes (arrays in order behind the
# descriptors); otherwise each array is a payload message of its own, all under the header's
# ``payload_tag``, in order (MPI's non-overtaking rule keeps them so). The arrays that require
# grad (the primal when ``requires_grad``, then each tangent whose ``requires_grad`` is set) take
# the message ids ``message_id``, ``message_id + 1``, ... in that order. A message without
# tangents is exactly the message of a plain tensor: tangents cost nothing where there are none.

__all__ = [
    "FORMAT_VERSION",
    "MAX_NDIM",
    "INLINE_LIMIT",
    "HEADER_WORDS",
    "MESSAGE_WORDS",
    "NO_CONTEXT",
    "Kind",
    "Header",
    "Tangent",
    "MAX_TANGENTS",
    "DTYPE_CODES",
    "DTYPES",
    "dtype_code",
    "decode_header",
    "fits_inline",
    "pack",
    "unpack_inline",
    "empty_message",
    "text_array",
    "text_of",
    "check_sendable",
]

FORMAT_VERSION = 3
MAX_NDIM = 8
INLINE_LIMIT = 512  # bytes; see Note [inline payloads]
MAX_TANGENTS = INLINE_LIMIT // 8  # their descriptors fill the inline room: four nested levels
NO_CONTEXT = -1

# Word offsets in the header.
_VERSION, _KIND, _CONTEXT, _MESSAGE, _REQUIRES_GRAD, _DTYPE, _NDIM, _SHAPE = range(8)
_LEVELS = _SHAPE + MAX_NDIM
_TANGENTS = _LEVELS + 1
_NBYTES = _TANGENTS + 1
_PAYLOAD_TAG = _NBYTES + 1
HEADER_WORDS = _PAYLOAD_TAG + 1
MESSAGE_WORDS = HEADER_WORDS + INLINE_LIMIT // 8
_HEADER_BYTES = HEADER_WORDS * 8
_PARENT_SHIFT = 32  # a tangent's descriptor word: parent << 32 | depth << 1 | requires_grad


class Kind(IntEnum):
    TENSOR = 0
    GRADIENT = 1
    NO_GRADIENT = 2
    ERROR = 3
    AGREE = 4
    QUERY = 5
    ANSWER = 6
    EXIT = 7


DTYPE_CODES = {
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.int64): 4,
    np.dtype(np.bool_): 5,
    np.dtype(np.uint8): 6,
    np.dtype(np.complex64): 7,
    np.dtype(np.complex128): 8,
}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}  # code -> dtype
_SUPPORTED = ", ".join(str(d) for d in DTYPE_CODES)


class Tangent(NamedTuple):
    """Where a tangent of a message sits: see Note [tangents on the wire]."""

    parent: int  # 0: the primal; i: the message's i-th tangent
    depth: int  # its level's position among the open levels, outermost first
    requires_grad: bool


class Header(NamedTuple):
    kind: Kind
    context_id: int
    message_id: int
    requires_grad: bool
    dtype: np.dtype
    shape: tuple
    nbytes: int  # of one array: the primal and each tangent
    payload_tag: int
    levels: int = 0
    tangents: tuple = ()  # of Tangent

    @property
    def inline(self):
        return self.payload_tag == -1


def dtype_code(dtype):
    """The wire code of dtype; ValueError naming it if mpigrad cannot send it."""
    dtype = np.dtype(dtype)
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise ValueError(
            f"mpigrad.distributed cannot send arrays of dtype {dtype.str} ({dtype}); "
            f"supported (native byte order): {_SUPPORTED}"
        ) from None


_HEADER = struct.Struct(f"={HEADER_WORDS}q")  # the header's words, packed in one call
_PADDING = [(0,) * (MAX_NDIM - n) for n in range(MAX_NDIM + 1)]  # unused shape entries
_KINDS = tuple(Kind)  # by value


def check_sendable(array):
    """ValueError naming the problem unless ``array``'s dtype and dimensions can be sent."""
    dtype_code(array.dtype)
    _check_ndim(array.shape)


def _check_ndim(shape):
    if len(shape) > MAX_NDIM:
        raise ValueError(
            f"mpigrad.distributed sends at most {MAX_NDIM} dimensions; got {len(shape)} "
            f"(shape {shape})"
        )


def _header_bytes(
    kind, code, shape, nbytes, context_id, message_id, requires_grad, payload_tag, levels, count
):
    """The header's HEADER_WORDS words, packed in one call."""
    return _HEADER.pack(
        FORMAT_VERSION,
        kind,
        context_id,
        message_id,
        requires_grad,
        code,
        len(shape),
        *shape,
        *_PADDING[len(shape)],
        levels,
        count,
        nbytes,
        payload_tag,
    )


def fits_inline(nbytes, count):
    """Whether an array of ``nbytes`` bytes and ``count`` tangents ride inline (Note [inline
    payloads], Note [tangents on the wire])."""
    return count * 8 + (count + 1) * nbytes <= INLINE_LIMIT


def decode_header(message):
    """Parse the header (and tangent descriptors) at the start of a buffer (an int64 array,
    bytes); ValueError on a malformed header."""
    try:
        words = _HEADER.unpack_from(message)
    except struct.error:
        raise ValueError(
            f"a message header has {_HEADER_BYTES} bytes; got {memoryview(message).nbytes}"
        ) from None
    version, kind, context_id, message_id, requires_grad, code, ndim = words[:_SHAPE]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"message format version {version} from the peer; this mpigrad speaks "
            f"version {FORMAT_VERSION} (are all ranks running the same mpigrad?)"
        )
    if not 0 <= kind < len(_KINDS):
        raise ValueError(f"unknown message kind {kind} in a header")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise ValueError(f"unknown dtype code {code} in a header")
    if not 0 <= ndim <= MAX_NDIM:
        raise ValueError(f"a header gives ndim {ndim}; at most {MAX_NDIM} are allowed")
    shape = words[_SHAPE : _SHAPE + ndim]
    nbytes = words[_NBYTES]
    expected = dtype.itemsize
    for n in shape:
        expected *= n
    if nbytes != expected or min(shape, default=0) < 0:
        raise ValueError(f"a header's nbytes {nbytes} does not match shape {shape} of {dtype}")
    levels, count = words[_LEVELS], words[_TANGENTS]
    return Header(
        _KINDS[kind],
        context_id,
        message_id,
        requires_grad != 0,
        dtype,
        shape,
        nbytes,
        words[_PAYLOAD_TAG],
        levels,
        _decode_tangents(message, levels, count) if count else (),
    )


def _decode_tangents(message, levels, count):
    """The ``count`` tangent descriptors behind the header; ValueError if malformed."""
    if not 0 < count <= MAX_TANGENTS:
        raise ValueError(f"a header gives {count} tangents; at most {MAX_TANGENTS} are allowed")
    if memoryview(message).nbytes < _HEADER_BYTES + 8 * count:
        raise ValueError(
            f"a message with {count} tangents has at least {_HEADER_BYTES + 8 * count} bytes; "
            f"got {memoryview(message).nbytes}"
        )
    tangents = []
    for i, word in enumerate(struct.unpack_from(f"={count}q", message, _HEADER_BYTES), 1):
        parent, depth = word >> _PARENT_SHIFT, (word & (1 << _PARENT_SHIFT) - 1) >> 1
        if not (0 <= parent < i and 0 <= depth < levels):
            raise ValueError(
                f"a header's tangent {i} is at depth {depth} of array {parent}: it must be at "
                f"one of the {levels} levels open on the sender, of an array before it"
            )
        tangents.append(Tangent(parent, depth, bool(word & 1)))
    return tuple(tangents)


def _payload(array):
    """A flat uint8 view of array, copied first only if it is not C-contiguous."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def pack(
    array,
    kind=Kind.TENSOR,
    *,
    payload_tag=-1,
    context_id=NO_CONTEXT,
    message_id=-1,
    requires_grad=False,
    levels=0,
    tangents=(),
):
    """The message for array: (header, payloads), all sent as MPI_BYTE.

    ``tangents`` are (``Tangent``, array) pairs, each array of the primal's dtype and shape, and
    ``levels`` the number of dual levels open here (Note [tangents on the wire]).  When
    ``fits_inline`` the arrays are copied behind the header (and the tangents' descriptors) into
    one ``bytes`` object and ``payloads`` is empty; otherwise the header is an int64 array,
    payload_tag must be given (>= 0) and ``payloads`` holds a uint8 view of each array, the
    primal first, copied only if it is not C-contiguous.  See Note [inline payloads].
    """
    array = np.asarray(array)
    code = DTYPE_CODES.get(array.dtype) or dtype_code(array.dtype)  # the dtype error first
    shape = array.shape
    _check_ndim(shape)
    nbytes, count = array.nbytes, len(tangents)
    if count > MAX_TANGENTS:
        raise ValueError(f"a message carries at most {MAX_TANGENTS} tangents; got {count}")
    inline = count * 8 + (count + 1) * nbytes <= INLINE_LIMIT  # fits_inline, without a call
    if not inline and payload_tag < 0:
        raise ValueError(f"a payload of {array.nbytes} bytes needs a payload tag")
    words = _header_bytes(
        kind,
        code,
        shape,
        nbytes,
        context_id,
        message_id,
        requires_grad,
        -1 if inline else payload_tag,
        levels,
        count,
    )
    if not count:  # a plain tensor, the common case: the shortest way
        if inline:
            return words + array.tobytes(), ()
        return np.frombuffer(words, np.int64), (_payload(array),)
    words += struct.pack(
        f"={count}q",
        *[t.parent << _PARENT_SHIFT | t.depth << 1 | t.requires_grad for t, _ in tangents],
    )
    arrays = [array, *[t for _, t in tangents]]
    if inline:
        return b"".join([words, *[a.tobytes() for a in arrays]]), ()
    return np.frombuffer(words, np.int64), tuple([_payload(a) for a in arrays])


def unpack_inline(header, words, index=0):
    """The ``index``-th array (0: the primal, i: its i-th tangent) that rides inline behind
    header in words: a view into ``words``, which the caller must not reuse."""
    dtype, shape, nbytes = header.dtype, header.shape, header.nbytes
    offset = _HEADER_BYTES + 8 * len(header.tangents) + index * nbytes
    array = np.frombuffer(words, dtype, nbytes // dtype.itemsize, offset)
    return array if len(shape) == 1 else array.reshape(shape)


def empty_message():
    """A receive buffer for any message (receive it as MPI_BYTE): MESSAGE_WORDS int64 words."""
    return np.empty(MESSAGE_WORDS, dtype=np.int64)


def text_array(text):
    """A text as a uint8 payload."""
    return np.frombuffer(text.encode(), np.uint8)


def text_of(array):
    """The text of a ``text_array`` payload."""
    return array.tobytes().decode(errors="replace")
