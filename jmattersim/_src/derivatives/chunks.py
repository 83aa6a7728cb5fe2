"""One structure's derivatives in compiled chunks of tangents, bounded in memory.

The Hessian, the elastic tensor and fc3's mixed third derivatives all differentiate
one structure along many tangents. :func:`chunked` pads the structure's host graph
once (its topology held fixed), compiles one vmapped call for a chunk of tangents
ahead of time (sized to fit :func:`memory_budget` by XLA's memory analysis, or as
asked), and loops over the chunks.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .. import programs
from ..arrays import default_float
from ..capacity import Capacity
from ..checkpoint import Model
from ..checks import structure_label
from ..config import M3GNetConfig
from ..graph import checked_graph
from ..padding import counts_of, pad
from ..runtime import release_memory

# Unit displacements per compiled call by default: large enough to keep the machine
# busy, small enough that a vmapped forward-over-reverse pass of a few hundred atoms
# stays within a few GB.
DEFAULT_TANGENTS = 96
# Bytes one compiled call may use by default; the chunk shrinks to fit it.
MEMORY_BUDGET = 2 << 30
REMAT = True  # recompute each block in the backward pass: a fraction of the memory
# A first guess of the memory of one tangent: stored values per edge or triplet and
# unit (measured on the 1M model, forward over reverse), before XLA's analysis.
VALUES_PER_TANGENT = 5


def compiled_with_memory(config: M3GNetConfig, make, abstract: tuple):
    """``jax.jit(make(config, n_real)).lower(*abstract).compile()`` (n_real from the third
    argument, the positions) and the bytes one call needs (XLA's memory analysis; 0
    where the backend has none). Compiled ahead of time, once per shapes (and stored
    for the next process, :mod:`jmattersim._src.programs`): the memory is known
    before anything runs."""
    executable = programs.compiled(
        f"{make.__module__}.{make.__qualname__}",
        make(config, abstract[2].shape[0]),
        abstract,
        {"config": config, "remat": REMAT},
    )
    try:
        stats = executable.memory_analysis()
        need = int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        need = 0
    return executable, need


def memory_budget() -> float:
    """Bytes one compiled call may use: MEMORY_BUDGET, or 80 % of the available
    memory where that is less."""
    return min(MEMORY_BUDGET, 0.8 * _available_memory())


def fitting_call(compile_for, size: int) -> tuple[int, object]:
    """(size, compiled call) for the largest ``size`` at most the given one whose
    call fits :func:`memory_budget` by XLA's memory analysis (``compile_for(size)``
    returns the call and the bytes it needs), or 1."""
    budget = memory_budget()
    while True:
        fn, need = compile_for(size)
        if need <= budget or size == 1:
            return size, fn
        size = max(1, min(size - 1, int(size * budget / need)))


def _available_memory() -> int:
    """Bytes of memory available to this process now (Linux), else a large number."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def chunked(
    model: Model,
    atoms: Atoms,
    make: Callable,
    count: int,
    tangents: Callable[[int, int, int], tuple[np.ndarray, ...]],
    *,
    fixed: tuple[np.ndarray, ...] = (),
    per_item: int = 1,
    cap: int | None = None,
    size: int | None = None,
    needed: int | None = None,
    snug: bool = True,
    what: str = "the derivatives",
    option: str = "chunk",
    dtype=None,
):
    """Derivatives of one structure along ``count`` items of tangents, in compiled chunks.

    Args:
        model: the model.
        atoms: the structure (ASE ``Atoms``, N atoms); checked, its graph padded tightly.
        make: ``make(config, n_real)`` -> ``f(params, batch, x (N, 3) Å, *fixed,
            *tangents) -> (primal, derivatives)``, pytrees of arrays; each leaf of
            ``derivatives`` has a leading axis of ``per_item`` per item of the chunk.
        count: the items (atoms, unit strains, displacements, ...) to differentiate along.
        tangents: ``tangents(start, stop, size)`` -> the arrays of items
            ``[start, stop)``, padded to ``size`` items (a leading axis of
            ``size * per_item``).
        fixed: arrays passed to every call after the positions.
        per_item: tangents per item (3 for an atom's three directions).
        cap: items per call at most by default (``DEFAULT_TANGENTS // per_item``).
        size: items per call as asked (a MemoryError where one call would need more
            than 80 % of the available memory); None: at most ``cap``, fewer where a
            call would exceed :func:`memory_budget` (a first guess from the graph's
            size, then XLA's memory analysis of the compiled call).
        needed: the items that must be computed (default all): the others only where
            all ``count`` fit in one call of the first guess.
        snug: no more items per call than ``count``; False: one shape whatever the
            count (repeated calls with varying counts compile once).
        what, option: the computation and its chunk option, for the MemoryError.
        dtype (numpy dtype or None): the float type of the positions, parameters and
            tangents; float64 when ``jax_enable_x64`` is on, float32 otherwise (default).

    Returns:
        (primal of the first call, derivatives with leading axis ``count * per_item``,
        or ``needed * per_item``), as numpy.

    Raises:
        InvalidStructureError: bad input, naming the structure and the problem.
        MemoryError: the ``size`` asked would not fit; the message says one that would.
    """
    dtype = np.dtype(dtype or default_float())
    config = model.config
    graph = checked_graph(atoms, config)
    batch = jax.tree_util.tree_map(
        jnp.asarray, pad([graph], Capacity.above(counts_of(graph)), config, dtype)
    )
    args = (model.astype(dtype).params, batch, jnp.asarray(graph.positions, dtype))
    args += tuple(jnp.asarray(a) for a in fixed)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)

    def compile_for(items: int):
        shapes = tuple(jax.ShapeDtypeStruct(t.shape, t.dtype) for t in tangents(0, 0, items))
        return compiled_with_memory(config, make, (*abstract, *shapes))

    if size is None:
        per_tangent = VALUES_PER_TANGENT * (graph.n_edge + graph.n_triplet) * config.units
        per_call = per_item * per_tangent * dtype.itemsize
        most = DEFAULT_TANGENTS // per_item if cap is None else cap
        most = min(most, max(count, 1)) if snug else most
        size = int(np.clip(memory_budget() // max(per_call, 1), 1, most))
        if needed is not None and size < count:
            count = needed  # the rest would take more calls
            size = min(size, count)
        size, fn = fitting_call(compile_for, size)
    else:
        size = max(1, min(size, max(count, 1)) if snug else size)
        fn, need = compile_for(size)
        have = _available_memory()
        if need > 0.8 * have:
            fits = max(1, int(size * 0.8 * have / need))
            raise MemoryError(
                f"{structure_label(None, atoms.numbers)}: {what} with {option}={size} needs "
                f"about {need / 2**30:.1f} GiB per call, more than the {have / 2**30:.1f} GiB "
                f"available; pass {option}={fits} or smaller"
            )
    primal, out = None, None
    for start in range(0, max(count, 1), size):  # one call at least: the primal
        stop = min(start + size, count)
        first, parts = fn(*args, *(jnp.asarray(t) for t in tangents(start, stop, size)))
        parts = jax.tree_util.tree_map(np.asarray, parts)
        if primal is None:
            primal = jax.tree_util.tree_map(np.asarray, first)
            out = jax.tree_util.tree_map(
                lambda p: np.empty((count * per_item, *p.shape[1:]), p.dtype), parts
            )
        release_memory()  # a chunk's buffers back to the system: the peak stays one call's
        real = (stop - start) * per_item
        for o, p in zip(
            jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(parts), strict=True
        ):
            o[start * per_item : start * per_item + real] = p[:real]
    return primal, out
