"""Ops that move or select elements: reshape, permute, broadcast, indexing, cat, split, pad."""

import functools
import itertools

import numpy as np

from .. import kernels
from ..function import Function, linear, unary_op, variadic_op
from ..kernels.dispatch import SCATTER_NUMPY_MAX_SIZE
from ..slice_grad import SliceGrad
from ..tensor import Tensor
from ._util import data, normalize_axis

__all__ = [
    "reshape",
    "permute",
    "transpose",
    "broadcast_to",
    "squeeze",
    "unsqueeze",
    "getitem",
    "index_select",
    "cat",
    "stack",
    "split",
    "pad",
    "alias",
]


@unary_op
@linear()
class Alias(Function):
    """out = x (a new Tensor over the same data); grad_x = grad"""

    @staticmethod
    def forward(ctx, x):
        return data(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


@unary_op
@linear(fixed=(1,))
class Reshape(Function):
    """out = x.reshape(shape); grad_x = grad.reshape(x.shape)"""

    @staticmethod
    def forward(ctx, x, shape):
        x = data(x)
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape), None  # numpy's method on an ndarray, else mpigrad's


@unary_op
@linear(fixed=(1,))
class Permute(Function):
    """out = x with axes reordered; grad_x = grad with the inverse order"""

    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return data(x).transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        inverse = [0] * len(ctx.axes)
        for i, axis in enumerate(ctx.axes):
            inverse[axis] = i
        if type(grad) is np.ndarray:  # array mode: no op to record
            return grad.transpose(inverse), None
        return Permute.apply(grad, tuple(inverse)), None


def broadcast_view(a, shape):
    """``np.broadcast_to(a, shape)``: a read-only view, built directly (about a tenth of numpy's
    cost on a 1-element array, numpy 2) when ``a`` is a non-empty contiguous array with no more
    axes than ``shape``."""
    extra = len(shape) - a.ndim
    if extra < 0 or not a.size or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return np.broadcast_to(a, shape)
    if a.size == 1:
        strides = (0,) * len(shape)
    else:
        strides = [0] * extra
        for have, want, stride in zip(a.shape, shape[extra:], a.strides):
            if have == want:
                strides.append(stride)
            elif have == 1:
                strides.append(0)
            else:
                return np.broadcast_to(a, shape)  # numpy's error names both shapes
    view = np.ndarray(shape, a.dtype, a, 0, strides)
    view.flags.writeable = False
    return view


@unary_op
@linear(fixed=(1,))
class BroadcastTo(Function):
    """out = x broadcast to shape (a read-only view); grad_x = grad summed back to x.shape"""

    @staticmethod
    def forward(ctx, x, shape):
        x = data(x)
        ctx.shape, ctx.size = x.shape, x.size
        return broadcast_view(x, shape)

    @staticmethod
    def backward(ctx, grad):
        if grad.size == ctx.size:  # no element was repeated: a reshape
            return grad.reshape(ctx.shape), None
        from .reduce import sum_to

        return sum_to(grad, ctx.shape), None


@unary_op
@linear(fixed=(1,))
class GetItem(Function):
    """out = x[index]; grad_x = zeros(x.shape) with grad added at index (repeats accumulate)"""

    @staticmethod
    def forward(ctx, x, index):
        x = data(x)
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        if type(grad) is np.ndarray:  # array mode: no op to record
            if _is_basic(ctx.index):  # see Note [slice gradients]
                return SliceGrad(ctx.shape, ctx.dtype, ctx.index, grad), None
            return _index_add(grad, ctx.shape, ctx.index), None
        return IndexAdd.apply(grad, ctx.shape, ctx.index), None


@unary_op
@linear(fixed=(1, 2))
class IndexAdd(Function):
    """out = zeros(shape) with src added at index; grad_src = grad[index]"""

    @staticmethod
    def forward(ctx, src, shape, index):
        ctx.index = index
        return _index_add(data(src), shape, index)

    @staticmethod
    def backward(ctx, grad):
        return GetItem.apply(grad, ctx.index), None, None


