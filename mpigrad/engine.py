"""The rank-local backward engine.

A ``GraphTask`` is one backward pass.  Before it runs, it walks the graph from its roots (without
recursion) and counts every node's incoming edges; a node runs exactly once, when all of them have
delivered, with their gradients summed.  Ready nodes are taken newest-first (by sequence number).

The task is built for the distributed layer without knowing about it:

- ``extra_roots`` are nodes whose incoming gradient arrives from outside, later, through
  ``supply(node, grad)`` (a send function gets its gradient from the receiving rank);
- any node's ``apply`` may hand its gradient to the outside (a recv function sends it back), and
  runs even when no gradient reached it (it gets None);
- ``accumulate(leaf, grad)`` decides where leaf gradients go: ``.grad`` by default, a
  per-context dict for distributed autograd; ``capture`` instead returns the gradients that reach
  given edges and runs only the nodes needed for them (``autograd.grad``, ``inputs=``);
- ``ordered=True`` makes every sum of gradients independent of the order they arrived in (see
  Note [canonical order]).

Note [broadcasting is undone at the edge]: a rule may return the gradient of an input in the
output's (broadcast) shape, or in a promoted dtype.  The engine, not the rule, sums it back to the
input's shape and casts it to the input's dtype, using differentiable ops so that
``create_graph=True`` sees them.

Note [array mode]: a pass that records nothing (no ``create_graph``) and carries no tangents (no
dual level open) runs the built-in rules on plain ndarrays: gradients travel as arrays,
``saved_tensors`` returns arrays and ``Function.apply`` with recording off returns arrays, so the
same rule code (``grad * y``, ``cos(x)``) costs what numpy costs.  Whatever the user wrote (hooks,
the ``accumulate`` sink, a custom Function's backward, a Node without ``takes_arrays``) still gets
Tensors, and runs with array mode off.

Note [gradient ownership]: inside a backward pass, a writable gradient array belongs to the engine
alone; anything that may be shared reaches the engine read-only.  So the engine writes into a
writable gradient (``sum_with_slices``) and hands it over (as a leaf's ``.grad``, a retained
``.grad``, a captured gradient) without copying, and copies only a read-only one when it hands
it over.  Ownership is this stated rule, never a reference count (CPython's counts are not
stable across versions).  Who keeps it:

- seeds: ``unit_seed`` is read-only; ``autograd.backward`` and ``grad`` take a read-only view
  of the caller's seed array (or own the array they convert it to: another dtype, a list); a
  caller of ``GraphTask`` hands over writable arrays it will not touch again (a received buffer)
  and passes anything else read-only, in ``grads`` and in ``supply``;
- built-in rules, and every node with ``takes_arrays``, return fresh arrays, views of their
  incoming gradient or that gradient itself, each to one input; a rule that returns one array
  for two inputs makes it read-only first (``Add``);
- what user code returns (a custom Function's backward, a Node without ``takes_arrays``, a
  hook's replacement gradient) enters as a read-only view (``read_only``);
- user code handed a gradient during the pass: a hook gets it after the engine has made its
  own array read-only (hooks must not modify their argument); a retained ``.grad`` and a
  captured gradient get the writable array, and the pass goes on with a read-only view of it;
- the leaf sink (``added``) keeps a writable gradient and copies a read-only one (``owned``),
  so a ``.grad`` is the user's to write: ``x.grad.data /= n``, an in-place Allreduce, clipping.

Note [end-of-pass callbacks]: ``autograd.backward`` and ``grad`` run their pass inside
``end_of_pass()``; ``queue_callback(fn)``, called while such a pass runs (from a hook, a rule, a
post-accumulate-grad hook), queues ``fn`` to run once the pass is over: after every node has run
and every leaf's ``.grad`` (``inputs=`` included) has been written, in the order queued, a
callback queued by a callback included, before ``backward`` returns (torch's
``Variable._execution_engine.queue_callback``), under the caller's grad mode (the engine has
restored it) and with Tensors (array mode off).  A pass that raises drops its callbacks.
Passes nest (a hook may run a backward of its own): a callback joins the innermost pass.
``dist_autograd.backward`` takes no callbacks.

Note [canonical order]: a node sums the gradients that reached it in the order they arrived.
Within one rank that order is fixed by the graph (ready nodes run newest-first), but gradients
supplied from other ranks arrive when their messages do, and floating-point addition is not
associative.  With ``ordered=True`` every node (every output of it) sums its gradients sorted by
the sequence number of the node that produced each (a seed or a supplied gradient counts as
produced before every node), stably, so that two gradients from one node keep their order: each
node then computes the same bits whatever the arrival order, and so does the whole pass.
Several supplies to one extra root are summed in the order they came.
"""

