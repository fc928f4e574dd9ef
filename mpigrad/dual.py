"""Dual levels of forward-mode AD: which are open, and which tensors carry a tangent at each.

Levels nest.  A level opened later is *inner*.  ``Tensor._fw`` maps level -> tangent Tensor; the
tangent is itself a Tensor, so it can carry tangents of inner levels (forward-over-forward).

Note [nested tangents]: with levels e and d, a tensor stands for the truncated Taylor series
x = a + e*b + d*c + e*d*m.  Its tangent at e is the Tensor b + d*m (it carries m as its own
tangent at d) and its tangent at d is c + e*m: every tangent carries the tangents of the other
levels, so the order in which levels were opened or are unpacked does not matter, and a function
that differentiates with a level of its own can itself be differentiated from an enclosing level.
An op's rule for level L runs on the inputs stripped of L (in themselves and in their tangents),
so a level never sees its own perturbation (no perturbation confusion).  Where the inputs carry
several levels, the outputs the rule reads are recomputed from those stripped inputs.
"""

import itertools
import weakref

_levels = []  # open levels, outermost first
_counter = itertools.count()
_carriers = {}  # level -> {id(tensor): weakref}: what exit_dual_level must clear


def open_levels():
    return _levels


def enter():
    level = next(_counter)
    _levels.append(level)
    _carriers[level] = {}
    return level


def exit(level):
    if not _levels:
        raise RuntimeError(f"exit_dual_level({level}): no dual level is open")
    if level != _levels[-1]:
        if level in _levels:
            raise RuntimeError(
                f"exit_dual_level({level}): dual levels must be exited innermost-first; "
                f"the innermost open level is {_levels[-1]}"
            )
        raise RuntimeError(f"exit_dual_level({level}): level {level} is not open")
    _levels.pop()
    for ref in _carriers.pop(level).values():
        tensor = ref()
        if tensor is not None and tensor._fw is not None:
            tensor._fw.pop(level, None)
            if not tensor._fw:
                tensor._fw = None


def resolve(level, what):
    """The level a call means: the innermost open one when ``level`` is None."""
    if level is None:
        if not _levels:
            raise RuntimeError(f"{what} needs an open dual level: use forward_ad.dual_level()")
        return _levels[-1]
    if level not in _levels:
        raise RuntimeError(f"{what}: dual level {level} is not open (open levels: {_levels})")
    return level


def set_tangent(tensor, level, tangent):
    if tensor._fw is None:
        tensor._fw = {}
    tensor._fw[level] = tangent
    _carriers[level][id(tensor)] = weakref.ref(tensor)
