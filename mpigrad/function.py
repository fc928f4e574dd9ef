"""``Function``: how every op, built-in or user-defined, is defined and recorded.

An op is a ``Function`` subclass with ``forward(ctx, *args)``, ``backward(ctx, *grads)`` and
``jvp(ctx, *tangents)``.  ``forward`` returns ndarrays or Tensors; ``backward`` and ``jvp`` are
written with mpigrad's own ops, so they are differentiable themselves (``create_graph=True``,
nested dual levels).  A rule that follows from what an op is gets declared, not written (Note
[rules written once]).

``Function.apply`` wraps the outputs in Tensors and, when a graph is recorded, makes the ``ctx`` the
graph node: its class is ``<Op>Backward``, its ``next_functions`` are the inputs' gradient edges.
Gradients a rule returns may have the broadcast shape of the output: the engine sums them back
(see Note [broadcasting is undone at the edge] in engine.py); tangents likewise are broadcast to
the output's shape here.
"""

import inspect

import numpy as np

from . import fit
from .dual import _levels, set_tangent
from .grad_mode import _State
from .graph import Node, gradient_edge, next_sequence_nr
from .tensor import Tensor, is_differentiable

__all__ = [
    "Function",
    "FunctionCtx",
    "BackwardNode",
    "unary_op",
    "binary_op",
    "variadic_op",
    "linear",
    "multilinear",
    "elementwise",
]

RETAIN_GRAPH_HINT = (
    "Trying to backward through the graph a second time (or to read saved tensors after they "
    "were freed). Saved tensors are freed after backward; pass retain_graph=True to the first "
    "backward (or grad) call if you need to backward through the graph again."
)


class FunctionCtx:
    """The ``ctx`` of a Function call that records no graph."""

    needs_input_grad = ()
    materialize_grads = True
    non_differentiable = ()
    _saved = ()
    _saved_outputs = False  # whether _saved holds outputs: see BackwardNode._pack

    def save_for_backward(self, *tensors):
        """Keep tensors (inputs or outputs of forward) for ``backward``."""
        self._saved = tensors

    def _save_output(self, out):
        """Keep ``out``, the one ndarray forward returns, for ``backward``, where it is the output
        Tensor (the built-in ops' way: no Tensor made in forward only to be packed)."""
        self._saved = (out,)
        self._saved_outputs = True

    @property
    def saved_tensors(self):
        return self._saved

    def mark_non_differentiable(self, *outputs):
        """Outputs of forward that never require grad (indices, masks)."""
        self.non_differentiable = outputs

    def set_materialize_grads(self, value):
        """When True (the default) backward gets zeros, not None, for outputs without gradient."""
        self.materialize_grads = bool(value)


class _SavedOutput:
    """An output saved for backward, kept without its Tensor (see BackwardNode._pack)."""

    __slots__ = ("data", "output_nr", "requires_grad", "fw")

    def __init__(self, tensor, output_nr):
        self.data, self.output_nr = tensor.data, output_nr
        self.requires_grad, self.fw = tensor._requires_grad, tensor._fw

    def unpack(self, node):
        t = Tensor._make(self.data, node if self.requires_grad else None, self.output_nr)
        t._fw = self.fw  # the output's tangents, shared: forward-over-reverse needs them
        return t


