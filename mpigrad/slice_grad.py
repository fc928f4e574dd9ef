"""``SliceGrad``: the gradient of a basic slice, kept as the slice until it is summed.

Note [slice gradients]: the gradient of ``x[index]`` is zero except at ``index``.  Made dense it
costs a zero-filled array of x's size, a copy, and one more full-size addition wherever it meets
other gradients: for a halo cell ``u[-1:]`` of a large block, three passes over the block for one
number.  In array mode (Note [array mode] in engine.py) a basic-index ``GetItem`` backward returns
a ``SliceGrad`` instead; the engine adds it in place into a dense gradient it sums it with, and
makes it dense only where it is alone.  No rule, hook or user code ever sees one.
"""

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
    first dense gradient, or the last slice made dense, with the others added to it in order.
    ``grads`` is the engine's list of what reached one input: the first dense gradient is
    written in place when it is writable, which makes it the engine's alone, and copied when it
    is read-only (Note [gradient ownership] in engine.py)."""
    dense = [g for g in grads if type(g) is not SliceGrad]
    slices = [g for g in grads if type(g) is SliceGrad]
    if dense:
        total = dense.pop(0)
        if not total.flags.writeable:
            total = np.array(total)
        for g in dense:
            total += g
    else:
        total = slices.pop().dense()
    for s in slices:
        total[s.index] += s.values
    return total
