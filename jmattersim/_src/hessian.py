"""Exact second derivatives of the energy in the positions.

The Hessian is forward-over-reverse: the ``jax.jvp`` of the gradient along unit
displacements, a chunk of atoms (3 directions each) per compiled, vmapped call, so
memory is bounded by the chunk, not by N. The topology is the host graph of the
structure (exact, O(N) for large cells through ASE's cell list), held fixed while
differentiating: at a configuration where no pair sits exactly on a cutoff, the
energy is smooth in the positions and its derivatives are exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from .arrays import Array, default_float
from .checkpoint import Model
from .checks import structure_label
from .config import M3GNetConfig
from .energy import batch_energy_of, forces_and_stress
from .graph import checked_graph
from .padding import Batch, counts_of, pad, tight_budget
from .runtime import release_memory

# Unit displacements per compiled call by default (atoms x 3 directions): large
# enough to keep the machine busy, small enough that a vmapped forward-over-reverse
# pass of a few hundred atoms stays within a few GB.
DEFAULT_TANGENTS = 96
# Bytes one compiled call may use by default; the chunk shrinks to fit it.
MEMORY_BUDGET = 2 << 30
REMAT = True  # recompute each block in the backward pass: a fraction of the memory


def gradient_in_positions(config: M3GNetConfig, params, batch: Batch, n_real: int):
    """dE/dx (n_real, 3) eV/Å as a function of x (n_real, 3) Å, the batch's padded
    positions with the real ones replaced (through :func:`forces_and_stress`)."""
    energy_of = batch_energy_of(config, params, batch, remat=REMAT, smooth_angles=True)
    g = batch.graph
    padded, lattice = g.nodes["positions"], g.globals["lattice"]
    real = jraph.get_graph_padding_mask(g)

    def gradient(x: Array) -> Array:
        out = forces_and_stress(energy_of, padded.at[:n_real].set(x), lattice, real)
        return -out.forces[:n_real]

    return gradient


def _columns(config: M3GNetConfig, n_real: int):
    """f(params, batch, x, tangents (T, n_real, 3)) -> (dE/dx (n_real, 3), (T, n_real, 3)):
    the gradient, and its jvp along each tangent (the gradient is the jvp's primal:
    the residual forces come free)."""

    def columns(params, batch, x, tangents):
        grad = gradient_in_positions(config, params, batch, n_real)
        gradient, hvp = jax.linearize(grad, x)
        return gradient, jax.vmap(hvp)(tangents)

    return columns


_COMPILED: dict = {}  # (config, shapes of the arguments) -> (executable, bytes per call)


def compiled_with_memory(config: M3GNetConfig, make, abstract: tuple):
    """``jax.jit(make(config, n_real)).lower(*abstract).compile()`` (n_real from the third
    argument, the positions) and the bytes one call needs (XLA's memory analysis; 0
    where the backend has none). Compiled ahead of time, once per shapes: the memory
    is known before anything runs."""
    leaves, tree = jax.tree_util.tree_flatten(abstract)
    key = (make, config, tree, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))
    if key not in _COMPILED:
        executable = jax.jit(make(config, abstract[2].shape[0])).lower(*abstract).compile()
        try:
            stats = executable.memory_analysis()
            need = int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
        except (AttributeError, NotImplementedError, TypeError):
            need = 0
        if len(_COMPILED) >= 16:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (executable, need)
    return _COMPILED[key]


def _compiled(config: M3GNetConfig, args: tuple, chunk: int, dtype):
    """The compiled Hessian-column call for ``chunk`` atoms and the bytes it needs."""
    n = args[2].shape[0]
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    abstract = (*abstract, jax.ShapeDtypeStruct((3 * chunk, n, 3), dtype))
    return compiled_with_memory(config, _columns, abstract)


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


def hessian_columns(
    model: Model,
    atoms: Atoms,
    atom_indices: Sequence[int],
    *,
    atoms_chunk: int | None = None,
    dtype=None,
) -> np.ndarray:
    """Exact rows of the Hessian for the atoms ``atom_indices`` (what phonopy needs
    for the symmetry-irreducible atoms).

    Args:
        model: a [`Model`][jmattersim.Model].
        atoms: the structure (ASE ``Atoms``); checked first like every input.
        atom_indices: (K,) atoms whose rows to compute.
        atoms_chunk: atoms per compiled call (3 directions each). Memory grows
            linearly with it. Default: 32 atoms, fewer where one call would need
            more than 2 GiB (XLA's memory analysis of the compiled call).
        dtype (numpy dtype or None): float64 when ``jax_enable_x64`` is on, float32
            otherwise (default).

    Returns:
        (K, 3, N, 3) array, eV/Å²: ``out[k, a, j, b] = ∂²E / ∂r[i_k, a] ∂r[j, b]``.

    Raises:
        InvalidStructureError: bad input, naming the structure and the problem.
        MemoryError: a given ``atoms_chunk`` would need more memory than is
            available; the message suggests one that fits.
    """
    rows, _ = rows_and_forces(model, atoms, atom_indices, atoms_chunk=atoms_chunk, dtype=dtype)
    return rows


def rows_and_forces(
    model: Model,
    atoms: Atoms,
    atom_indices: Sequence[int],
    *,
    atoms_chunk: int | None = None,
    dtype=None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hessian_columns`, and the forces (N, 3) eV/Å at ``atoms`` (free: the
    gradient is the primal of the Hessian's jvp). Raises as it does."""
    dtype = np.dtype(dtype or default_float())
    config = model.config
    graph = checked_graph(atoms, config)
    n = graph.n_node
    indices = np.asarray(atom_indices, dtype=int).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(
            f"{structure_label(None, atoms.numbers)}: atom indices must be in [0, {n})"
        )
    batch = pad([graph], tight_budget(counts_of(graph)), config, dtype)
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    params = model.astype(dtype).params
    x = jnp.asarray(graph.positions, dtype)
    args = (params, batch, x)
    if atoms_chunk is None:
        chunk, fn = _default_chunk(config, graph, len(indices), args, dtype)
    else:
        chunk = max(1, min(atoms_chunk, max(len(indices), 1)))
        fn, need = _compiled(config, args, chunk, dtype)
        have = _available_memory()
        if need > 0.8 * have:
            fits = max(1, int(chunk * 0.8 * have / need))
            raise MemoryError(
                f"{structure_label(None, atoms.numbers)}: the Hessian with "
                f"atoms_chunk={chunk} needs about {need / 2**30:.1f} GiB per call, more "
                f"than the {have / 2**30:.1f} GiB available; pass atoms_chunk={fits} or smaller"
            )
    out = np.empty((len(indices), 3, n, 3), dtype)
    forces = None
    directions = np.arange(3 * chunk) % 3
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        rows = np.repeat(np.pad(part, (0, chunk - len(part))), 3)
        basis = np.zeros((3 * chunk, n, 3), dtype)
        basis[np.arange(3 * chunk), rows, directions] = 1.0
        gradient, cols = fn(params, batch, x, jnp.asarray(basis))
        cols = np.asarray(cols)
        if forces is None:
            forces = -np.asarray(gradient)
        release_memory()  # a chunk's buffers back to the system: the peak stays one call's
        out[start : start + len(part)] = cols[: 3 * len(part)].reshape(len(part), 3, n, 3)
    return out, forces


def _default_chunk(config: M3GNetConfig, graph, rows: int, args: tuple, dtype):
    """DEFAULT_TANGENTS / 3 atoms, fewer where one call would need more than
    MEMORY_BUDGET (or 80 % of the available memory). A first guess from the graph's
    size (about 15 stored values per edge or triplet and unit, per atom of the chunk,
    measured on the 1M model), then XLA's memory analysis of the compiled call."""
    per_atom = 15 * (graph.n_edge + graph.n_triplet) * config.units * np.dtype(dtype).itemsize
    cap = min(DEFAULT_TANGENTS // 3, max(rows, 1))
    chunk = int(np.clip(memory_budget() // max(per_atom, 1), 1, cap))
    return fitting_call(lambda size: _compiled(config, args, size, dtype), chunk)


def hessian(
    model: Model, atoms: Atoms, *, atoms_chunk: int | None = None, dtype=None
) -> np.ndarray:
    """The exact Hessian of the energy in the positions, forward-over-reverse in chunks.

    Args:
        model: a [`Model`][jmattersim.Model].
        atoms: the structure (ASE ``Atoms``), periodic or not.
        atoms_chunk: atoms per compiled call (3 directions each); default
            ``DEFAULT_TANGENTS / 3``. Memory grows linearly with it.
        dtype (numpy dtype or None): float64 when ``jax_enable_x64`` is on, float32
            otherwise (default).

    Returns:
        (N, 3, N, 3) array, eV/Å²: ``out[i, a, j, b] = ∂²E / ∂r[i, a] ∂r[j, b]``.
        The force constants of phonopy's convention, ``out.transpose(0, 2, 1, 3)``
        is its (N, N, 3, 3) array.

    Raises:
        InvalidStructureError: bad input, naming the structure and the problem.
        MemoryError: one compiled chunk would need more memory than is available.
    """
    return hessian_columns(model, atoms, range(len(atoms)), atoms_chunk=atoms_chunk, dtype=dtype)