class BackwardNode(FunctionCtx, Node):
    """The ctx of a recorded Function call, and its node in the backward graph."""

    _forward_cls = None
    takes_arrays = False  # the op's Function.takes_arrays, copied here for the engine
    released = False

    def _pack(self, outputs):
        # Outputs are stored without the Tensor (which points back here) to avoid a cycle;
        # saved_tensors rebuilds them with this node as grad_fn and the output's tangents.  An
        # output is saved as its Tensor, or as its array by ``_save_output`` (which sets
        # ``_saved_outputs``; once packed, it says whether there are entries to rebuild).
        to_save = self._saved
        if not to_save:
            return
        first = outputs[0]
        if self._saved_outputs or (len(to_save) == 1 and to_save[0] is first):
            self._saved = (_SavedOutput(first, 0),)
            self._saved_outputs = True
            return
        packed = list(to_save)
        for i, t in enumerate(to_save):
            for nr, o in enumerate(outputs):
                if o is t:
                    packed[i] = _SavedOutput(t, nr)
                    self._saved_outputs = True
                    break
        self._saved = tuple(packed)

    @property
    def saved_tensors(self):
        if self.released:
            raise RuntimeError(f"{self.name()}: {RETAIN_GRAPH_HINT}")
        if _State.array_mode:
            if len(self._saved) == 1:
                s = self._saved[0]
                return (s.data if type(s) is Tensor or type(s) is _SavedOutput else s,)
            return tuple(
                [s.data if type(s) is Tensor or type(s) is _SavedOutput else s for s in self._saved]
            )
        if not self._saved_outputs:
            return self._saved
        return tuple([s.unpack(self) if type(s) is _SavedOutput else s for s in self._saved])

    def release(self):
        self._saved = ()
        self.released = True

    def apply(self, grads):
        if self.released:
            raise RuntimeError(RETAIN_GRAPH_HINT)
        cls = self._forward_cls
        if len(grads) == 1:
            if grads[0] is None:
                return (None,) * len(self.next_functions)
            if self.takes_arrays:  # a rule under the built-in contract: trusted, no checks
                result = cls.backward(self, grads[0])
                return result if type(result) is tuple else (result,)
        elif all(g is None for g in grads):
            return (None,) * len(self.next_functions)
        elif self.materialize_grads:
            grads = [
                Tensor._make(np.zeros(shape, dtype)) if g is None else g
                for g, (shape, dtype) in zip(grads, self.output_meta)
            ]
        result = cls.backward(self, *grads)
        if not isinstance(result, tuple):
            result = (result,)
        n = len(self.next_functions)
        if len(result) != n and not (len(result) > n and all(r is None for r in result[n:])):
            raise RuntimeError(
                f"{self.name()} returned {len(result)} gradients, expected {n} "
                "(one per argument of forward)"
            )
        return result[:n]


class Function:
    """Base of every op.  Subclass it and call ``YourFunction.apply(*args)``.

    - ``forward(ctx, *args)``: compute the outputs (ndarrays or Tensors; a tuple for several).
      Use ``ctx.save_for_backward``, ``ctx.mark_non_differentiable`` and plain ctx attributes.
    - ``backward(ctx, *grads)``: one gradient per output in, one per argument of forward out
      (None for non-tensor arguments or where ``ctx.needs_input_grad[i]`` is False).
    - ``jvp(ctx, *tangents)``: one tangent per argument in (None where it has none), one per output
      out.  ``ctx.inputs`` and ``ctx.outputs`` hold the primals (see Note [nested tangents]).

    The rules are static methods, or class methods where a family of ops shares them and reads
    what differs from class attributes: ``cls`` is then the op called (``Maximum`` and
    ``Minimum`` share ``_Select``'s rules, which read ``cls.larger``).

    ``takes_arrays`` (False unless a class sets it; not inherited, as a subclass is a new op)
    declares the contract of the built-in ops, under which an op is recorded and run faster:

    - ``forward`` computes on ndarrays alone (it reads ``.data`` and applies no mpigrad op to
      its Tensor arguments), so it runs as it is called, where a user's forward runs with the
      grad and forward-AD modes off;
    - ``backward`` accepts ndarrays for Tensors: in array mode (Note [array mode] in engine.py)
      it gets arrays, its ``ctx.saved_tensors`` are arrays and the ops it applies return arrays;
    - ``backward`` returns one gradient per input, each in the input's shape and dtype or the
      output's, and keeps Note [gradient ownership] in engine.py; the engine trusts it and
      checks none of this.

    ``unary_op`` and ``binary_op`` set it; a built-in op they do not fit sets it in its body.
    """

    takes_arrays = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.takes_arrays = cls.__dict__.get("takes_arrays", False)
        cls._backward_cls = type(
            f"{cls.__name__}Backward",
            (BackwardNode,),
            {
                "_forward_cls": cls,
                "takes_arrays": cls.takes_arrays,
            },
        )
        if getattr(cls.apply, "short_path_of", cls) is not cls:
            # A subclass of a decorated op: the short path is bound to its base's forward.
            cls.apply = Function.__dict__["apply"]

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("Function subclasses must define forward")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"{ctx._forward_cls.__name__} does not define backward (no reverse-mode rule)"
        )

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args):
        if not _State.grad_enabled and not _levels:
            # Nothing to record or push (backward rules run here): forward and wrap only.
            return _unrecorded(cls.forward(FunctionCtx(), *args), args)
        record, needs = False, None
        if _State.grad_enabled:
            needs = tuple([isinstance(a, Tensor) and a._requires_grad for a in args])
            record = True in needs
        levels = _tangent_levels(args) if _levels and _State.forward_ad_enabled else None
        if record:
            ctx = cls._backward_cls()
            ctx.needs_input_grad = needs
        else:
            ctx = FunctionCtx()
        if cls.takes_arrays:
            raw = cls.forward(ctx, *args)
        else:
            prev_grad, prev_fw = _State.grad_enabled, _State.forward_ad_enabled
            _State.grad_enabled = _State.forward_ad_enabled = False
            try:
                raw = cls.forward(ctx, *args)
            finally:
                _State.grad_enabled, _State.forward_ad_enabled = prev_grad, prev_fw
        return _outputs(cls, ctx, args, raw, record, levels)