import functools
from collections.abc import Callable
from heapq import heappop, heappush

import numpy as np

from . import fit
from .dual import open_levels, set_tangent
from .grad_mode import _State
from .graph import AccumulateGrad, Node
from .kernels import accumulate as accumulate_into
from .kernels import sum_into
from .slice_grad import SliceGrad, sum_with_slices
from .tensor import Tensor

__all__ = [
    "GraphTask",
    "BackwardError",
    "accumulate_grad",
    "added",
    "owned",
    "read_only",
    "unit_seed",
    "queue_callback",
    "end_of_pass",
    "current_pass",
    "post_accumulate",
]


class BackwardError(RuntimeError):
    """An exception raised inside a node's rule or a hook during backward; names the node."""


@functools.lru_cache(maxsize=32)
def unit_seed(shape, dtype):
    """The seed gradient of a scalar root: ones of ``shape``, read-only because every pass
    shares it (see Note [gradient ownership])."""
    seed = np.ones(shape, dtype)
    seed.flags.writeable = False
    return seed


# The callbacks queued in each local pass that runs, the innermost last: see Note [end-of-pass
# callbacks].
_passes = []


def queue_callback(callback: Callable[[], None]) -> None:
    """Run ``callback()`` (no arguments) when the backward pass that is running now ends; see
    Note [end-of-pass callbacks].  RuntimeError outside a pass of ``backward`` or ``grad``."""
    if not _passes:
        raise RuntimeError(
            "queue_callback: no backward pass is running: call it while backward() or grad() "
            "runs (from a hook), not before or after (dist_autograd.backward takes no callbacks)"
        )
    if not callable(callback):
        raise TypeError(f"queue_callback: expected a callable, got {type(callback).__name__}")
    _passes[-1].append(callback)


def current_pass():
    """An object that identifies the local backward pass running now (the innermost), or None
    outside one: what tells a hook whether the pass it saw before is still running."""
    return _passes[-1] if _passes else None


class end_of_pass:  # noqa: N801 (named as the function it stands for)
    """The block in which one local pass runs: the callbacks queued meanwhile run when it ends
    without an exception (see Note [end-of-pass callbacks]).  A class, not a generator: it
    brackets every ``backward``, and costs a third of contextlib's."""

    __slots__ = ("callbacks",)

    def __enter__(self):
        self.callbacks = []
        _passes.append(self.callbacks)

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None:
                callbacks, i = self.callbacks, 0
                while i < len(callbacks):  # a callback may queue another
                    callbacks[i]()
                    i += 1
        finally:
            _passes.pop()


def post_accumulate(tensor):
    """Run ``tensor``'s post-accumulate-grad hooks (``Tensor.register_post_accumulate_grad_hook``),
    in registration order, each with the tensor; BackwardError naming a hook that raises."""
    for fn in list(tensor._post_hooks):
        try:
            fn(tensor)
        except Exception as exc:
            raise BackwardError(
                f"post-accumulate-grad hook {getattr(fn, '__name__', fn)!s} on a leaf of shape "
                f"{tensor.shape} raised {type(exc).__name__}: {exc}"
            ) from exc


def accumulate_grad(tensor, grad, create_graph=False):
    """``tensor.grad += grad``; see ``added``."""
    tensor.grad = added(tensor.grad, grad, create_graph)


def added(old, grad, create_graph=False):
    """``old + grad`` for gradient accumulation (``old`` None: nothing yet), as the caller's to
    keep and write (see Note [gradient ownership]).

    The first gradient is handed over when its array is writable, else copied (``owned``).  A
    later one is added in place into ``old``'s array when that is writable, as torch adds into
    an existing ``.grad`` (a user's array assigned to ``.grad`` included), else into a new
    array; differentiably under create_graph or where tangents ride along.
    """
    if old is None:
        return owned(grad)
    if create_graph or old.grad_fn is not None or old._fw or grad._fw:
        return old + grad
    if old.data.flags.writeable:
        accumulate_into(old.data, grad.data)
        return old
    return Tensor._make(np.asarray(np.add(old.data, grad.data)))