def _index_add(src, shape, index):
    """zeros(shape) with the array ``src`` added at ``index``, a valid index of that shape
    (repeated entries accumulate)."""
    out = np.zeros(shape, src.dtype)
    if _is_basic(index) or type(index) is np.ndarray and index.size == 1:
        out[index] = src  # an index that selects each element at most once
    elif type(index) is np.ndarray and src.size <= SCATTER_NUMPY_MAX_SIZE:
        np.add.at(out, index, src)  # kernels' small-scatter path, without its checks
    elif isinstance(index, np.ndarray) and index.ndim == 1 and out.ndim >= 1:
        if src.shape != (len(index), *shape[1:]):
            src = broadcast_view(src, (len(index), *shape[1:]))
        kernels.scatter_add(out, index, np.ascontiguousarray(src))
    else:
        np.add.at(out, index, src)
    return out


@variadic_op
@linear(fixed=(0,))
class Cat(Function):
    """out = concatenate(xs, axis); grad_xs = the matching slices of grad"""

    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis = axis
        if len(xs) == 1:  # np.concatenate's copy, without its fixed cost
            ctx.sizes = None
            return data(xs[0]).copy(order="K")
        arrays = [data(x) for x in xs]
        ctx.sizes = [a.shape[axis] for a in arrays]
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        if ctx.sizes is None:  # one input: all of grad
            return None, grad
        lead, pieces, start = (slice(None),) * ctx.axis, [None], 0
        for size in ctx.sizes:
            pieces.append(grad[lead + (slice(start, start + size),)])
            start += size
        return tuple(pieces)


@variadic_op
@linear(fixed=(0,))
class Stack(Function):
    """out = xs stacked along a new axis; grad_xs = grad's entries along it, in order"""

    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis = axis
        new_axis = (slice(None),) * axis + (None,)
        if len(xs) == 1:  # np.concatenate's copy, without its fixed cost
            return data(xs[0])[new_axis].copy(order="K")
        return np.concatenate([data(x)[new_axis] for x in xs], axis)

    @staticmethod
    def backward(ctx, grad):
        lead = (slice(None),) * ctx.axis
        return (None, *[grad[lead + (i,)] for i in range(grad.shape[ctx.axis])])


@unary_op
@linear(fixed=(1,))
class Pad(Function):
    """out = x with pairs[i] = (before, after) entries of value added on the sides of axis i;
    grad_x = grad[before_0 : before_0 + n_0, ...]"""

    # Linear in (x, value) together, so the declared jvp pads the tangent with zeros; value is a
    # constant (pad rejects one that requires grad) and gets no gradient.

    @staticmethod
    def forward(ctx, x, pairs, value):
        x = np.asarray(data(x))
        inner, shape = [], []
        for (before, after), n in zip(pairs, x.shape):
            inner.append(slice(before, before + n))
            shape.append(before + n + after)
        ctx.inner = tuple(inner)
        if tuple(shape) == x.shape:  # no side to fill: a copy
            return x.copy()
        out = np.full(shape, data(value), x.dtype)
        out[ctx.inner] = x
        return out

    @staticmethod
    def backward(ctx, grad):
        if type(grad) is np.ndarray:  # array mode: no op to record
            return grad[ctx.inner], None, None
        return GetItem.apply(grad, ctx.inner), None, None


def _is_basic(index):
    if type(index) is slice or type(index) is int:  # the common cases, without a loop
        return True
    if type(index) is np.ndarray:
        return False
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, int, np.integer)) or i is None or i is Ellipsis for i in items)


def _normalize_index(index):
    """Tensors and lists inside an index become ndarrays; bool masks become integer arrays."""
    if type(index) is slice or type(index) is int:  # the common cases, without a loop
        return index
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for item in items:
        item = data(item)
        if isinstance(item, (list, np.ndarray)):
            item = np.asarray(item)
            if item.dtype == bool:
                out.extend(np.nonzero(item))
                continue
            if item.dtype.kind not in "iu":
                raise IndexError(f"indices must be integers or bool, got dtype {item.dtype}")
        out.append(item)
    return out[0] if len(out) == 1 and not isinstance(index, tuple) else tuple(out)


def alias(x):
    """A new Tensor over the same data, differentiable (used by forward AD)."""
    return Alias.apply(x)