# Note [short record path]: recording an op is most of its cost on small tensors.  The common
# built-in ops are decorated with ``unary_op``, ``binary_op`` or ``variadic_op``, which replace
# their ``apply``
# with one that does the usual case (grad mode on, no dual level open, an input that requires
# grad, one array out) in a few lines, and a call that records nothing (a rule in the backward
# pass) in one; an open dual level goes to the general ``Function.apply``.  What they build is
# what ``Function.apply`` builds, with the same helper (``_edge``).  They are for ops under the
# built-in contract (``Function.takes_arrays``), which they declare: their forward computes on
# arrays, so it needs no switch of the grad and forward-AD modes.


def unary_op(cls):
    """Class decorator: ``cls.apply(x, *constants)`` takes the short record path; for an op
    whose first argument is its only possible Tensor (the others are axes, shapes, indices).
    Declares ``cls.takes_arrays``."""
    _declare_takes_arrays(cls)
    node_cls, forward, apply = cls._backward_cls, cls.forward, cls.apply

    def op(x, *constants):
        if _levels:
            return apply(x, *constants)
        if isinstance(x, Tensor) and x._requires_grad and _State.grad_enabled:
            ctx = _new(node_cls)
            ctx.sequence_nr = next_sequence_nr()
            ctx.needs_input_grad = _FIRST_ONLY[len(constants)]
            raw, made = forward(ctx, x, *constants), None
            if type(raw) is not np.ndarray:
                array = _made_array(raw, x)
                if array is None:
                    return _outputs(cls, ctx, (x, *constants), raw, True, None)
                made, raw = (raw if type(raw) is Tensor else None), array
            edge, meta = _edge(x, raw)
            ctx.next_functions = (edge,) + _NO_EDGES[len(constants)]
            if meta is not None:
                ctx.input_meta = (meta,)
            return _recorded(ctx, raw, meta is None, made)
        return _unrecorded(forward(FunctionCtx(), x, *constants), (x, *constants))

    op.short_path_of = cls
    cls.apply = staticmethod(op)
    return cls


def binary_op(cls):
    """Class decorator: ``cls.apply(x, y)`` takes the short record path; for an op of two
    arguments, either of which may be a Tensor.  Declares ``cls.takes_arrays``."""
    _declare_takes_arrays(cls)
    node_cls, forward, apply = cls._backward_cls, cls.forward, cls.apply

    def op(x, y):
        if _levels:
            return apply(x, y)
        if _State.grad_enabled:
            need_x = isinstance(x, Tensor) and x._requires_grad
            need_y = isinstance(y, Tensor) and y._requires_grad
            if need_x or need_y:
                ctx = _new(node_cls)
                ctx.sequence_nr = next_sequence_nr()
                ctx.needs_input_grad = _NEEDS[need_x][need_y]
                raw, made = forward(ctx, x, y), None
                if type(raw) is not np.ndarray:
                    array = _made_array(raw, x, y)
                    if array is None:
                        return _outputs(cls, ctx, (x, y), raw, True, None)
                    made, raw = (raw if type(raw) is Tensor else None), array
                edge_x, meta_x = _edge(x, raw) if need_x else _NO_INPUT
                edge_y, meta_y = _edge(y, raw) if need_y else _NO_INPUT
                ctx.next_functions = (edge_x, edge_y)
                if meta_x is not None or meta_y is not None:
                    ctx.input_meta = (meta_x, meta_y)
                return _recorded(ctx, raw, (meta_x if need_x else meta_y) is None, made)
        return _unrecorded(forward(FunctionCtx(), x, y), (x, y))

    op.short_path_of = cls
    cls.apply = staticmethod(op)
    return cls


