"""Random programs over the ranks: distributed derivatives equal one process's.

Hypothesis draws a program of 5 to 15 steps over a few leaves. A step is a local op (add, mul,
sin, exp, matmul, sum, transpose) on one rank, or a collective that every rank calls with an
input of its own (all_reduce with sum, avg, max or prod, broadcast, all_gather), whose result
one drawn rank keeps: the other ranks drop theirs, so the output is unused there. Every leaf,
op, collective result and root is placed on a rank, and a value goes by send/recv to every
rank that uses it. Every rank also runs the program as one process with plain mpigrad, each
collective replaced by the same function of all its inputs, and the two must agree in float64:

- gradients: ``dist_autograd.backward`` against ``mpigrad.autograd.grad``, to 1e-12;
- tangents: each leaf carries a tangent (forward mode, no context) through send, recv and the
  collectives; the sums over all ranks of the roots' values and tangents against the value and
  tangent of the sum of the roots on one process, to 1e-12;
- second-order tangents: the same with two nested dual levels (a direction v outside the
  tangent), so that f''[v, tangent] travels too, to 1e-10;
- Hessian-vector products: in one context a first backward with ``create_graph=True``, then a
  second of <first gradients, v> over this rank's leaves (accumulated on top of the first);
  against grad of <grad, v> on one process, to 1e-10.

Values are random floats, so a max ties only where two ranks pass the same node; both sides
then share the gradient and tangent evenly among the tied inputs.

Every rank must draw the same examples (tests/mpi/conftest.py loads a derandomized profile
under mpiexec), and a check that fails on one rank fails on all (``_agree``), so that the ranks
stay in step through Hypothesis's replay of a failing example.
"""

import contextlib
import functools
import operator

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpigrad as mg
import mpigrad.autograd.forward_ad as fwAD
import mpigrad.distributed as dist
import mpigrad.distributed.autograd as dist_autograd

TOL = 1e-12
SECOND_ORDER_TOL = 1e-10
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
# A collective step's name is (kind, argument): the all_reduce op, the broadcast's src (drawn
# with the step), or None.
COLLECTIVES = [("all_reduce", op) for op in ("sum", "avg", "max", "prod")]
COLLECTIVES += [("broadcast", None), ("all_gather", None)]


@st.composite
def programs(draw, size):
    """(seed, leaves, steps, roots, resend): leaves are ranks; a step is (name, inputs, rank):
    an op of OPS with its inputs, or a collective (kind, argument) with one input per rank
    (index: the rank that passes it), its result kept on rank; a root is (node, coefficient,
    rank). Nodes are numbered leaves first, then steps."""
    rank = st.integers(0, size - 1)
    leaves = draw(st.lists(rank, min_size=1, max_size=4))
    steps, scalar = [], [False] * len(leaves)
    for _ in range(draw(st.integers(5, 15))):
        n = len(scalar)
        matrices = [i for i in range(n) if not scalar[i]]
        names = [name for name in OPS if matrices or name not in MATRIX_ONLY]
        name = draw(st.sampled_from(names + COLLECTIVES))
        if name in COLLECTIVES:
            name = ("broadcast", draw(rank)) if name[0] == "broadcast" else name
            first = draw(st.integers(0, n - 1))
            alike = [i for i in range(n) if scalar[i] == scalar[first]]
            inputs = (first, *(draw(st.sampled_from(alike)) for _ in range(size - 1)))
            scalar.append(scalar[first])
        else:
            pool = matrices if name in MATRIX_ONLY else list(range(n))
            inputs = tuple(draw(st.sampled_from(pool)) for _ in range(OPS[name][0]))
            scalar.append(name == "sum" or all(scalar[i] for i in inputs))
        steps.append((name, inputs, draw(rank)))
    n = len(scalar)
    roots = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.sampled_from([1.0, -0.5, 2.0]), rank),
            min_size=1,
            max_size=3,
        )
    )
    return draw(st.integers(0, 2**32 - 1)), leaves, steps, roots, draw(st.booleans())


def _arrays(seed, leaves):
    """Per leaf: its value, its tangent and its direction v for the Hessian-vector product."""
    return np.random.default_rng(seed).uniform(-1, 1, (3, len(leaves), *SHAPE))


def _combine(pieces):
    """all_gather's pieces made one value in [-1, 1]: the first times their mean."""
    return pieces[0] * (functools.reduce(operator.add, pieces) * (1 / len(pieces)))


