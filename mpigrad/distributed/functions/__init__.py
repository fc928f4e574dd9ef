"""Communication ops, one module each; every module docstring states ``Collective:`` (who
must call it) and ``Adjoint:`` (what backward sends, and to whom)."""

from .all_gather import all_gather
from .all_reduce import all_reduce
from .all_to_all import all_to_all
from .barrier import barrier
from .broadcast import broadcast
from .gather import gather
from .recv import RecvRequest, irecv, recv
from .reduce import reduce
from .reduce_scatter import reduce_scatter
from .scatter import scatter
from .send import SendRequest, isend, send
from .sendrecv import sendrecv

__all__ = [
    "send",
    "isend",
    "recv",
    "irecv",
    "sendrecv",
    "SendRequest",
    "RecvRequest",
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
    "barrier",
]