def variadic_op(cls):
    """Class decorator: ``cls.apply(*args)`` takes the short record path; for an op of any
    number of arguments, any of which may be a Tensor (``where``, ``cat``, ``stack``).
    Declares ``cls.takes_arrays``."""
    _declare_takes_arrays(cls)
    node_cls, forward, apply = cls._backward_cls, cls.forward, cls.apply

    def op(*args):
        if _levels:
            return apply(*args)
        if _State.grad_enabled:
            needs = tuple([isinstance(a, Tensor) and a._requires_grad for a in args])
            if True in needs:
                ctx = _new(node_cls)
                ctx.sequence_nr = next_sequence_nr()
                ctx.needs_input_grad = needs
                raw = forward(ctx, *args)
                if type(raw) is not np.ndarray:
                    return _outputs(cls, ctx, args, raw, True, None)
                _record_inputs(ctx, args, needs, raw)
                return _recorded(ctx, raw)
        return _unrecorded(forward(FunctionCtx(), *args), args)

    op.short_path_of = cls
    cls.apply = staticmethod(op)
    return cls


def _made_array(raw, *args):
    """The array of what a forward on the short record path returned other than an ndarray: a
    0-d result (a numpy scalar) as an array, or the data of a Tensor it made, its only output
    (saved for backward, say); None for anything else (several outputs, an input returned),
    which the general path wraps."""
    if type(raw) is Tensor:
        for a in args:
            if raw is a:
                return None
        return raw.data if type(raw.data) is np.ndarray else None
    if isinstance(raw, np.generic):
        return np.asarray(raw)
    return None


def _declare_takes_arrays(cls):
    cls.takes_arrays = cls._backward_cls.takes_arrays = True


# Note [rules written once]: a linear op's forward rule is the op itself, applied to the
# tangents; a unary elementwise op's two rules multiply by one derivative, the gradient
# (backward) or the tangent (jvp).  The class decorators below write those rules from what the
# op declares, as HIPS autograd's ``def_linear`` and ``defjvp`` do for numpy's functions.  An
# argument listed in ``fixed`` (an axis, a shape, an index, a dtype, a mask) is a parameter of
# the map, passed to it unchanged; every other argument is an operand.


def linear(fixed=()):
    """Class decorator: the op is linear in its operands taken together, ``f(x + t) = f(x) +
    f(t)`` (movement, sums, add): its jvp is the op applied to the tangents, zeros standing for
    an operand that has none."""

    def jvp(cls, ctx, *tangents):
        dtype = ctx.outputs[0].data.dtype
        return cls.apply(
            *[
                a if i in fixed else _zeros(a, dtype) if t is None else t
                for i, (a, t) in enumerate(zip(ctx.inputs, tangents))
            ]
        )

    return _with_jvp(jvp)


def multilinear(fixed=()):
    """Class decorator: the op is linear in each operand, the others held (a product, a matrix
    product, a stencil with weights): its jvp is the sum, over the operands with a tangent, of
    the op with that operand replaced by its tangent (the product rule)."""

    def jvp(cls, ctx, *tangents):
        total = None
        for i, t in enumerate(tangents):
            if t is not None and i not in fixed:
                term = cls.apply(*ctx.inputs[:i], t, *ctx.inputs[i + 1 :])
                total = term if total is None else total + term
        return total

    return _with_jvp(jvp)


def _with_jvp(jvp):
    def decorate(cls):
        cls.jvp = classmethod(jvp)
        return cls

    return decorate


def _zeros(value, dtype):
    """The zero tangent of an operand: read-only zeros of its shape."""
    shape = np.shape(value.data if isinstance(value, Tensor) else value)
    return Tensor._make(np.broadcast_to(np.zeros((), dtype), shape))


