"""The gradient of a PDE misfit with respect to the initial condition, on a split domain.

Run: ``mpiexec -n 2 python examples/heat_adjoint.py`` (any number of ranks, 1 included).

The 1-D heat equation u_t = k u_xx on a periodic grid of N points is split into contiguous
blocks, one per rank, and stepped with the explicit scheme
``u[i] += r * (u[i-1] - 2 u[i] + u[i+1])`` (r = k dt / dx^2 <= 1/2), written as ``mg.stencil``
with weights (r, 1 - 2r, r). Before each step every rank
exchanges one halo cell with each neighbour by ``dist.sendrecv`` (its last cell to the right
while it receives its left halo, its first cell to the left while it receives its right halo).
After T steps the misfit is J = 0.5 * sum((u(T) - u_obs)^2) over the whole grid: each rank's root
is its own part of the sum, and mpigrad differentiates J with respect to the initial condition
u0, a leaf on each rank. Backward runs the adjoint: each sendrecv's gradient goes back the way
the halo came.

The example checks that gradient two ways, then computes a second-order quantity, and prints
the three relative errors on rank 0:

- against a central finite difference of J along a random direction, J evaluated by the same
  distributed forward without autograd (``mg.no_grad()``); J is quadratic in u0, so the
  difference is exact but for rounding;
- against the same computation on one rank: every rank rebuilds the global u0 from the shared
  seed, runs a serial solver with mpigrad's rank-local engine and compares its slice of the
  gradient (to 1e-12);
- the Hessian-vector product H v of J (here also its Gauss-Newton product, J being quadratic in
  u0): ``dist_autograd.backward(..., create_graph=True)`` records the first pass, halo messages
  included, and a second backward of <dJ/du0, v> differentiates through it across the ranks. It
  is checked against a central finite difference of the distributed gradient along v.

It exits non-zero if a check fails, and rank 0 prints "all checks passed" otherwise.
"""

import numpy as np
from mpi4py import MPI

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

N, T, R = 240, 200, 0.4  # grid points, time steps, k dt / dx^2
FD_STEP, FD_TOL, SERIAL_TOL, HVP_TOL = 1e-3, 1e-7, 1e-12, 1e-7
LEFT_TO_RIGHT, RIGHT_TO_LEFT = 0, 1  # halo tags, so that with 2 ranks the directions stay apart

comm = MPI.COMM_WORLD
dist.init(comm)
rank, size = dist.get_rank(), dist.get_world_size()
left, right = (rank - 1) % size, (rank + 1) % size
if N < size:
    raise SystemExit(f"heat_adjoint: {size} ranks, but only {N} grid points")
mine = np.array_split(np.arange(N), size)[rank]  # this rank's grid points

# Every rank draws the same global fields and keeps its slice.
rng = np.random.default_rng(2024)
x = np.arange(N) / N
u0_global = np.sin(2 * np.pi * x) + 0.5 * rng.standard_normal(N)
u_obs_global = np.exp(-(((x - 0.5) / 0.1) ** 2))
direction_global = rng.standard_normal(N)
u_obs = u_obs_global[mine]


def step(u, halo_left, halo_right):
    """One explicit step of the heat equation on ``u`` with its two halo cells: the 3-point
    stencil ``u[i] + R (u[i-1] - 2 u[i] + u[i+1])``, one compiled pass with its adjoint."""
    return mg.stencil(mg.cat([halo_left, u, halo_right]), [R, 1 - 2 * R, R])


def distributed_misfit(u0):
    """This rank's part of J after T steps of the distributed solver, starting from ``u0``."""
    u = u0
    for _ in range(T):
        halo_left = dist.sendrecv(u[-1:], dest=right, source=left, sendtag=LEFT_TO_RIGHT)
        halo_right = dist.sendrecv(u[:1], dest=left, source=right, sendtag=RIGHT_TO_LEFT)
        u = step(u, halo_left, halo_right)
    return 0.5 * ((u - u_obs) ** 2).sum()


