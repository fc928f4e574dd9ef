"""``SliceGrad``: the gradient of a basic slice, kept as the slice until it is summed.

Note [slice gradients]: the gradient of ``x[index]`` is zero except at ``index``.  Made dense it
costs a zero-filled array of x's size, a copy, and one more full-size addition wherever it meets
other gradients: for a halo cell ``u[-1:]`` of a large block, three passes over the block for one
number.  In array mode (Note [array mode] in engine.py) a basic-index ``GetItem`` backward returns
a ``SliceGrad`` instead; the engine adds it in place into a dense gradient it sums it with, and
makes it dense only where it is alone.  No rule, hook or user code ever sees one.
"""

import sys

import numpy as np

__all__ = ["SliceGrad", "sum_with_slices"]


class SliceGrad:
    """zeros(shape, dtype) with ``values`` at the basic index ``index``."""

    __slots__ = ("shape", "dtype", "index", "values")

    def __init__(self, shape, dtype, index, values):
        self.shape, self.dtype, self.index, self.values = shape, dtype, index, values

    def dense(self):
        out = np.zeros(self.shape, self.dtype)
        out[self.index] = self.values
        return out


def sum_with_slices(grads):
    """The sum of ``grads`` (ndarrays and SliceGrads, at least one SliceGrad) as an ndarray: the
    first dense gradient (copied unless nothing else holds it) or the first slice made dense,
    with the others added to it.  ``grads`` is the engine's list of what reached one input."""
    dense = [g for g in grads if type(g) is not SliceGrad]
    slices = [g for g in grads if type(g) is SliceGrad]
    if dense:
        total = dense.pop(0)
        # A gradient may be shared (Add hands one array to both inputs) or viewed (a leaf's
        # .grad): it is written only when no one else refers to it or to a view of it.  Then
        # the references are grads, total and getrefcount's argument.
        if total.base is not None or not total.flags.writeable or sys.getrefcount(total) > 3:
            total = np.array(total, copy=True)
        for g in dense:
            total += g
    else:
        total = slices.pop().dense()
    for s in slices:
        total[s.index] += s.values
    return total
