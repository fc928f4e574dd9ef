"""Random computation DAGs spread over the ranks: distributed gradients equal one rank's.

Hypothesis draws a DAG of 5 to 15 ops (add, mul, sin, exp, matmul, sum, transpose) over a
few leaves, places every leaf, op and root on a rank, and the ranks run it: a value goes by
send/recv to the rank of every op (or root) that uses it on another rank. Every rank also runs
the whole DAG alone with plain mpigrad; the gradients of its leaves must agree to 1e-12 in
float64.

Every rank must draw the same examples (tests/mpi/conftest.py loads a derandomized profile
under mpiexec), and a check that fails on one rank fails on all (``_agree``), so that the ranks
stay in step through Hypothesis's replay of a failing example.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpigrad as mg
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

TOL = 1e-12
SHAPE = (3, 3)

# Every op keeps values in [-1, 1] (so exp never overflows and 1e-12 stays meaningful): arity
# and the function, on a (3, 3) matrix or a scalar, broadcasting as numpy does.
OPS = {
    "add": (2, lambda a, b: (a + b) * 0.5),
    "mul": (2, lambda a, b: a * b),
    "sin": (1, mg.sin),
    "exp": (1, lambda a: mg.exp(a) * (1 / 3)),
    "matmul": (2, lambda a, b: (a @ b) * (1 / 3)),
    "sum": (1, lambda a: a.sum() * (1 / 9)),
    "transpose": (1, lambda a: a.T),  # non-contiguous values and gradients
}
MATRIX_ONLY = ("matmul", "sum", "transpose")


@st.composite
def dags(draw, size):
    """(seed, leaves, ops, roots, resend): leaves are ranks; an op is (name, inputs, rank); a
    root is (node, coefficient, rank). Nodes are numbered leaves first, then ops."""
    rank = st.integers(0, size - 1)
    leaves = draw(st.lists(rank, min_size=1, max_size=4))
    ops, scalar = [], [False] * len(leaves)
    for _ in range(draw(st.integers(5, 15))):
        n = len(scalar)
        matrices = [i for i in range(n) if not scalar[i]]
        names = [name for name in OPS if matrices or name not in MATRIX_ONLY]
        name = draw(st.sampled_from(names))
        arity = OPS[name][0]
        pool = matrices if name in MATRIX_ONLY else list(range(n))
        inputs = tuple(draw(st.sampled_from(pool)) for _ in range(arity))
        ops.append((name, inputs, draw(rank)))
        scalar.append(name == "sum" or all(scalar[i] for i in inputs))
    n = len(scalar)
    roots = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.sampled_from([1.0, -0.5, 2.0]), rank),
            min_size=1,
            max_size=3,
        )
    )
    return draw(st.integers(0, 2**32 - 1)), leaves, ops, roots, draw(st.booleans())


def _values(seed, leaves):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, SHAPE) for _ in leaves]


def _apply(name, inputs):
    return OPS[name][1](*inputs)


def _root(value, coefficient):
    return (value.sum() if value.ndim else value) * coefficient


def _reference(seed, leaves, ops, roots):
    """The gradients of the sum of all roots for every leaf, on this rank alone (None: unused)."""
    tensors = [mg.tensor(a, requires_grad=True) for a in _values(seed, leaves)]
    nodes = list(tensors)
    for name, inputs, _ in ops:
        nodes.append(_apply(name, [nodes[i] for i in inputs]))
    total = sum(_root(nodes[node], c) for node, c, _ in roots)
    grads = mg.autograd.grad(total, tensors, allow_unused=True)
    return [None if g is None else g.data for g in grads]


def _distributed(rank, dag):
    """Run the DAG over the ranks; this rank's leaves (by index) and their gradients."""
    seed, leaves, ops, roots, resend = dag
    owner = list(leaves) + [r for _, _, r in ops]
    values = {}  # node -> its Tensor on this rank (its own, or received)
    mine = {}
    for i, (array, r) in enumerate(zip(_values(seed, leaves), leaves)):
        if r == rank:
            values[i] = mine[i] = mg.tensor(array, requires_grad=True)
    tag = 0

    def fetch(node, user_rank):
        """The value of node on user_rank, sent there from its owner (every rank calls this)."""
        nonlocal tag
        tag += 1
        if owner[node] == user_rank:
            return values.get(node)
        if rank == owner[node]:
            if resend or (node, user_rank) not in sent:
                sent.add((node, user_rank))
                dist.send(values[node], user_rank, tag=tag)
        elif rank == user_rank:
            if resend or node not in received:
                received[node] = dist.recv(owner[node], tag=tag)
            return received[node]
        return None

    sent, received = set(), {}
    with dist_autograd.context() as context_id:
        for j, (name, inputs, r) in enumerate(ops):
            args = [fetch(i, r) for i in inputs]
            if rank == r:
                values[len(leaves) + j] = _apply(name, args)
        my_roots = []
        for node, coefficient, r in roots:
            value = fetch(node, r)
            if rank == r:
                my_roots.append(_root(value, coefficient))
        dist_autograd.backward(context_id, my_roots)
        grads = dist_autograd.get_gradients(context_id)
    return mine, grads


def _agree(comm, problem):
    """Fail on every rank if any rank found a problem, naming the ranks and their problems."""
    problems = comm.allgather(problem)
    failing = {r: p for r, p in enumerate(problems) if p}
    assert not failing, "\n".join(f"rank {r}: {p}" for r, p in failing.items())


def _compare(mine, grads, expected):
    ids = {id(leaf) for leaf in mine.values()}
    if any(id(key) not in ids for key in grads):
        return "get_gradients holds tensors that are not this rank's leaves"
    for i, leaf in mine.items():
        got = next((g for key, g in grads.items() if key is leaf), None)
        if expected[i] is None:
            if got is not None and np.any(got.data):
                return f"leaf {i} is unused, but its gradient is {got.data}"
        elif got is None:
            return f"leaf {i} has no gradient"
        elif not np.allclose(got.data, expected[i], rtol=TOL, atol=TOL):
            return f"leaf {i}: gradient {got.data}, expected {expected[i]}"
    return ""


def test_random_dags_over_the_ranks_match_one_rank(comm):
    dist.init(comm)
    try:
        _check_random_dags(comm)
    finally:
        dist.destroy()


def _check_random_dags(comm):
    rank, size = comm.rank, comm.size

    @settings(max_examples=60, suppress_health_check=list(HealthCheck))
    @given(dags(size))
    def check(dag):
        seed, leaves, ops, roots, _ = dag
        expected = _reference(seed, leaves, ops, roots)
        try:
            mine, grads = _distributed(rank, dag)
            problem = _compare(mine, grads, expected)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        _agree(comm, problem)

    check()