def elementwise(uses):
    """Class decorator for a unary elementwise op ``out = f(x, *constants)`` that states its
    derivative once: ``derivative(ctx, g, v)`` returns ``g * f'(x)``, written in terms of
    ``v``, the input x (``uses="x"``) or the output (``uses="out"``), which forward saves
    (``ctx.save_for_backward(v)``).  Backward is ``derivative(ctx, grad, v)`` (None for the
    constants), jvp ``derivative(ctx, t, v)``; both are bound to this class's derivative."""
    if uses not in ("x", "out"):
        raise ValueError(f'elementwise: uses must be "x" or "out", got {uses!r}')

    def decorate(cls):
        derivative = cls.derivative
        # Bound here, not looked up per call, as backward runs once per node of the pass.
        parameters = inspect.signature(cls.forward).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            raise TypeError(f"elementwise: {cls.__name__}.forward must name its arguments")
        constants = (None,) * (len(parameters) - 2)  # all but ctx and x

        def backward(ctx, grad):
            (v,) = ctx.saved_tensors
            grad_x = derivative(ctx, grad, v)
            return (grad_x, *constants) if constants else grad_x

        def jvp(ctx, t, *_):
            return derivative(ctx, t, (ctx.inputs if uses == "x" else ctx.outputs)[0])

        cls.backward, cls.jvp = staticmethod(backward), staticmethod(jvp)
        return cls

    return decorate


def _unrecorded(raw, args):
    """What a call that records nothing and pushes no tangent returns for ``forward``'s ``raw``:
    arrays in array mode (see Note [array mode] in engine.py), else Tensors."""
    if type(raw) is np.ndarray:
        return raw if _State.array_mode else Tensor._make(raw)
    if _State.array_mode:
        return tuple([_array(r) for r in raw]) if isinstance(raw, tuple) else _array(raw)
    if isinstance(raw, tuple):
        return tuple([_as_output(r, args) for r in raw])
    return _as_output(raw, args)


def _outputs(cls, ctx, args, raw, record, levels):
    """Wrap what ``forward`` returned and, if ``record``, link the outputs to ``ctx``."""
    if type(raw) is np.ndarray and not levels:
        # The common case, kept short: one array out, no tangents.  The output did not exist
        # while forward ran, so it cannot be among the saved tensors.
        if record:
            _record_inputs(ctx, args, ctx.needs_input_grad, raw if cls.takes_arrays else None)
            return _recorded(ctx, raw)
        return Tensor._make(raw)
    multiple = isinstance(raw, tuple)
    if type(raw) is np.ndarray:
        outputs = (Tensor._make(raw),)
    elif multiple:
        outputs = tuple([_as_output(r, args) for r in raw])
    else:
        outputs = (_as_output(raw, args),)
    if record:
        _record(ctx, args, outputs)
    if levels:
        _push_tangents(cls, ctx, args, outputs, levels)
    if record:
        ctx._pack(outputs)
    return outputs if multiple else outputs[0]


def _recorded(ctx, raw, floating=False, made=None):
    """The Tensor of ``raw``, the only output of the recorded call ``ctx``: ``made`` (not None)
    where forward made it (and may have saved it: it is packed, see ``BackwardNode._pack``),
    else a new one.  ``floating``: the caller knows that ``raw`` is floating-point, as it has
    the dtype of an input that requires grad (reading ``raw.dtype.kind`` is a visible share of
    the short record path's cost)."""
    out = _new(Tensor) if made is None else made
    out.data = raw
    if (floating or raw.dtype.kind == "f") and not ctx.non_differentiable:
        out.grad_fn = ctx
        out._requires_grad = True
    if made is not None:
        ctx._pack((out,))
    elif ctx._saved_outputs:  # forward saved its output array (_save_output)
        ctx._saved = (_SavedOutput(out, 0),)
    return out


def _array(value):
    return value.data if isinstance(value, Tensor) else np.asarray(value)


def _as_output(value, args):
    if isinstance(value, Tensor):
        if any(value is a for a in args):  # forward returned an input: the output gets its own
            return Tensor._make(value.data)
        return value
    return Tensor._make(np.asarray(value))


_NO_EDGE = (None, 0)
_NO_INPUT = (_NO_EDGE, None)  # what _edge gives for an argument that needs no gradient
_NO_EDGES = [(_NO_EDGE,) * n for n in range(8)]
_FIRST_ONLY = [(True,) + (False,) * n for n in range(8)]
_NEEDS = {x: {y: (x, y) for y in (False, True)} for x in (False, True)}
_new = object.__new__