def _collective(name, x, size):
    """This rank's result of the collective step ``name`` given x (every rank calls it)."""
    kind, argument = name
    if kind == "broadcast":
        return dist.broadcast(x, argument)
    if kind == "all_gather":
        return _combine(dist.all_gather(x))
    out = dist.all_reduce(x, argument)
    return out * (1 / size) if argument == "sum" else out


def _collective_on_one_process(name, xs):
    """The result of the collective step ``name`` given every rank's input xs, on one process."""
    kind, argument = name
    if kind == "broadcast":
        return xs[argument]
    if kind == "all_gather":
        return _combine(xs)
    if argument == "max":
        return mg.stack(xs).max(axis=0)
    if argument == "prod":
        return functools.reduce(operator.mul, xs)
    return functools.reduce(operator.add, xs) * (1 / len(xs))  # sum over size, and avg


def _root(value, coefficient):
    return (value.sum() if value.ndim else value) * coefficient


def _run(program, leaves_here, rank=None, size=1):
    """This rank's roots of the program; rank None: one process runs every rank's part.

    leaves_here: {leaf index: Tensor} of the leaves on this rank (every leaf on one process).
    Every rank calls this, and they send, receive and call collectives in one order."""
    _, leaves, steps, roots, resend = program
    owner = list(leaves) + [r for _, _, r in steps]
    values = dict(leaves_here)  # node -> its Tensor on this rank (its own, or received)
    sent, received = set(), {}
    tag = 0

    def fetch(node, user_rank):
        """The value of node on user_rank, sent there from its owner (every rank calls this)."""
        nonlocal tag
        tag += 1
        if rank is None or owner[node] == user_rank:
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

    for j, (name, inputs, r) in enumerate(steps):
        node = len(leaves) + j
        if name in OPS:
            args = [fetch(i, r) for i in inputs]
            if rank in (None, r):
                values[node] = OPS[name][1](*args)
        elif rank is None:
            values[node] = _collective_on_one_process(name, [values[i] for i in inputs])
        else:
            args = [fetch(i, user_rank) for user_rank, i in enumerate(inputs)]
            out = _collective(name, args[rank], size)
            if rank == r:
                values[node] = out
    my_roots = []
    for node, coefficient, r in roots:
        value = fetch(node, r)
        if rank in (None, r):
            my_roots.append(_root(value, coefficient))
    return my_roots


def _agree(comm, problem):
    """Fail on every rank if any rank found a problem, naming the ranks and their problems."""
    problems = comm.allgather(problem)
    failing = {r: p for r, p in enumerate(problems) if p}
    assert not failing, "\n".join(f"rank {r}: {p}" for r, p in failing.items())


def _for_random_programs(comm, problem, max_examples):
    """Check problem(program, comm) (a text: what is wrong on this rank, or "") on every rank
    for random programs; an exception is a problem too."""
    dist.init(comm)
    try:

        @settings(max_examples=max_examples, suppress_health_check=list(HealthCheck))
        @given(programs(comm.size))
        def check(program):
            try:
                found = problem(program, comm)
            except Exception as exc:
                found = f"{type(exc).__name__}: {exc}"
            _agree(comm, found)

        check()
    finally:
        dist.destroy()


def _my_leaves(program, rank, make):
    """{leaf index: make(index)} for the leaves on rank (every leaf where rank is None)."""
    return {i: make(i) for i, r in enumerate(program[1]) if rank is None or r == rank}


def _leaves_requiring_grad(program, values, rank):
    return _my_leaves(program, rank, lambda i: mg.tensor(values[i], requires_grad=True))


def _compare(mine, got, expected, tol):
    """What differs between got ({leaf Tensor: array}, this rank's) and expected (per leaf index:
    an array, or None where the derivative is zero for want of a path), or ""."""
    ids = {id(leaf) for leaf in mine.values()}
    if any(id(key) not in ids for key in got):
        return "get_gradients holds tensors that are not this rank's leaves"
    for i, leaf in mine.items():
        value = next((g for key, g in got.items() if key is leaf), None)
        if expected[i] is None:
            if value is not None and np.any(value):
                return f"leaf {i}: {value}, expected none (no path from it to the roots)"
        elif value is None:
            return f"leaf {i} has no gradient"
        elif not np.allclose(value, expected[i], rtol=tol, atol=tol):
            return f"leaf {i}: {value}, expected {expected[i]}"
    return ""


def _data(tensors):
    return [None if t is None else t.data for t in tensors]


