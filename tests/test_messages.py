"""The wire format of mpigrad.distributed (serial: no message leaves the process)."""

import numpy as np
import pytest

from mpigrad.distributed import messages
from mpigrad.distributed.messages import (
    HEADER_WORDS,
    INLINE_LIMIT,
    MAX_NDIM,
    MAX_TANGENTS,
    MESSAGE_WORDS,
    Kind,
    Tangent,
    decode_header,
    pack,
    unpack_inline,
)

DTYPES = [
    np.float32,
    np.float64,
    np.int32,
    np.int64,
    np.bool_,
    np.uint8,
    np.complex64,
    np.complex128,
]
SHAPES = [(), (0,), (3,), (2, 0, 4), *[tuple(range(1, n + 1)) for n in range(2, MAX_NDIM + 1)]]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def _header_words(array, kind=Kind.TENSOR, **header):
    """The header ``pack`` writes for ``array``, as a writable int64 array."""
    words, _ = pack(array, kind, **header)
    return np.frombuffer(words, np.int64, HEADER_WORDS).copy()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_header_round_trip(dtype, shape):
    array = np.zeros(shape, dtype)
    header = decode_header(
        _header_words(
            array, Kind.GRADIENT, context_id=7, message_id=12, requires_grad=True, payload_tag=5
        )
    )
    inline = array.nbytes <= INLINE_LIMIT
    assert header == (
        Kind.GRADIENT,
        7,
        12,
        True,
        np.dtype(dtype),
        shape,
        int(np.prod(shape)) * np.dtype(dtype).itemsize,
        -1 if inline else 5,
        0,
        (),
    )
    assert header.inline == inline


def test_header_defaults_mean_outside_a_context():
    header = decode_header(_header_words(np.zeros(2)))
    assert (header.kind, header.context_id, header.message_id, header.requires_grad) == (
        Kind.TENSOR,
        -1,
        -1,
        False,
    )
    assert header.context_id == messages.NO_CONTEXT and header.inline


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind):
    assert decode_header(_header_words(np.float32(0), kind)).kind is kind


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (5, 3), (2, 3, 4), (64,), (65,), (300, 7)], ids=str)
def test_pack_and_unpack(dtype, shape):
    array = _sample(dtype, shape)
    words, payloads = pack(array, payload_tag=9)
    header = decode_header(words)
    assert (header.dtype, header.shape, header.nbytes) == (array.dtype, shape, array.nbytes)
    assert (header.levels, header.tangents) == (0, ())
    if array.nbytes <= INLINE_LIMIT:
        assert payloads == () and header.inline
        assert isinstance(words, bytes) and len(words) == 8 * HEADER_WORDS + array.nbytes
        assert len(words) <= 8 * MESSAGE_WORDS
        received = messages.empty_message()
        received.view(np.uint8)[: len(words)] = np.frombuffer(words, np.uint8)
        out = unpack_inline(header, received)
    else:
        assert header.payload_tag == 9 and len(words) == HEADER_WORDS
        (payload,) = payloads
        assert payload.dtype == np.uint8 and payload.nbytes == array.nbytes
        out = np.frombuffer(payload.tobytes(), dtype=header.dtype).reshape(header.shape)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_a_contiguous_payload_is_not_copied():
    array = np.arange(1000.0)
    _, (payload,) = pack(array, payload_tag=0)
    assert np.shares_memory(payload, array)


def test_a_non_contiguous_payload_is_made_contiguous():
    array = np.arange(2000.0).reshape(40, 50)[:, ::2].T
    words, (payload,) = pack(array, payload_tag=0)
    out = np.frombuffer(payload.tobytes(), dtype=np.float64).reshape(decode_header(words).shape)
    np.testing.assert_array_equal(out, array)


def test_a_large_payload_needs_a_tag():
    with pytest.raises(ValueError, match="needs a payload tag"):
        pack(np.zeros(INLINE_LIMIT // 8 + 1))


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.uint64, object, ">f8", "U3"])
def test_unsupported_dtype_is_named(dtype):
    name = np.dtype(dtype).str
    with pytest.raises(ValueError, match=f"cannot send arrays of dtype {name}.*supported"):
        pack(np.zeros(2, dtype=dtype))
    with pytest.raises(ValueError, match=f"cannot send arrays of dtype {name}.*supported"):
        messages.check_sendable(np.zeros(2, dtype=dtype))


