"""The harness of tests/mpi/conftest.py at the size it runs on: comm fixture and min_ranks.

What it does when a rank fails or hangs is proven in tests/test_mpi_harness.py, which runs
failing tests under mpiexec as a subprocess.
"""

import numpy as np
import pytest
from mpi4py import MPI


def test_comm_is_a_private_duplicate_of_world(comm):
    assert comm != MPI.COMM_WORLD
    assert MPI.Comm.Compare(comm, MPI.COMM_WORLD) == MPI.CONGRUENT


def test_ring_exchange_and_allreduce(comm):
    rank, size = comm.rank, comm.size
    dest, source = (rank + 1) % size, (rank - 1) % size

    assert comm.sendrecv(rank, dest=dest, source=source) == source

    sendbuf = np.full(4, rank, dtype=np.float64)
    recvbuf = np.empty_like(sendbuf)
    comm.Sendrecv(sendbuf, dest=dest, recvbuf=recvbuf, source=source)
    np.testing.assert_array_equal(recvbuf, np.full(4, source, dtype=np.float64))

    assert comm.allreduce(rank, op=MPI.SUM) == size * (size - 1) // 2
    total = np.empty(1)
    comm.Allreduce(np.array([float(rank)]), total, op=MPI.SUM)
    assert total[0] == size * (size - 1) / 2


@pytest.mark.min_ranks(3)
def test_min_ranks_runs_where_the_ranks_exist(comm):
    # Rank 2 exists from size 3 on; at sizes 1 and 2 the marker skips, naming both sizes.
    if comm.rank == 0:
        comm.send("to rank 2", dest=2)
    elif comm.rank == 2:
        assert comm.recv(source=0) == "to rank 2"
