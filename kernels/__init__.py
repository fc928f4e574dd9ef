"""Array kernels: gradient sums in place, the stencil of ``mpigrad.stencil`` with its adjoint,
and the softmax family, cross-entropy and the sigmoid of ``mpigrad.ops`` with their gradients.

    accumulate(dst, src)          dst += src
    sum_into(dst, srcs)           for s in srcs: dst += s    # element: ((dst + s0) + s1) + ...
    scatter_add(dst, index, src)  for i in range(len(index)): dst[index[i]] += src[i]

The sums write ``dst`` in place and return it. Their arrays have ``dst``'s dtype, and the shape
of ``dst`` (``scatter_add``: ``src`` is ``(len(index), *dst.shape[1:])``); they are neither
broadcast nor cast, and a call that raises leaves ``dst`` unchanged. Results are bit for bit the
sequential Python loop's on every path, whatever the thread count (Note [deterministic chunks]
in ``cpu.py``). A call's arrays are all NumPy arrays (Numba CPU kernels, or NumPy) or all CUDA
device arrays (numba.cuda kernels, synchronized before returning); ``backend`` names the path a
call takes, and ``dispatch.py`` how it is chosen.

``correlate`` and ``correlate_transposed`` (``stencil.py``) take NumPy arrays and return a new
one. ``softmax``, ``log_softmax``, ``logsumexp``, ``cross_entropy``, ``sigmoid`` and their
``*_backward`` (``rows.py``) return a new array where their serial loops take the arrays, else
None, for the caller to compute with NumPy. ``get_num_threads``/``set_num_threads`` set the CPU
kernels' threads (``threads.py``).

Environment, read on first use: ``MPIGRAD_KERNELS`` is ``auto`` (default) or ``numpy`` (host
arrays always take NumPy); ``MPIGRAD_NUM_THREADS`` sets the CPU thread count. Numba is required;
it loads on the first host call, numba.cuda with the first device array, and kernels compile on
first use (cached on disk). This package imports nothing from mpigrad.
"""

from .dispatch import BACKENDS, accumulate, backend, scatter_add, sum_into
from .rows import (
    cross_entropy,
    cross_entropy_backward,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
)
from .stencil import correlate, correlate_transposed
from .threads import get_num_threads, set_num_threads

__all__ = [
    "BACKENDS",
    "accumulate",
    "backend",
    "correlate",
    "correlate_transposed",
    "cross_entropy",
    "cross_entropy_backward",
    "get_num_threads",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "scatter_add",
    "set_num_threads",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "sum_into",
]
