"""``GraphTask(ordered=True)``: every node sums the gradients that reached it in an order that does
not depend on their arrival (Note [canonical order] in engine.py), so a pass whose gradients come
from other ranks in any order computes the same bits."""

import itertools

import numpy as np
import pytest

import mpigrad as mg
from mpigrad.engine import GraphTask, added
from mpigrad.graph import Node, gradient_edge

# float64 sums of these depend on their order: 1e16 + 1.0 rounds to 1e16.
VALUES = (1e16, 1.0, -1e16, 3.0)


class Send(Node):
    """Stands for a send function: an extra root whose gradient is supplied from outside and
    passed on to ``edge``."""

    takes_arrays = True

    def __init__(self, edge):
        super().__init__()
        self.next_functions = (edge,)

    def apply(self, grads):
        return grads


class TwoOutputs(Node):
    """A node with two outputs that passes its second output's gradient on to ``tensor``."""

    takes_arrays = True
    output_meta = (((1,), np.dtype(np.float64)), ((1,), np.dtype(np.float64)))

    def __init__(self, tensor):
        super().__init__()
        self.next_functions = (gradient_edge(tensor),)

    def apply(self, grads):
        return (grads[1],)


def dense(x):
    """Four sends of x itself: their gradients meet at x's accumulator."""
    return [Send(gradient_edge(x)) for _ in VALUES], [np.array([v]) for v in VALUES]


def slices(x):
    """Three sends of the slice h[0:1] and one of h = x * 1.0: a dense gradient and three slice
    gradients meet at h's node (Note [slice gradients])."""
    h = x * 1.0
    sends = [Send(gradient_edge(h[0:1])) for _ in VALUES[:3]] + [Send(gradient_edge(h))]
    return sends, [np.array([v]) for v in VALUES[:3]] + [np.array([VALUES[3], 0.0])]


def second_output(x):
    """Four sends into output 1 of a two-output node."""
    node = TwoOutputs(x)
    return [Send((node, 1)) for _ in VALUES], [np.array([v]) for v in VALUES]


def accumulating_into(sink):
    """A leaf sink as the distributed context's: gradients added into a dict."""
    return lambda t, g: sink.__setitem__(t, added(sink.get(t), g))


def leaf_gradients(build, ordered, create_graph=False):
    """x's gradient, as bytes, for every order in which the sends' gradients can arrive; each is
    supplied and run at once, as the distributed engine does when a message comes."""
    results = set()
    for order in itertools.permutations(range(len(VALUES))):
        x = mg.tensor(np.zeros(2 if build is slices else 1), requires_grad=True)
        sends, grads = build(x)
        sink = {}
        task = GraphTask(
            [],
            [],
            extra_roots=sends,
            ordered=ordered,
            create_graph=create_graph,
            accumulate=accumulating_into(sink),
        )
        for i in order:
            task.supply(sends[i], grads[i].copy())
            task.execute()
        results.add(sink[x].data.tobytes())
    return results


@pytest.mark.parametrize("create_graph", [False, True], ids=["arrays", "tensors"])
@pytest.mark.parametrize("build", [dense, slices, second_output])
def test_ordered_sums_are_the_same_bits_in_every_arrival_order(build, create_graph):
    # Without ordered the arrival order shows in the bits: the test can fail.
    assert len(leaf_gradients(build, False, create_graph)) > 1
    assert len(leaf_gradients(build, True, create_graph)) == 1