def test_too_many_dimensions():
    with pytest.raises(ValueError, match=f"at most {MAX_NDIM} dimensions; got 9"):
        pack(np.zeros((1,) * 9))
    with pytest.raises(ValueError, match=f"at most {MAX_NDIM} dimensions; got 9"):
        messages.check_sendable(np.zeros((1,) * 9))


def test_malformed_headers():
    good = _header_words(np.zeros((2, 3)))
    cases = [
        (0, 99, "format version 99"),
        (1, 42, "unknown message kind 42"),
        (5, 77, "unknown dtype code 77"),
        (6, 9, "ndim 9"),
        (HEADER_WORDS - 2, 47, "nbytes 47 does not match shape"),
    ]
    for index, value, message in cases:
        words = good.copy()
        words[index] = value
        with pytest.raises(ValueError, match=message):
            decode_header(words)
    with pytest.raises(ValueError, match=f"has {8 * HEADER_WORDS} bytes; got 24"):
        decode_header(good[:3])


@pytest.mark.parametrize("shape", [(), (3,), (40,), (30, 7)], ids=str)
def test_tangents_round_trip(shape):
    # A primal with three tangents over two levels (see Note [tangents on the wire]): inline when
    # the descriptors and the four arrays fit, else one payload per array, primal first.
    array = _sample(np.float64, shape)
    marks = [Tangent(0, 0, True), Tangent(0, 1, False), Tangent(1, 1, True)]
    tangents = [(mark, _sample(np.float64, shape, seed=i + 1)) for i, mark in enumerate(marks)]
    tangents[1] = (marks[1], np.asfortranarray(tangents[1][1]))  # not C-contiguous beyond 1-d
    words, payloads = pack(array, payload_tag=4, message_id=8, levels=2, tangents=tangents)
    header = decode_header(words)
    assert (header.levels, header.tangents, header.message_id) == (2, tuple(marks), 8)
    expected = [array, *[t for _, t in tangents]]
    if messages.fits_inline(array.nbytes, 3):
        assert payloads == () and header.inline and len(words) <= 8 * MESSAGE_WORDS
        received = messages.empty_message()
        received.view(np.uint8)[: len(words)] = np.frombuffer(words, np.uint8)
        got = [unpack_inline(header, received, i) for i in range(4)]
    else:
        assert header.payload_tag == 4 and len(words) == HEADER_WORDS + 3
        got = [np.frombuffer(p.tobytes(), np.float64).reshape(shape) for p in payloads]
    for out, want in zip(got, expected):
        np.testing.assert_array_equal(out, want)


def test_malformed_tangent_descriptors():
    tangents = [(Tangent(0, 0, False), np.zeros(2)), (Tangent(1, 1, False), np.zeros(2))]
    good = np.frombuffer(pack(np.zeros(2), levels=2, tangents=tangents)[0], np.int64).copy()
    cases = [
        (HEADER_WORDS - 3, 0, "tangents"),  # a count of 0 leaves descriptors unread: fine
        (HEADER_WORDS - 3, MAX_TANGENTS + 1, f"{MAX_TANGENTS + 1} tangents; at most"),
        (HEADER_WORDS + 1, 2 << 32, "tangent 2 is at depth 0 of array 2"),
        (HEADER_WORDS + 1, 1 << 32 | 2 << 1, "tangent 2 is at depth 2 of array 1"),
        (HEADER_WORDS - 4, 1, "tangent 2 is at depth 1 of array 1: it must be at one of the 1"),
    ]
    for index, value, message in cases:
        words = good.copy()
        words[index] = value
        if value == 0:
            assert decode_header(words).tangents == ()
            continue
        with pytest.raises(ValueError, match=message):
            decode_header(words)
    with pytest.raises(ValueError, match="with 2 tangents has at least"):
        decode_header(good[: HEADER_WORDS + 1])
    with pytest.raises(
        ValueError, match=f"at most {MAX_TANGENTS} tangents; got {MAX_TANGENTS + 1}"
    ):
        pack(np.zeros(2), levels=1, tangents=[(Tangent(0, 0, False), np.zeros(2))] * 65)