def owned(grad):
    """``grad`` (a Tensor) as a gradient the caller may keep and write: itself when its array is
    writable (the engine's own, handed over), else a copy; see Note [gradient ownership].

    A copy is recorded where ``grad`` requires grad (create_graph: as torch's clone), and keeps
    ``grad``'s tangents (forward-over-reverse).
    """
    if grad.data.flags.writeable:
        return grad
    if grad._requires_grad:
        return fit.copy(grad)
    copy = Tensor._make(np.array(grad.data))
    for level, tangent in (grad._fw or {}).items():
        set_tangent(copy, level, tangent)
    return copy


def read_only(grad):
    """``grad`` (an ndarray or a Tensor) as a read-only view, or itself when it is read-only
    already: how a gradient that may be shared enters the engine (Note [gradient ownership]).

    A Tensor that requires grad or carries tangents gets its view through ``alias``, so that it
    stays differentiable.  Anything else is returned as it is (the engine names a wrong type).
    """
    if type(grad) is np.ndarray:
        if not grad.flags.writeable:
            return grad
        view = grad.view()
        view.setflags(write=False)
        return view
    if not isinstance(grad, Tensor) or not grad.data.flags.writeable:
        return grad
    view = grad.data.view()
    view.setflags(write=False)
    if not (grad._requires_grad or grad._fw):
        return Tensor._make(view)
    out = fit.alias(grad)
    out.data = view
    return out


def _seal(grad):
    """Make the engine's own gradient array read-only, where it is (an ndarray or a Tensor)."""
    (grad if type(grad) is np.ndarray else grad.data).setflags(write=False)


_ONE_OUTPUT = Node.output_meta