def _gradient_problem(program, comm):
    values = _arrays(program[0], program[1])[0]
    leaves = _leaves_requiring_grad(program, values, None)
    total = sum(_run(program, leaves))
    expected = _data(mg.autograd.grad(total, list(leaves.values()), allow_unused=True))

    mine = _leaves_requiring_grad(program, values, comm.rank)
    with dist_autograd.context() as context_id:
        roots = _run(program, mine, comm.rank, comm.size)
        dist_autograd.backward(context_id, roots)
        grads = dist_autograd.get_gradients(context_id)
    return _compare(mine, {leaf: g.data for leaf, g in grads.items()}, expected, TOL)


def _dual_leaves(program, rank, arrays, levels):
    """This rank's leaves carrying their tangent at the innermost of levels (outermost first)
    and their direction v at the level outside it, if any."""
    values = arrays[0]

    def dual(i):
        x = mg.tensor(values[i])
        for level, tangents in zip(reversed(levels), arrays[1:]):
            x = fwAD.make_dual(x, mg.tensor(tangents[i]), level=level)
        return x

    return _my_leaves(program, rank, dual)


def _derivatives(roots, levels):
    """The sum over roots of their values, of their tangents at the outermost of levels, and of
    those tangents' tangents at the next level in (0 where none): with one level f and
    f'[tangent], with two f, f'[v] and f''[v, tangent] (see _dual_leaves)."""
    totals = np.zeros(1 + len(levels))
    for root in roots:
        totals[0] += float(root.data)
        for k, level in enumerate(levels, 1):
            root = fwAD.unpack_dual(root, level=level).tangent
            if root is None:
                break
            totals[k] += float(root.data)
    return totals


def _tangent_problem(program, comm, depth):
    arrays = _arrays(program[0], program[1])
    with contextlib.ExitStack() as stack:
        levels = [stack.enter_context(fwAD.dual_level()) for _ in range(depth)]
        expected = _derivatives(
            [sum(_run(program, _dual_leaves(program, None, arrays, levels)))], levels
        )
        mine = _dual_leaves(program, comm.rank, arrays, levels)
        got = comm.allreduce(_derivatives(_run(program, mine, comm.rank, comm.size), levels))
    tols = [TOL, TOL, SECOND_ORDER_TOL][: 1 + depth]
    if not all(np.isclose(g, e, rtol=tol, atol=tol) for g, e, tol in zip(got, expected, tols)):
        return f"the roots' values and tangents sum to {got}, expected {expected}"
    return ""


def _inner(gradients, directions):
    """The terms of <gradients, directions> (a dict by leaf index) that carry a graph."""
    return [
        (g * mg.tensor(directions[i])).sum()
        for i, g in gradients.items()
        if g is not None and g.requires_grad
    ]


def _hvp_problem(program, comm):
    values, _, directions = _arrays(program[0], program[1])
    leaves = _leaves_requiring_grad(program, values, None)
    tensors = list(leaves.values())
    grads = mg.autograd.grad(
        sum(_run(program, leaves)), tensors, create_graph=True, allow_unused=True
    )
    terms = _inner(dict(zip(leaves, grads)), directions)
    expected = (
        _data(mg.autograd.grad(sum(terms), tensors, allow_unused=True))
        if terms
        else [None] * len(tensors)
    )

    mine = _leaves_requiring_grad(program, values, comm.rank)
    with dist_autograd.context() as context_id:
        roots = _run(program, mine, comm.rank, comm.size)
        dist_autograd.backward(context_id, roots, create_graph=True)
        first = dist_autograd.get_gradients(context_id)
        first_values = {leaf: g.data.copy() for leaf, g in first.items()}
        by_index = {i: first.get(leaf) for i, leaf in mine.items()}
        dist_autograd.backward(context_id, _inner(by_index, directions))
        after = dist_autograd.get_gradients(context_id)
    hvps = {leaf: g.data - first_values.get(leaf, 0.0) for leaf, g in after.items()}
    return _compare(mine, first_values, _data(grads), TOL) or _compare(
        mine, hvps, expected, SECOND_ORDER_TOL
    )


def test_gradients_of_random_programs_match_one_process(comm):
    _for_random_programs(comm, _gradient_problem, max_examples=60)


def test_tangents_of_random_programs_match_one_process(comm):
    _for_random_programs(comm, functools.partial(_tangent_problem, depth=1), max_examples=40)


def test_second_order_tangents_of_random_programs_match_one_process(comm):
    _for_random_programs(comm, functools.partial(_tangent_problem, depth=2), max_examples=30)


def test_hessian_vector_products_of_random_programs_match_one_process(comm):
    _for_random_programs(comm, _hvp_problem, max_examples=40)
