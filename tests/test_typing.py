"""The public API is typed (PEP 561): every hint resolves, and the package ships py.typed."""

import importlib.resources
import inspect
import typing

import pytest

import mpigrad
import mpigrad.distributed as dist
from mpigrad import nn, optim
from mpigrad.autograd import api, forward_ad, queue_callback
from mpigrad.distributed import autograd as dist_autograd

PUBLIC = [
    mpigrad.Tensor,
    *[
        getattr(mpigrad.Tensor, name)
        for name in (
            "__init__",
            "requires_grad_",
            "detach",
            "numpy",
            "item",
            "backward",
            "register_hook",
            "retain_grad",
            "register_post_accumulate_grad_hook",
            "zero_",
        )
    ],
    api.backward,
    api.grad,
    forward_ad.enter_dual_level,
    forward_ad.exit_dual_level,
    forward_ad.dual_level,
    forward_ad.make_dual,
    forward_ad.unpack_dual,
    mpigrad.tensor,
    mpigrad.zeros,
    mpigrad.ones,
    mpigrad.full,
    mpigrad.randn,
    dist.init,
    dist.destroy,
    dist.get_rank,
    dist.get_world_size,
    dist.is_initialized,
    dist.send,
    dist.isend,
    dist.recv,
    dist.irecv,
    dist.sendrecv,
    dist.all_reduce,
    dist.broadcast,
    dist.reduce,
    dist.all_gather,
    dist.gather,
    dist.scatter,
    dist.reduce_scatter,
    dist.all_to_all,
    dist.barrier,
    dist.SendRequest.wait,
    dist.RecvRequest.wait,
    dist_autograd.context,
    dist_autograd.backward,
    dist_autograd.get_gradients,
    queue_callback,
    dist.DistributedDataParallel.__init__,
    dist.DistributedDataParallel.__call__,
    dist.DistributedDataParallel.parameters,
    dist.DistributedDataParallel.named_parameters,
    dist.DistributedDataParallel.no_sync,
    *[
        getattr(nn.Module, name)
        for name in (
            "forward",
            "__call__",
            "named_parameters",
            "parameters",
            "zero_grad",
            "state_dict",
            "load_state_dict",
        )
    ],
    nn.Linear.__init__,
    nn.Linear.forward,
    nn.Sequential.__init__,
    nn.ReLU.forward,
    nn.Tanh.forward,
    nn.Sigmoid.forward,
    *[
        getattr(optim.Optimizer, name)
        for name in ("add_param_group", "step", "zero_grad", "state_dict", "load_state_dict")
    ],
    optim.SGD.__init__,
    optim.Adam.__init__,
    optim.AdamW.__init__,
]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: getattr(o, "__qualname__", repr(o)))
def test_public_hints_resolve(obj):
    hints = typing.get_type_hints(obj)
    if inspect.isclass(obj):
        assert "data" in hints
        return
    params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    missing = [p for p in params if p not in hints]
    assert not missing, f"{obj.__qualname__}: parameters without a hint: {missing}"
    assert "return" in hints, f"{obj.__qualname__} has no return hint"


def test_py_typed_is_shipped():
    assert importlib.resources.files("mpigrad").joinpath("py.typed").is_file()
