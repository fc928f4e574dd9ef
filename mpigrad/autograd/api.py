"""``backward`` and ``grad``: reverse mode on one rank, with torch.autograd's semantics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..engine import (
    GraphTask,
    accumulate_grad,
    end_of_pass,
    post_accumulate,
    read_only,
    unit_seed,
)
from ..grad_mode import _State
from ..graph import gradient_edge
from ..tensor import Tensor

__all__ = ["backward", "grad"]


def backward(
    tensors: Tensor | Sequence[Tensor],
    grad_tensors: Tensor | ArrayLike | Sequence[Tensor | ArrayLike | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    inputs: Tensor | Sequence[Tensor] | None = None,
) -> None:
    """Accumulate the gradient of ``sum_i <grad_tensors[i], tensors[i]>`` into ``.grad``.

    Scalar tensors may omit their entry of ``grad_tensors`` (it is 1).  Without ``inputs`` every
    leaf reached gets its gradient added to ``.grad``; with ``inputs`` only those tensors (leaves or
    not) do.  ``retain_graph`` defaults to ``create_graph``; without it the graph's saved tensors
    are freed.  ``create_graph=True`` records the backward pass so gradients can be differentiated.
    Leaves whose ``.grad`` this writes then run their post-accumulate-grad hooks; callbacks
    queued meanwhile (``queue_callback``) run before it returns.
    """
    tensors = _as_tuple(tensors, "tensors")
    grads = _seed_grads(tensors, grad_tensors, "grad_tensors", create_graph)
    if retain_graph is None:
        retain_graph = create_graph
    capture = None
    if inputs is not None:
        inputs = _as_tuple(inputs, "inputs")
        if not inputs:
            raise RuntimeError("backward: inputs= was given but is empty")
        capture = [_input_edge(t, i, "backward") for i, t in enumerate(inputs)]
    task = GraphTask(
        [_root_edge(t, i) for i, t in enumerate(tensors)],
        grads,
        keep_graph=retain_graph,
        create_graph=create_graph,
        capture=capture,
    )
    with end_of_pass():  # see Note [end-of-pass callbacks] in engine.py
        task.execute()
        if inputs is not None:
            for t, g in zip(inputs, task.captured):
                if g is not None and not _retained(t):  # the task already accumulated those
                    accumulate_grad(t, g, create_graph)
                    if t._post_hooks:
                        post_accumulate(t)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | ArrayLike | Sequence[Tensor | ArrayLike | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> Tensor | tuple[Tensor | None, ...] | None:
    """Return the gradients of ``sum_i <grad_outputs[i], outputs[i]>`` w.r.t. ``inputs``.

    ``.grad`` is left untouched.  An input the outputs do not depend on raises, naming it, unless
    ``allow_unused=True`` (then its gradient is None).  Other parameters as in ``backward``.
    """
    outputs = _as_tuple(outputs, "outputs")
    single = isinstance(inputs, Tensor)
    inputs = _as_tuple(inputs, "inputs")
    if not inputs:
        raise RuntimeError("grad: inputs is empty")
    grads = _seed_grads(outputs, grad_outputs, "grad_outputs", create_graph)
    if retain_graph is None:
        retain_graph = create_graph
    task = GraphTask(
        [_root_edge(t, i) for i, t in enumerate(outputs)],
        grads,
        keep_graph=retain_graph,
        create_graph=create_graph,
        capture=[_input_edge(t, i, "grad") for i, t in enumerate(inputs)],
        retain_grads=False,
    )
    with end_of_pass():
        task.execute()
    result = task.captured
    if not allow_unused:
        for i, g in enumerate(result):
            if g is None:
                raise RuntimeError(
                    f"grad: input {i} (shape {inputs[i].shape}) was not used in the graph of the "
                    "outputs; pass allow_unused=True to get None for it"
                )
    return result[0] if single else tuple(result)


def _retained(tensor):
    """Whether ``tensor`` called retain_grad, so that a backward pass fills its ``.grad``."""
    node = tensor.grad_fn
    ref = node.retained.get(tensor._output_nr) if node is not None and node.retained else None
    return ref is not None and ref() is tensor


def _as_tuple(value, what):
    if isinstance(value, Tensor):
        return (value,)
    value = tuple(value)
    for i, t in enumerate(value):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}[{i}] is a {type(t).__name__}, expected a Tensor")
    return value


def _root_edge(tensor, i):
    if not tensor.requires_grad:
        raise RuntimeError(
            f"element {i} of tensors does not require grad and does not have a grad_fn"
        )
    return gradient_edge(tensor)


def _input_edge(tensor, i, what):
    if not tensor.requires_grad:
        raise RuntimeError(f"{what}: inputs[{i}] does not require grad")
    return gradient_edge(tensor)


def _seed_grads(tensors, given, what, create_graph):
    """The seed gradient of each output: given, or ones for scalars; never an array the caller
    can write (see Note [gradient ownership] in engine.py)."""
    if given is None:
        given = [None] * len(tensors)
    elif isinstance(given, (Tensor, np.ndarray)):
        given = [given]
    else:
        given = list(given)
    if len(given) != len(tensors):
        raise RuntimeError(f"{what} has {len(given)} entries but there are {len(tensors)} outputs")
    seeds = []
    for i, (t, g) in enumerate(zip(tensors, given)):
        if g is None:
            if t.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs: output {i} has "
                    f"shape {t.shape}; pass its gradient in {what}"
                )
            g = Tensor._make(unit_seed(t.shape, t.dtype))
        elif isinstance(g, Tensor) and (g.requires_grad or g._fw):
            # Differentiated (or carrying tangents): a read-only view, recorded as the pass
            # records (create_graph), so the gradients stay functions of the seed.
            prev, _State.grad_enabled = _State.grad_enabled, create_graph
            try:
                g = read_only(g)
            finally:
                _State.grad_enabled = prev
        else:
            given_array = g.data if isinstance(g, Tensor) else g
            array = np.asarray(given_array, t.dtype)
            # The caller's own array enters read-only (a copy is made only where the pass hands
            # it over); one converted here is the pass's to keep.
            g = Tensor._make(read_only(array) if array is given_array else array)
        if g.shape != t.shape:
            raise RuntimeError(
                f"Mismatch in shape: {what}[{i}] has shape {g.shape} but output {i} has "
                f"shape {t.shape}"
            )
        seeds.append(g)
    return seeds
