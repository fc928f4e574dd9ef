"""The differentiable ops, one module per family.  Each op is a ``Function`` subclass whose
forward, reverse rule (``backward``) and forward rule (``jvp``) sit together, written or declared
(``linear``, ``multilinear``, ``elementwise``: Note [rules written once] in function.py), plus
the plain function users call.  ``__all__`` is the registry the op tests are driven from."""

from .elementwise import *  # noqa: F403
from .elementwise import __all__ as _elementwise
from .linalg import *  # noqa: F403
from .linalg import __all__ as _linalg
from .movement import *  # noqa: F403
from .movement import __all__ as _movement
from .nn import *  # noqa: F403
from .nn import __all__ as _nn
from .reduce import *  # noqa: F403
from .reduce import __all__ as _reduce
from .stencil import *  # noqa: F403
from .stencil import __all__ as _stencil

__all__ = [*_elementwise, *_reduce, *_movement, *_linalg, *_nn, *_stencil]
