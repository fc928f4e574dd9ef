"""torch.distributed.autograd's one-hop backward: bench_p2p's torch baseline.

Not a benchmark: ``bench_p2p.py`` imports it.  ``available`` says whether torch is there;
``start`` brings up torch's RPC (TensorPipe over TCP on 127.0.0.1, the port chosen by rank 0 and
broadcast over MPI) on every rank.  ``OneHop``'s call is one sample: rank 1 fetches rank 0's leaf
``x`` by ``rpc_sync`` inside a distributed autograd context (which records a send on rank 0 and
a recv on rank 1, as ``dist.send`` and ``dist.recv`` do) and computes ``(y * w).sum()``; rank
1's ``dist_autograd.backward`` is timed: it sends the gradient to rank 0 and returns once rank 0
has accumulated it, torch's FAST mode.  torch's backward is driven by the rank that holds the
root, so rank 0 makes no call: its RPC threads do its part while it waits idle in an
``Ibarrier`` (a rank spinning in MPI would take the core its RPC threads need).  ``stop`` shuts
RPC down on every rank.
"""

import importlib.util
import socket
import time

import _common

_LEAF = {}  # rank 0's leaf, fetched by rank 1 through _leaf


def _leaf():
    return _LEAF["x"]


def available(comm):
    """Whether torch's RPC can be imported, as rank 0 finds (collective: every rank gets its
    answer)."""
    found = None
    if comm.rank == 0:
        found = importlib.util.find_spec("torch") is not None
    return comm.bcast(found, root=0)


def start(comm):
    """Start torch RPC on every rank of ``comm`` (collective), where ``available``."""
    import torch.distributed.rpc as rpc

    port = None
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}", num_worker_threads=2
    )
    rpc.init_rpc(
        f"worker{comm.rank}", rank=comm.rank, world_size=comm.size, rpc_backend_options=options
    )


def stop():
    """Shut torch RPC down (collective: waits for every rank's outstanding work)."""
    import torch.distributed.rpc as rpc

    rpc.shutdown()


class OneHop:
    """One-hop backward samples on ``len(w)`` float64 elements between ranks 0 and 1; ``w`` is
    the same array as bench_p2p's.  Collective."""

    def __init__(self, comm, w):
        import torch

        self.torch, self.comm, self.rank = torch, comm, comm.rank
        self.w = torch.from_numpy(w)
        _LEAF["x"] = torch.ones(len(w), dtype=torch.float64, requires_grad=True)
        comm.Barrier()  # rank 0's leaf is there before rank 1 fetches it

    def __call__(self, check=False):
        """Rank 1: the backward's seconds; 0.0 elsewhere (collective)."""
        elapsed = self._drive(check) if self.rank == 1 else 0.0
        _common.release_idle(self.comm, self.rank == 1, 1e-4)
        return elapsed

    def _drive(self, check):
        import torch.distributed.autograd as dist_autograd
        import torch.distributed.rpc as rpc

        with dist_autograd.context() as context_id:
            y = rpc.rpc_sync("worker0", _leaf)
            loss = (y * self.w).sum()
            start = time.perf_counter()
            dist_autograd.backward(context_id, [loss])
            elapsed = time.perf_counter() - start
            if check:
                grads = rpc.rpc_sync("worker0", _gradients, args=(context_id,))
                assert self.torch.equal(grads, self.w), "torch one-hop: wrong gradient"
        return elapsed


def _gradients(context_id):
    import torch.distributed.autograd as dist_autograd

    return dist_autograd.get_gradients(context_id)[_LEAF["x"]]