def reshape(x, *shape):
    """``x`` with a new shape (one entry may be -1); ``reshape(x, 2, 3)`` or ``(x, (2, 3))``."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    shape = _int_tuple(shape)
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape)


# Tuples of Python ints that reshape has seen, each keyed by itself: a lookup gives an equal
# tuple's converted form (entries equal to ints, np.int64(3) or 3.0, are those ints) without
# converting entry by entry.  Bounded; it holds only the ints, nothing of the caller's.
_INT_TUPLES = {}


def _int_tuple(shape):
    """``shape`` (a sequence of integers) as a tuple of Python ints."""
    if type(shape) is tuple:
        try:
            known = _INT_TUPLES.get(shape)
        except TypeError:  # an unhashable entry (a 0-d array)
            known = None
        if known is not None:
            return known
    shape = tuple(map(int, shape))
    if len(_INT_TUPLES) < 1024:
        _INT_TUPLES[shape] = shape
    return shape


def permute(x, *axes):
    """Reorder the axes: ``out.shape[i] == x.shape[axes[i]]`` (torch's ``permute``)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = axes[0]
    ndim = x.data.ndim
    try:
        known = _PERMUTATIONS.get(axes)
    except TypeError:  # an unhashable entry: normalized below
        known = None
    if known is not None and len(known) == ndim:
        return Permute.apply(x, known)
    # An axis out of range becomes ndim, which no permutation holds.
    normalized = tuple([a % ndim if -ndim <= a < ndim else ndim for a in map(int, axes)])
    if sorted(normalized) != list(range(ndim)):
        raise ValueError(f"permute: {tuple(axes)} is not a permutation of {ndim} axes")
    return Permute.apply(x, normalized)


# Each permutation of up to four axes, keyed by itself: one lookup validates the common forms of
# permute's argument, and gives Python ints for entries equal to them (np.int64(1), True), as the
# normalization in permute does.
_PERMUTATIONS = {p: p for n in range(5) for p in itertools.permutations(range(n))}


def transpose(x, axis0, axis1):
    """Swap two axes (torch's ``transpose``)."""
    ndim = x.data.ndim
    if type(axis0) is int and type(axis1) is int:
        return Permute.apply(x, _swapped_cached(axis0, axis1, ndim))
    return Permute.apply(x, _swapped(axis0, axis1, ndim))


def _swapped(axis0, axis1, ndim):
    """The axes of an ``ndim``-dimensional tensor, ``axis0`` and ``axis1`` swapped."""
    (axis0,) = normalize_axis(axis0, ndim, "transpose")
    (axis1,) = normalize_axis(axis1, ndim, "transpose")
    axes = [*range(ndim)]
    if axes:  # a 0-d tensor has only axis 0 (or -1), as in torch
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return tuple(axes)


_swapped_cached = functools.lru_cache(maxsize=256)(_swapped)  # for Python ints: errors not cached


def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` by numpy's rules."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return BroadcastTo.apply(x, shape)


def squeeze(x, axis=None):
    """Drop axes of size 1 (all, or the given ones; an axis of another size is kept, as in
    torch)."""
    shape = x.data.shape
    if type(axis) is int and -len(shape) <= axis < len(shape):  # one axis, without a loop
        if shape[axis] != 1:
            return x
        axis %= len(shape)
        return Reshape.apply(x, shape[:axis] + shape[axis + 1 :])
    if axis is None:
        keep = tuple([n for n in shape if n != 1])
    else:
        axes = normalize_axis(axis, len(shape), "squeeze")
        keep = tuple([n for i, n in enumerate(shape) if n != 1 or i not in axes])
    return x if keep == shape else Reshape.apply(x, keep)


def unsqueeze(x, axis):
    """Insert an axis of size 1 at position ``axis`` (negative counts from the new end)."""
    shape = x.data.shape
    ndim = len(shape) + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"unsqueeze: axis {axis} is out of range for {ndim} dimensions")
    axis %= ndim
    return Reshape.apply(x, shape[:axis] + (1,) + shape[axis:])


def getitem(x, index):
    """``x[index]``: basic slicing and integer-array (or bool-mask) indexing, as numpy."""
    return GetItem.apply(x, _normalize_index(index))


def index_select(x, axis, index):
    """The entries of ``x`` at the 1-D integer ``index`` along ``axis`` (torch's order)."""
    if type(index) is not np.ndarray:
        index = np.asarray(data(index))
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise ValueError(
            f"index_select: index must be a 1-D integer array, got shape {index.shape} "
            f"and dtype {index.dtype}"
        )
    axis = axis % x.ndim
    return GetItem.apply(x, (slice(None),) * axis + (index,) if axis else index)


def cat(tensors, axis=0):
    """Concatenate along an existing axis."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    return Cat.apply(axis % tensors[0].data.ndim, *tensors)


def stack(tensors, axis=0):
    """Stack equal-shaped tensors along a new axis."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if len(tensors) != 1:  # one tensor has one shape
        shapes = {t.data.shape for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    ndim = tensors[0].data.ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack: axis {axis} is out of range for {ndim} dimensions")
    return Stack.apply(axis % ndim, *tensors)


def split(x, split_size_or_sections, axis=0):
    """Pieces of ``x`` along ``axis``: of size ``split_size_or_sections`` (the last may be
    smaller) or of the listed sizes, which must add up to the axis length (torch's ``split``)."""
    axis = axis % x.ndim
    length = x.shape[axis]
    if isinstance(split_size_or_sections, (int, np.integer)):
        step = int(split_size_or_sections)
        if step <= 0:
            raise ValueError(f"split: split size must be positive, got {step}")
        sizes = [min(step, length - start) for start in range(0, length, step)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != length:
            raise ValueError(
                f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} has length {length}"
            )
    pieces, start = [], 0
    for size in sizes:
        index = (slice(None),) * axis + (slice(start, start + size),)
        pieces.append(GetItem.apply(x, index))
        start += size
    return tuple(pieces)


def pad(x, pad_width, value=0.0):
    """``x`` with ``value`` added on the sides of its axes (numpy's ``pad`` in constant mode):
    ``pad_width`` is an int (that many on both sides of every axis), a ``(before, after)`` pair
    for every axis, or one pair per axis; ``((before,),)`` and ``(n,)`` forms broadcast as in
    numpy.  The output has ``x``'s dtype.  ``value`` is a constant scalar (no gradient); the
    gradient of ``x`` is the inner block of the output's gradient, its tangent padded with
    zeros."""
    if isinstance(value, Tensor) and value.requires_grad:
        raise TypeError(
            "pad: value is a constant and gets no gradient; got a Tensor that requires grad"
        )
    value = data(value)
    if type(value) is not float and type(value) is not int and np.ndim(value) != 0:
        raise ValueError(f"pad: value must be a scalar, got shape {np.shape(value)}")
    ndim = x.data.ndim if isinstance(x, Tensor) else np.ndim(x)
    return Pad.apply(x, _pad_pairs(pad_width, ndim), value)


def _pad_pairs(pad_width, ndim):
    """numpy's normalization of ``pad_width``: one ``(before, after)`` pair of ints per axis."""
    if type(pad_width) is int and pad_width >= 0:  # the common forms, read without numpy
        return ((pad_width, pad_width),) * ndim
    if type(pad_width) in (tuple, list) and len(pad_width) == 2:
        before, after = pad_width
        if type(before) is int and type(after) is int and before >= 0 and after >= 0:
            return ((before, after),) * ndim
    try:
        widths = np.asarray(data(pad_width))
    except ValueError:
        raise ValueError(f"pad: pad_width {pad_width!r} is not an int, a pair or pairs") from None
    if widths.dtype.kind not in "iu":
        raise TypeError(f"pad: pad_width must hold integers, got {pad_width!r}")
    if widths.size and widths.min() < 0:
        raise ValueError(f"pad: pad_width must not be negative, got {pad_width!r}")
    if widths.ndim <= 2 and widths.size == 1:
        return ((int(widths.flat[0]),) * 2,) * ndim
    if widths.ndim <= 2 and widths.size == 2 and widths.shape != (2, 1):
        return ((int(widths.flat[0]), int(widths.flat[1])),) * ndim
    if widths.ndim != 2 or widths.shape[0] != ndim or widths.shape[1] not in (1, 2):
        raise ValueError(
            f"pad: pad_width of shape {widths.shape} does not fit a tensor of {ndim} "
            f"dimensions: give an int, a (before, after) pair or {ndim} pairs"
        )
    return tuple((int(b), int(a)) for b, a in np.broadcast_to(widths, (ndim, 2)).tolist())