def serial_misfit(u0):
    """J on the whole grid, on this rank alone: the halos are the periodic neighbours."""
    u = u0
    for _ in range(T):
        u = step(u, u[-1:], u[:1])
    return 0.5 * ((u - u_obs_global) ** 2).sum()


def global_misfit(u0_local):
    """J (summed over the ranks) for this rank's slice ``u0_local``, without autograd."""
    with mg.no_grad():
        return comm.allreduce(distributed_misfit(mg.tensor(u0_local)).item(), op=MPI.SUM)


def distributed_gradient(u0_local):
    """This rank's slice of dJ/du0 at ``u0_local``: each rank's root is its part of J."""
    u0 = mg.tensor(u0_local, requires_grad=True)
    with dist_autograd.context() as context_id:
        dist_autograd.backward(context_id, [distributed_misfit(u0)])
        return dist_autograd.get_gradients(context_id)[u0].data


start = MPI.Wtime()
grad = distributed_gradient(u0_global[mine])
seconds = MPI.Wtime() - start

# (a) A central finite difference of J along a random direction.
v = direction_global[mine]
predicted = comm.allreduce(float(grad @ v), op=MPI.SUM)
plus = global_misfit(u0_global[mine] + FD_STEP * v)
minus = global_misfit(u0_global[mine] - FD_STEP * v)
finite_difference = (plus - minus) / (2 * FD_STEP)
fd_error = abs(predicted - finite_difference) / abs(finite_difference)

# (b) The same gradient computed on one rank; each rank compares its slice.
u0_serial = mg.tensor(u0_global, requires_grad=True)
(grad_serial,) = mg.autograd.grad(serial_misfit(u0_serial), [u0_serial])
scale = np.max(np.abs(grad_serial.data))
serial_error = comm.allreduce(
    float(np.max(np.abs(grad - grad_serial.data[mine]))) / scale, op=MPI.MAX
)

# (c) H v: the first backward records its own graph, the second differentiates <dJ/du0, v>.
# Gradients accumulate in the context, so the second pass adds H v to the first gradient.
start = MPI.Wtime()
u0 = mg.tensor(u0_global[mine], requires_grad=True)
with dist_autograd.context() as context_id:
    dist_autograd.backward(context_id, [distributed_misfit(u0)], create_graph=True)
    first = dist_autograd.get_gradients(context_id)[u0]
    first_values = first.data.copy()
    dist_autograd.backward(context_id, [(first * mg.tensor(v)).sum()])
    hvp = dist_autograd.get_gradients(context_id)[u0].data - first_values
hvp_seconds = MPI.Wtime() - start
hvp_fd = (
    distributed_gradient(u0_global[mine] + FD_STEP * v)
    - distributed_gradient(u0_global[mine] - FD_STEP * v)
) / (2 * FD_STEP)
hvp_error = np.sqrt(
    comm.allreduce(float(np.sum((hvp - hvp_fd) ** 2)), op=MPI.SUM)
    / comm.allreduce(float(np.sum(hvp_fd**2)), op=MPI.SUM)
)

if rank == 0:
    print(
        f"{size} ranks, N={N}, T={T}: J and dJ/du0 in {seconds:.2f} s, H v in {hvp_seconds:.2f} s"
    )
    print(f"directional derivative {predicted:.12e}, finite difference {finite_difference:.12e}")
    print(f"finite-difference check: relative error {fd_error:.2e} (tolerance {FD_TOL:.0e})")
    print(f"one-rank check: relative error {serial_error:.2e} (tolerance {SERIAL_TOL:.0e})")
    print(f"Hessian-vector check: relative error {hvp_error:.2e} (tolerance {HVP_TOL:.0e})")
failures = [
    name
    for name, error, tolerance in [
        ("finite-difference", fd_error, FD_TOL),
        ("one-rank", serial_error, SERIAL_TOL),
        ("Hessian-vector", hvp_error, HVP_TOL),
    ]
    if not error <= tolerance
]
if failures:
    raise SystemExit(f"heat_adjoint: rank {rank}: the {' and '.join(failures)} check failed")
if rank == 0:
    print("all checks passed")