def _edge(tensor, out=None):
    """The edge to ``tensor``'s gradient, and ``tensor``'s entry in ``input_meta``: its
    ``(shape, dtype)``, or None when ``out`` (the output array of an op with ``takes_arrays``)
    has the same, as such an op's rules return gradients in the output's shape and dtype, so the
    engine has nothing to undo there (see Note [broadcasting is undone at the edge])."""
    fn = tensor.grad_fn
    edge = (fn, tensor._output_nr) if fn is not None else gradient_edge(tensor)
    d = tensor.data
    if out is not None and d.shape == out.shape and d.dtype == out.dtype:
        return edge, None
    return edge, (d.shape, d.dtype)


def _record_inputs(ctx, args, needs, out=None):
    """Set the node's edges to its inputs' gradients and its ``input_meta`` (see ``_edge``; None
    for the whole when no entry is set)."""
    edges, metas = [_NO_EDGE] * len(args), None
    for i, need in enumerate(needs):
        if need:
            edges[i], meta = _edge(args[i], out)
            if meta is not None:
                if metas is None:
                    metas = [None] * len(args)
                metas[i] = meta
    ctx.next_functions = tuple(edges)
    ctx.input_meta = None if metas is None else tuple(metas)


def _record(ctx, args, outputs):
    _record_inputs(ctx, args, ctx.needs_input_grad)
    if len(outputs) > 1:  # one output keeps Node's default: only the count is read then
        ctx.output_meta = tuple([(o.data.shape, o.data.dtype) for o in outputs])
    frozen = ctx.non_differentiable
    for nr, out in enumerate(outputs):
        if out.data.dtype.kind == "f" and not (frozen and any(out is f for f in frozen)):
            out.grad_fn = ctx
            out._output_nr = nr
            out._requires_grad = True


def _tangent_levels(args):
    levels = set()
    for a in args:
        if isinstance(a, Tensor) and a._fw:
            levels.update(a._fw)
    levels.intersection_update(_levels)
    return sorted(levels)


def _push_tangents(cls, ctx, args, outputs, levels):
    """Set each output's tangent at every level the inputs carry; see Note [nested tangents]."""
    if cls.jvp is Function.jvp:
        raise NotImplementedError(f"{cls.__name__} does not define jvp (no forward-mode rule)")
    for level in levels:
        tangents = [a._fw.get(level) if isinstance(a, Tensor) and a._fw else None for a in args]
        if all(t is None for t in tangents):
            continue
        ctx.inputs = tuple(strip_level(a, level) for a in args)
        if len(levels) == 1:
            ctx.outputs = outputs  # no other level: the outputs carry no tangent yet
        else:
            # The rule needs the outputs with every level but this one: recompute them from
            # the stripped inputs (fewer levels, so the recursion ends).
            again = cls.apply(*ctx.inputs)
            ctx.outputs = again if isinstance(again, tuple) else (again,)
        result = cls.jvp(ctx, *tangents)
        if not isinstance(result, tuple):
            result = (result,)
        if len(result) != len(outputs):
            raise RuntimeError(
                f"{cls.__name__}.jvp returned {len(result)} tangents for {len(outputs)} outputs"
            )
        frozen = ctx.non_differentiable
        for out, tangent in zip(outputs, result):
            if tangent is None or not is_differentiable(out.data.dtype):
                continue
            if frozen and any(out is f for f in frozen):
                continue
            tangent = tangent if isinstance(tangent, Tensor) else Tensor._make(np.asarray(tangent))
            set_tangent(out, level, fit.tangent_to(tangent, out.data.shape, out.data.dtype))
    ctx.inputs = ctx.outputs = None


def strip_level(value, level):
    """``value`` without its tangent at ``level``, in itself and in the tangents it carries
    at other levels (a differentiable alias; ``value`` itself when there is nothing to strip)."""
    if not isinstance(value, Tensor) or not value._fw:
        return value
    if level not in value._fw and not any(t._fw for t in value._fw.values()):
        return value
    prev = _State.forward_ad_enabled
    _State.forward_ad_enabled = False
    try:
        out = fit.alias(value)
    finally:
        _State.forward_ad_enabled = prev
    for k, t in value._fw.items():
        if k != level:
            set_tangent(out, k, strip_level(t, level))
    return out
