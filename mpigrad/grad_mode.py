"""Global switches of the rank-local engine: gradient recording and forward-mode AD.

``no_grad``, ``enable_grad`` and ``set_grad_enabled`` work as context managers and as
decorators, as in torch.  The state is per process (one MPI rank runs one engine).
"""

import functools

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"]


class _State:
    """Read on every op, so kept as plain class attributes."""

    grad_enabled = True
    # Forward-mode AD is suspended inside a Function's forward (its own ops must not push tangents).
    forward_ad_enabled = True
    # Set by the engine while it runs rules on plain arrays; see Note [array mode] in engine.py.
    array_mode = False


def is_grad_enabled():
    """True when ops record a graph for reverse mode."""
    return _State.grad_enabled


class set_grad_enabled:
    """Set gradient recording to ``mode`` for a ``with`` block or a decorated function.

    Called plainly, ``set_grad_enabled(False)`` also switches the mode at once, as torch's does.
    """

    def __init__(self, mode):
        self.prev = _State.grad_enabled
        self.mode = bool(mode)
        _State.grad_enabled = self.mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _State.grad_enabled = self.prev
        return False

    def __call__(self, fn):
        # Used as a decorator: undo the switch made by __init__ and apply it per call instead.
        _State.grad_enabled = self.prev
        mode = self.mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        return wrapper


class _ScopedMode:
    """Base of no_grad and enable_grad: switch on entry only, never at construction."""

    mode = True

    def __enter__(self):
        self.prev = _State.grad_enabled
        _State.grad_enabled = self.mode
        return self

    def __exit__(self, *exc):
        _State.grad_enabled = self.prev
        return False

    def __call__(self, fn):
        cls = type(self)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with cls():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_ScopedMode):
    """Ops inside run without recording a graph; their results do not require grad."""

    mode = False


class enable_grad(_ScopedMode):
    """Re-enable recording inside a ``no_grad`` region."""

    mode = True