class GraphTask:
    """One backward pass from ``roots`` (edges) seeded with ``grads`` (Tensors or ndarrays).

    The task takes over a writable seed or supplied array: it may write into it or hand it to a
    leaf (see Note [gradient ownership]).  ``ordered``: see Note [canonical order].
    """

    def __init__(
        self,
        roots,
        grads,
        *,
        extra_roots=(),
        keep_graph=False,
        create_graph=False,
        capture=None,
        accumulate=None,
        retain_grads=True,
        ordered=False,
    ):
        self.keep_graph = keep_graph
        self.create_graph = create_graph
        self.retain_grads = retain_grads
        self.ordered = ordered
        self.origins = {}  # ordered only: key -> sequence numbers of the gradients' producers
        self.accumulate = accumulate or (lambda t, g: accumulate_grad(t, g, create_graph))
        self.into_grad = accumulate is None  # leaves' post-accumulate-grad hooks run
        self.arrays = not create_graph and not open_levels()  # see Note [array mode]
        starts = [node for node, _ in roots]
        if extra_roots:
            starts += extra_roots
        self.dependencies, parents = _count_dependencies(starts, capture is not None)
        dependencies = self.dependencies
        # A root's seed and an extra root's gradient come from outside: one more input each.
        for node in starts:
            dependencies[node] = dependencies.get(node, 0) + 1
        self.buffers = {}
        self.ready = []
        self.captured = None
        self.capture_slots = {}
        self.needed = None
        if capture is not None:
            self.captured = [None] * len(capture)
            for index, (node, nr) in enumerate(capture):
                self.capture_slots.setdefault(node, []).append((nr, index))
            self.needed = _needed_for(self.capture_slots, dependencies, parents)
        for (node, nr), grad in zip(roots, grads):
            self._buffer(node, nr, self._value(grad))
            self._arrive(node)

    def supply(self, node, grad):
        """Deliver the gradient of an extra root, received from outside (None: no gradient)."""
        if grad is not None:
            self._buffer(node, 0, self._value(grad))
        self._arrive(node)

    def execute(self):
        """Run every node that is ready, until none is.  Runs with grad mode = create_graph."""
        prev = _State.array_mode, _State.grad_enabled
        _State.array_mode, _State.grad_enabled = self.arrays, self.create_graph
        try:
            ready, run = self.ready, self._run
            while ready:
                run(heappop(ready)[1])
        finally:
            _State.array_mode, _State.grad_enabled = prev

    def _value(self, grad):
        """A gradient as this pass carries it: an ndarray in array mode, else a Tensor."""
        if self.arrays:
            if type(grad) is np.ndarray:
                return grad
            return grad.data if isinstance(grad, Tensor) else np.asarray(grad)
        return grad if isinstance(grad, Tensor) else Tensor._make(np.asarray(grad))

    def _outside(self, fn, *args):
        """Call user code: with Tensors, and with array mode off."""
        if not self.arrays:
            return fn(*args)
        _State.array_mode = False
        try:
            return fn(*args)
        finally:
            _State.array_mode = True

    def _run(self, node):
        buffers, create_graph, ordered = self.buffers, self.create_graph, self.ordered
        pending = buffers.pop(node, None)
        if ordered and pending is not None and len(pending) > 1:
            pending = self._in_order(node, pending)
        if pending is None:
            grads = [None]
        elif len(pending) == 1 and type(pending[0]) is not SliceGrad:
            grads = pending
        else:
            grads = [_total(pending, create_graph)]
        if node.output_meta is not _ONE_OUTPUT:
            for nr in range(1, len(node.output_meta)):
                pending = buffers.pop((node, nr), None)
                if ordered and pending is not None and len(pending) > 1:
                    pending = self._in_order((node, nr), pending)
                grads.append(_total(pending, create_graph))
        capture = self.capture_slots
        if (
            node.pre_hooks
            or node.retained
            or (capture and node in capture)
            or (type(node) is AccumulateGrad and node.variable._hooks)
        ):
            grads = self._hooks_and_capture(node, grads)
        if self.needed is not None and node not in self.needed:
            return
        if type(node) is AccumulateGrad:
            if grads[0] is not None:
                leaf = node.variable
                self._outside(self.accumulate, leaf, _tensor(grads[0]))
                if leaf._post_hooks and self.into_grad:
                    self._outside(post_accumulate, leaf)
            return
        arrays = self.arrays
        try:
            if node.takes_arrays:
                outs = node.apply(grads)
            else:
                outs = self._apply_outside(node, grads)
        except BackwardError:
            raise
        except Exception as exc:
            raise BackwardError(f"{node.name()} raised {type(exc).__name__}: {exc}") from exc
        if not self.keep_graph:
            node.release()
        meta = node.input_meta
        dependencies = self.dependencies
        i = -1
        for nxt, nr in node.next_functions:
            i += 1
            if nxt is None:
                continue
            grad = outs[i]
            if grad is not None:
                m = meta[i] if meta else None
                if arrays:
                    if type(grad) is not np.ndarray and type(grad) is not SliceGrad:
                        grad = _array(node, i, grad)
                    if m and (grad.shape != m[0] or grad.dtype != m[1]):
                        grad = _fit(node, i, grad, m)
                elif type(grad) is not Tensor:
                    grad = _fit(node, i, _tensor_of(node, i, grad), m)
                elif m and (grad.data.shape != m[0] or grad.data.dtype != m[1]):
                    grad = _fit(node, i, grad, m)
                key = nxt if nr == 0 else (nxt, nr)
                waiting = buffers.get(key)
                if waiting is None:
                    buffers[key] = [grad]
                else:
                    waiting.append(grad)
                if ordered:
                    self.origins.setdefault(key, []).append(node.sequence_nr)
            left = dependencies[nxt] - 1
            dependencies[nxt] = left
            if left == 0:
                heappush(self.ready, (-nxt.sequence_nr, nxt))

    def _arrive(self, node):
        left = self.dependencies[node] - 1
        self.dependencies[node] = left
        if left == 0:
            heappush(self.ready, (-node.sequence_nr, node))

    def _buffer(self, node, nr, grad):
        # Gradients waiting for a node: output 0 under the node, output nr under (node, nr).
        key = node if nr == 0 else (node, nr)
        pending = self.buffers.get(key)
        if pending is None:
            self.buffers[key] = [grad]
        else:
            pending.append(grad)
        if self.ordered:  # from outside: before every node's, see Note [canonical order]
            self.origins.setdefault(key, []).append(-1)

    def _in_order(self, key, pending):
        """``pending`` (the gradients that reached ``key``) in the order of Note [canonical
        order]."""
        origins = self.origins[key]
        return [pending[i] for i in sorted(range(len(pending)), key=origins.__getitem__)]

    def _apply_outside(self, node, grads):
        """Apply a node written by a user: with Tensors, array mode off (Note [array mode]); what
        it returns enters read-only (Note [gradient ownership])."""
        if self.arrays:
            outs = self._outside(node.apply, [None if g is None else _tensor(g) for g in grads])
            return [
                None if g is None else read_only(_array(node, i, g)) for i, g in enumerate(outs)
            ]
        outs = node.apply(grads)
        return [
            None if g is None else read_only(_tensor_of(node, i, g)) for i, g in enumerate(outs)
        ]

    def _hooks_and_capture(self, node, grads):
        """Run the hooks on ``node``'s gradients, then fill retained ``.grad``s and captured
        gradients; see Note [gradient ownership] for who may write what."""
        hooks = node.pre_hooks or {}
        if type(node) is AccumulateGrad and node.variable._hooks:
            hooks = {0: node.variable._hooks}
        for nr, fns in hooks.items():
            for fn in list(fns):
                if grads[nr] is None:
                    break
                _seal(grads[nr])
                try:
                    replaced = self._outside(fn, _tensor(grads[nr]))
                except Exception as exc:
                    raise BackwardError(
                        f"hook {getattr(fn, '__name__', fn)!s} on {node.name()} output {nr} raised "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if replaced is not None:
                    grads[nr] = read_only(self._value(replaced))
        if node.retained and self.retain_grads:
            for nr, ref in node.retained.items():
                tensor = ref()
                if tensor is not None and grads[nr] is not None:
                    self._outside(accumulate_grad, tensor, _tensor(grads[nr]), self.create_graph)
                    grads[nr] = read_only(grads[nr])  # the .grad may have kept the array
        for nr, index in self.capture_slots.get(node, ()):
            if grads[nr] is not None:
                self.captured[index] = owned(_tensor(grads[nr]))
                grads[nr] = read_only(grads[nr])
        return grads


def _count_dependencies(starts, want_parents):
    """Incoming-edge count of every node reachable from ``starts`` (which may repeat a node), and
    (if ``want_parents``) each node's parents.  Calls each node's ``before_pass``, if any."""
    dependencies, parents = {}, {}
    starts = set(starts)
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node.before_pass is not None:
            node.before_pass()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            count = dependencies.get(nxt)
            dependencies[nxt] = 1 if count is None else count + 1
            if want_parents:
                parents.setdefault(nxt, []).append(node)
            if count is None and nxt not in starts:  # first visit: walk on from it
                stack.append(nxt)
    return dependencies, parents


def _needed_for(capture_slots, reached, parents):
    """Nodes that lie on a path to a captured edge, and the nodes of ``reached`` that
    communicate with the path to each: only these run when capturing."""
    needed = set()
    stack = [p for node in capture_slots for p in parents.get(node, ())]
    stack += [node for node in reached if node.communicates]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(parents.get(node, ()))
    return needed


def _total(pending, create_graph):
    """The gradient that reached one output: None, the one that came, or their sum (dense)."""
    if pending is None:
        return None
    if len(pending) == 1:
        grad = pending[0]
        return grad.dense() if type(grad) is SliceGrad else grad
    return _sum(pending, create_graph)


def _sum(grads, create_graph):
    """The sum of two or more gradients that reached one input: the first was kept by reference,
    the second allocates, the rest are added in place (kernels.sum_into)."""
    if any(type(g) is SliceGrad for g in grads):  # array mode, see Note [slice gradients]
        return sum_with_slices(grads)
    if type(grads[0]) is np.ndarray:  # array mode
        dst = np.asarray(np.add(grads[0], grads[1]))  # 0-d inputs give a numpy scalar
        if len(grads) > 2:
            sum_into(dst, grads[2:])
        return dst
    if create_graph or any(g._fw for g in grads):
        # With ops, so that the sum is recorded and carries the gradients' tangents (a jvp of a
        # gradient: forward-over-reverse).
        total = grads[0]
        for g in grads[1:]:
            total = total + g
        return total
    dst = np.asarray(np.add(grads[0].data, grads[1].data))  # 0-d inputs give a numpy scalar
    if len(grads) > 2:
        sum_into(dst, [g.data for g in grads[2:]])
    return Tensor._make(dst)


def _tensor(grad):
    return grad if isinstance(grad, Tensor) else Tensor._make(np.asarray(grad))


def _array(node, i, grad):
    """A gradient a node returned, as an ndarray (array mode)."""
    if isinstance(grad, Tensor):
        return grad.data
    _check_gradient_type(node, i, grad)
    return np.asarray(grad)


def _tensor_of(node, i, grad):
    """A gradient a node returned, as a Tensor."""
    if isinstance(grad, Tensor):
        return grad
    _check_gradient_type(node, i, grad)
    return Tensor._make(np.asarray(grad))


def _check_gradient_type(node, i, grad):
    if not isinstance(grad, (np.ndarray, np.generic)):
        raise BackwardError(
            f"{node.name()} returned {type(grad).__name__} as the gradient of input {i}; "
            "expected a Tensor or None"
        )


def _fit(node, i, grad, meta):
    """See Note [broadcasting is undone at the edge]."""
    if meta is None:
        return grad
    shape, dtype = meta
    try:
        return fit.gradient_to(grad, shape, dtype)
    except ValueError:
        raise BackwardError(
            f"{node.name()} returned a gradient of shape {grad.shape} for input {i}, "
            f"which has shape {shape}"
        ) from None
