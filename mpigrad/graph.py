"""Nodes of the backward graph.

A node receives the gradients of its outputs and returns the gradients of its inputs.
``next_functions[i]`` is the edge ``(node, output_nr)`` that receives the gradient of input ``i``
(``(None, 0)`` where input ``i`` needs none); ``input_meta[i]`` is that input's ``(shape, dtype)``,
which the engine uses to sum a broadcast gradient back to the input's shape
(see Note [broadcasting is undone at the edge] in engine.py).  A None entry, or None for the
whole of ``input_meta``, means there is nothing to check.
"""

import itertools
import weakref

__all__ = ["Node", "AccumulateGrad", "gradient_edge"]

next_sequence_nr = itertools.count().__next__  # orders ready nodes: see engine.py


class Node:
    """Base of every node: the engine needs only ``next_functions`` and ``apply``.

    ``apply(grads)`` takes one gradient per output (a Tensor, or None where no gradient flowed) and
    returns one per entry of ``next_functions``.  The engine calls it even when every incoming
    gradient is None, so nodes that talk to the outside (a recv function) always run once.
    """

    next_functions = ()
    input_meta = ()
    output_meta = ((None, None),)  # (shape, dtype) per output; the engine needs only their count
    pre_hooks = None  # {output_nr: [hook, ...]}, from Tensor.register_hook
    retained = None  # {output_nr: weakref to a non-leaf Tensor that called retain_grad}
    # Whether apply takes and may return plain ndarrays (see Note [array mode] in engine.py),
    # keeping Note [gradient ownership] there: it returns fresh arrays, views of its incoming
    # gradients or those gradients, each to one input.  Otherwise it always gets Tensors, and
    # what it returns enters the engine read-only.
    takes_arrays = False
    # A method that a backward pass reaching this node calls before it runs any node (so before
    # it frees any): it raises to refuse the pass (a recv function outside its context's pass).
    before_pass = None
    # Whether apply communicates with other ranks, which take part in it whatever this rank
    # needs: a pass that captures gradients (``inputs=``) runs it, and the nodes on the way to
    # it, even when it leads to no captured edge (a collective's node: ``Call.apply``).
    communicates = False

    def __init__(self):
        self.sequence_nr = next_sequence_nr()

    def name(self):
        return type(self).__name__

    def apply(self, grads):
        raise NotImplementedError(f"{self.name()} has no backward rule")

    def release(self):
        """Free what the backward pass needed (saved tensors); called unless retain_graph."""

    def add_pre_hook(self, output_nr, hook):
        if self.pre_hooks is None:
            self.pre_hooks = {}
        self.pre_hooks.setdefault(output_nr, []).append(hook)

    def __repr__(self):
        return f"<{self.name()}>"


class AccumulateGrad(Node):
    """The sink of a leaf tensor: the engine hands it the leaf's total gradient.

    Where the gradient goes (``.grad``, a returned list, a per-context dict) is the caller's
    choice, made in the engine; this node only names the leaf.
    """

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def apply(self, grads):
        return ()


def gradient_edge(tensor):
    """The edge that receives ``tensor``'s gradient: its grad_fn, or its leaf accumulator."""
    if tensor.grad_fn is not None:
        return (tensor.grad_fn, tensor._output_nr)
    ref = tensor._accumulator
    acc = ref() if ref is not None else None
    if acc is None:
        # The tensor holds its accumulator weakly, so the graph (not the leaf) keeps it alive.
        acc = AccumulateGrad(tensor)
        tensor._accumulator = weakref.ref(acc)
    return (acc, 0)
