"""``Tensor``: an ndarray with the autograd state of one rank's engine.

A Tensor holds ``data`` (a numpy array), ``requires_grad``, ``grad`` and ``grad_fn``.  Operators and
methods delegate to the functions in ``mpigrad.ops``.  Only floating-point tensors can require
grad; integer and bool tensors are data (indices, masks).  Tensors hash by identity, so they can
key dicts (``dist_autograd.get_gradients``); ``==`` compares elementwise, as in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .graph import Node

__all__ = ["Tensor", "is_differentiable"]


def is_differentiable(dtype: np.dtype) -> bool:
    return dtype.kind == "f"


class Tensor:
    data: np.ndarray
    __array_priority__ = 1000  # ndarray (op) Tensor defers to the Tensor's reflected operator

    # Defaults live on the class, so making a Tensor sets only what differs (ops make many).
    _requires_grad = False
    grad: Tensor | None = None
    grad_fn: Node | None = None
    _output_nr = 0
    _fw = None  # {dual level: tangent Tensor}, see mpigrad/dual.py
    _accumulator = None  # weakref to this leaf's AccumulateGrad node
    _hooks = None  # hooks of a leaf (a non-leaf's live on its grad_fn)
    _post_hooks = None  # a leaf's post-accumulate-grad hooks

    def __init__(self, data: ArrayLike | Tensor, requires_grad: bool = False) -> None:
        self.data = np.asarray(data.data if isinstance(data, Tensor) else data)
        if requires_grad:
            self.requires_grad_()

    @classmethod
    def _make(cls, data, grad_fn=None, output_nr=0):
        """Wrap an ndarray without copying or checking (the engine's constructor)."""
        t = object.__new__(cls)
        t.data = data
        if grad_fn is not None:
            t.grad_fn = grad_fn
            t._output_nr = output_nr
            t._requires_grad = True
        return t

    # --- attributes ---------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self.grad_fn is None)

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Make a leaf record operations on it (or stop).  Returns self."""
        if self.grad_fn is not None:
            if not requires_grad:
                raise RuntimeError(
                    f"requires_grad_(False) on a non-leaf tensor (grad_fn={self.grad_fn.name()}); "
                    "use .detach()"
                )
            return self
        if requires_grad and not is_differentiable(self.data.dtype):
            raise RuntimeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}"
            )
        self._requires_grad = bool(requires_grad)
        return self

    def detach(self) -> Tensor:
        """A new leaf sharing ``data``, cut from the graph (and from forward-mode tangents)."""
        return Tensor._make(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float | int | bool:
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and dtype != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    __hash__ = object.__hash__

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn=<{self.grad_fn.name()}>"
        elif self._requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}, dtype={self.data.dtype}{extra})"

    # --- autograd -----------------------------------------------------------------------------
    def backward(
        self,
        gradient: Tensor | ArrayLike | None = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
        inputs: Tensor | Sequence[Tensor] | None = None,
    ) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of the leaves; see ``autograd.backward``."""
        from .autograd.api import backward

        backward(self, None if gradient is None else [gradient], retain_graph, create_graph, inputs)

    def register_hook(self, hook: Callable[[Tensor], Tensor | None]) -> _HookHandle:
        """Call ``hook(grad)`` when this tensor's gradient is computed; a non-None return replaces
        the gradient.  Returns a handle with ``.remove()``."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        if self.grad_fn is None:
            if self._hooks is None:
                self._hooks = []
            hooks = self._hooks
        else:
            self.grad_fn.add_pre_hook(self._output_nr, hook)
            hooks = self.grad_fn.pre_hooks[self._output_nr]
        if hook not in hooks:
            hooks.append(hook)
        return _HookHandle(hooks, hook)

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> _HookHandle:
        """Call ``hook(self)`` after a backward pass has accumulated this leaf's gradient into
        ``.grad`` (after its ``register_hook`` hooks), as torch's: the hook may read and write
        ``.grad``; what it returns is ignored.  Only passes that write ``.grad`` run it
        (``backward``, ``inputs=`` included, not ``grad`` nor ``dist_autograd.backward``).
        Returns a handle with ``.remove()``."""
        if not self._requires_grad:
            raise RuntimeError(
                "cannot register a post-accumulate-grad hook on a tensor that does not require grad"
            )
        if self.grad_fn is not None:
            raise RuntimeError(
                "post-accumulate-grad hooks cannot be registered on non-leaf tensors "
                f"(grad_fn=<{self.grad_fn.name()}>)"
            )
        if self._post_hooks is None:
            self._post_hooks = []
        if hook not in self._post_hooks:
            self._post_hooks.append(hook)
        return _HookHandle(self._post_hooks, hook)

    def retain_grad(self) -> None:
        """Keep the gradient of this non-leaf in ``.grad`` after ``backward`` (no-op on leaves)."""
        if not self._requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        if self.grad_fn is not None:
            import weakref

            node = self.grad_fn
            if node.retained is None:
                node.retained = {}
            node.retained[self._output_nr] = weakref.ref(self)

    @property
    def retains_grad(self) -> bool:
        node = self.grad_fn
        return bool(node is not None and node.retained and self._output_nr in node.retained)

    def zero_(self) -> Tensor:
        """Fill with zeros in place.  A read-only array (a broadcast view, say) is replaced by
        fresh zeros rather than written; gradients the engine stores are writable (Note
        [gradient ownership] in engine.py), so ``x.grad.zero_()`` zeroes the ``.grad`` array."""
        if self.data.flags.writeable:
            self.data[...] = 0
        else:
            self.data = np.zeros_like(self.data)
        return self


class _HookHandle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self) -> None:
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def _reflected(fn):
    def method(self, other):
        return fn(other, self)

    method.__name__ = f"__r{fn.__name__}__"
    return method


def _compare(ufunc):
    def method(self, other):
        return Tensor._make(ufunc(self.data, other.data if isinstance(other, Tensor) else other))

    return method


from . import ops  # noqa: E402  (ops import Tensor, so they come after it)

for _name in (
    "exp",
    "log",
    "sqrt",
    "abs",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "clamp",
    "maximum",
    "minimum",
    "sum",
    "mean",
    "max",
    "min",
    "reshape",
    "transpose",
    "permute",
    "broadcast_to",
    "squeeze",
    "unsqueeze",
    "split",
    "index_select",
    "softmax",
    "log_softmax",
    "logsumexp",
    "matmul",
    "astype",
    "neg",
):
    setattr(Tensor, _name, getattr(ops, _name))
for _dunder, _fn in (
    ("add", ops.add),
    ("sub", ops.sub),
    ("mul", ops.mul),
    ("truediv", ops.div),
    ("pow", ops.pow),
    ("matmul", ops.matmul),
):
    setattr(Tensor, f"__{_dunder}__", _fn)
    setattr(Tensor, f"__r{_dunder}__", _reflected(_fn))
Tensor.__neg__ = ops.neg
Tensor.__abs__ = ops.abs
Tensor.__getitem__ = ops.getitem
Tensor.T = property(lambda self: ops.permute(self, *reversed(range(self.data.ndim))))
for _dunder, _ufunc in (
    ("lt", np.less),
    ("le", np.less_equal),
    ("gt", np.greater),
    ("ge", np.greater_equal),
    ("eq", np.equal),
    ("ne", np.not_equal),
):
    setattr(Tensor, f"__{_dunder}__", _compare(_ufunc))
