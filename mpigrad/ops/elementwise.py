"""Elementwise ops, with numpy broadcasting (the engine sums broadcast gradients back)."""

import numpy as np

from .. import kernels
from ..function import Function, binary_op, elementwise, linear, multilinear, unary_op, variadic_op
from ..tensor import Tensor
from ._util import constant, data, plus

__all__ = [
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "neg",
    "exp",
    "log",
    "sqrt",
    "abs",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "maximum",
    "minimum",
    "where",
    "clamp",
    "astype",
]


@binary_op
@linear()
class Add(Function):
    """out = x + y; grad_x = grad; grad_y = grad"""

    @staticmethod
    def forward(ctx, x, y):
        return np.add(data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        need_x, need_y = ctx.needs_input_grad
        if need_x and need_y:
            # One array for two inputs: see Note [gradient ownership] in engine.py.  setflags
            # with write=False given by position costs half of the keyword (CPython 3.11, numpy 2).
            (grad if type(grad) is np.ndarray else grad.data).setflags(False)
        return grad, grad


@binary_op
@linear()
class Sub(Function):
    """out = x - y; grad_x = grad; grad_y = -grad"""

    @staticmethod
    def forward(ctx, x, y):
        return np.subtract(data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        return grad, (-grad if ctx.needs_input_grad[1] else None)


@binary_op
@multilinear()
class Mul(Function):
    """out = x * y; grad_x = grad * y; grad_y = grad * x"""

    @staticmethod
    def forward(ctx, x, y):
        # Only what backward reads: ``2.0 * t`` does not keep t alive.
        need_x, need_y = ctx.needs_input_grad or (True, True)
        ctx.save_for_backward(x if need_y else None, y if need_x else None)
        return np.multiply(data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        return (grad * y if need_x else None), (grad * x if need_y else None)


@binary_op
class Div(Function):
    """out = x / y; grad_x = grad / y; grad_y = -grad * x / y**2"""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return np.divide(data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        return (grad / y if need_x else None), (-grad * x / (y * y) if need_y else None)

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.inputs
        return plus(None if tx is None else tx / y, None if ty is None else -ty * x / (y * y))


@binary_op
class Pow(Function):
    """out = x ** y; grad_x = grad * y * x ** (y - 1); grad_y = grad * out * log(x)"""

    @staticmethod
    def forward(ctx, x, y):
        out = Tensor._make(np.asarray(np.power(data(x), data(y))))
        ctx.save_for_backward(x, y, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, out = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        grad_x = grad * y * x ** (y - 1) if need_x else None
        grad_y = grad * out * _log_base(x) if need_y else None
        return grad_x, grad_y

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.inputs
        (out,) = ctx.outputs
        return plus(
            None if tx is None else tx * y * x ** (y - 1),
            None if ty is None else ty * out * _log_base(x),
        )


def _log_base(x):
    """log of a power's base, which may be a Python number or ndarray (``2 ** t``)."""
    return log(x) if isinstance(x, Tensor) else constant(np.log(x))


@unary_op
@linear()
class Neg(Function):
    """out = -x; grad_x = -grad"""

    @staticmethod
    def forward(ctx, x):
        return np.negative(data(x))

    @staticmethod
    def backward(ctx, grad):
        return -grad


@unary_op
@elementwise(uses="out")
class Exp(Function):
    """out = exp(x); grad_x = grad * out"""

    @staticmethod
    def forward(ctx, x):
        out = np.asarray(np.exp(data(x)))
        ctx._save_output(out)
        return out

    @staticmethod
    def derivative(ctx, g, out):
        return g * out


@unary_op
@elementwise(uses="x")
class Log(Function):
    """out = log(x); grad_x = grad / x"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(data(x))

    @staticmethod
    def derivative(ctx, g, x):
        return g / x


@unary_op
@elementwise(uses="out")
class Sqrt(Function):
    """out = sqrt(x); grad_x = grad / (2 * out)"""

    @staticmethod
    def forward(ctx, x):
        out = np.asarray(np.sqrt(data(x)))
        ctx._save_output(out)
        return out

    @staticmethod
    def derivative(ctx, g, out):
        return g / (out * 2)


@unary_op
@elementwise(uses="x")
class Abs(Function):
    """out = |x|; grad_x = grad * sign(x)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.abs(data(x))

    @staticmethod
    def derivative(ctx, g, x):
        return g * constant(np.sign(data(x)))


@unary_op
@elementwise(uses="x")
class Sin(Function):
    """out = sin(x); grad_x = grad * cos(x)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.sin(data(x))

    @staticmethod
    def derivative(ctx, g, x):
        return g * cos(x)


@unary_op
@elementwise(uses="x")
class Cos(Function):
    """out = cos(x); grad_x = -grad * sin(x)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.cos(data(x))

    @staticmethod
    def derivative(ctx, g, x):
        return -g * sin(x)


@unary_op
@elementwise(uses="out")
class Tanh(Function):
    """out = tanh(x); grad_x = grad * (1 - out**2)"""

    @staticmethod
    def forward(ctx, x):
        out = np.asarray(np.tanh(data(x)))
        ctx._save_output(out)
        return out

    @staticmethod
    def derivative(ctx, g, out):
        return g * (1.0 - out * out)


@unary_op
@elementwise(uses="out")
class Sigmoid(Function):
    """out = 1 / (1 + exp(-x)); grad_x = grad * out * (1 - out)"""

    @staticmethod
    def forward(ctx, x):
        x = data(x)
        out = kernels.sigmoid(x)
        if out is None:
            out = np.asarray(np.exp(np.negative(np.logaddexp(0, np.negative(x)))))
        ctx._save_output(out)
        return out

    @staticmethod
    def derivative(ctx, g, out):
        grad_x = kernels.sigmoid_backward(out, g)  # None for Tensors
        return g * out * (1.0 - out) if grad_x is None else grad_x


@unary_op
@elementwise(uses="x")
class Relu(Function):
    """out = max(x, 0); grad_x = grad * (x > 0)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.maximum(data(x), 0)

    @staticmethod
    def derivative(ctx, g, x):
        return g * constant(np.greater(data(x), 0.0))


def _selection_weights(x, y, larger):
    """Where x wins 1, where y wins 0, ties 0.5 (the gradient of a tie is split, as in torch):
    half of (x wins) + (x wins or ties), which is 0 where either side is NaN."""
    xd, yd = data(x), data(y)
    wins, holds = (np.greater, np.greater_equal) if larger else (np.less, np.less_equal)
    w = np.add(wins(xd, yd), holds(xd, yd), dtype=np.result_type(xd, yd))
    return constant(np.multiply(w, 0.5))


class _Select(Function):
    """out = maximum or minimum(x, y); grad_x = grad * w; grad_y = grad * (1 - w)"""

    larger = True

    @classmethod
    def forward(cls, ctx, x, y):
        ctx.save_for_backward(x, y)
        return (np.maximum if cls.larger else np.minimum)(data(x), data(y))

    @classmethod
    def backward(cls, ctx, grad):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        w = _selection_weights(x, y, cls.larger)
        return (grad * w if need_x else None), (grad * (1 - w) if need_y else None)

    @classmethod
    def jvp(cls, ctx, tx, ty):
        x, y = ctx.inputs
        w = _selection_weights(x, y, cls.larger)
        return plus(None if tx is None else tx * w, None if ty is None else ty * (1 - w))


@binary_op
class Maximum(_Select):
    larger = True


@binary_op
class Minimum(_Select):
    larger = False


@variadic_op
@linear(fixed=(0,))
class Where(Function):
    """out = x where cond else y; grad_x = grad where cond; grad_y = grad where not cond"""

    @staticmethod
    def forward(ctx, cond, x, y):
        cond = data(cond)
        if type(cond) is not np.ndarray or cond.dtype != bool:
            cond = np.asarray(cond, dtype=bool)
        ctx.cond = cond
        return np.where(cond, data(x), data(y))

    @staticmethod
    def backward(ctx, grad):
        _, need_x, need_y = ctx.needs_input_grad
        if type(grad) is np.ndarray:  # array mode: no op to record
            return (
                None,
                np.where(ctx.cond, grad, 0.0) if need_x else None,
                np.where(ctx.cond, 0.0, grad) if need_y else None,
            )
        zero = np.zeros((), grad.dtype)
        return (
            None,
            where(ctx.cond, grad, zero) if need_x else None,
            where(ctx.cond, zero, grad) if need_y else None,
        )


@unary_op
@elementwise(uses="x")
class Clamp(Function):
    """out = min(max(x, lo), hi); grad_x = grad where lo <= x <= hi"""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.bounds = lo, hi
        return np.clip(data(x), lo, hi)

    @staticmethod
    def derivative(ctx, g, x):
        lo, hi = ctx.bounds
        xd = data(x)
        if hi is None:
            inside = np.greater_equal(xd, lo)
        elif lo is None:
            inside = np.less_equal(xd, hi)
        else:
            inside = np.logical_and(np.greater_equal(xd, lo), np.less_equal(xd, hi))
        return g * constant(inside)


@unary_op
@linear(fixed=(1,))
class Cast(Function):
    """out = x as dtype; grad_x = grad as x's dtype"""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.source = data(x).dtype
        return data(x).astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        if type(grad) is np.ndarray:  # array mode: no op call
            return grad.astype(ctx.source), None
        return cast(grad, ctx.source), None


add = Add.apply
sub = Sub.apply
mul = Mul.apply
div = Div.apply
pow = Pow.apply
neg = Neg.apply
exp = Exp.apply
log = Log.apply
sqrt = Sqrt.apply
abs = Abs.apply
sin = Sin.apply
cos = Cos.apply
tanh = Tanh.apply
sigmoid = Sigmoid.apply
relu = Relu.apply


def maximum(x, y):
    """Elementwise maximum; a tie sends half of the gradient to each side."""
    return Maximum.apply(x, y)


def minimum(x, y):
    """Elementwise minimum; a tie sends half of the gradient to each side."""
    return Minimum.apply(x, y)


def where(cond, x, y):
    """``x`` where ``cond`` (a bool array or Tensor, never differentiated) else ``y``."""
    return Where.apply(cond, x, y)


def clamp(x, min=None, max=None):
    """Clip ``x`` to [min, max]; bounds are scalars, or Tensors (then maximum/minimum)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = x if min is None else maximum(x, min)
        return out if max is None else minimum(out, max)
    return Clamp.apply(x, min, max)


def cast(x, dtype):
    """``x`` converted to ``dtype`` (differentiable between floating types)."""
    return Cast.apply(x, np.dtype(dtype))


astype = cast
