"""Communication ops, one module each; every module docstring states ``Collective:`` (who
must call it) and ``Adjoint:`` (what backward sends, and to whom)."""

from .recv import RecvRequest, irecv, recv
from .send import SendRequest, isend, send
from .sendrecv import sendrecv

__all__ = ["send", "isend", "recv", "irecv", "sendrecv", "SendRequest", "RecvRequest"]
