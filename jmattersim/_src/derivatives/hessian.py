"""Exact second derivatives of the energy in the positions.

The Hessian is forward-over-reverse: the ``jax.jvp`` of the gradient along unit
displacements, a chunk of atoms (3 directions each) per compiled, vmapped call, so
memory is bounded by the chunk, not by N. The topology is the host graph of the
structure (exact, O(N) for large cells through ASE's cell list), held fixed while
differentiating: at a configuration where no pair sits exactly on a cutoff, the
energy is smooth in the positions and its derivatives are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jraph
import numpy as np
from ase import Atoms

from ..arrays import Array, default_float
from ..checkpoint import Model
from ..checks import structure_label
from ..config import M3GNetConfig
from ..energy import batch_energy_of, forces_and_stress
from ..padding import Batch
from .chunks import REMAT, chunked


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
    n = len(atoms)
    indices = np.asarray(atom_indices, dtype=int).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(
            f"{structure_label(None, atoms.numbers)}: atom indices must be in [0, {n})"
        )

    def basis(start: int, stop: int, size: int) -> tuple[np.ndarray]:
        """(3 size, N, 3): unit displacements of atoms ``indices[start:stop]``, padded."""
        atoms_of = np.repeat(np.pad(indices[start:stop], (0, size - (stop - start))), 3)
        out = np.zeros((3 * size, n, 3), dtype)
        out[np.arange(3 * size), atoms_of, np.arange(3 * size) % 3] = 1.0
        return (out,)

    gradient, cols = chunked(
        model,
        atoms,
        _columns,
        len(indices),
        basis,
        per_item=3,
        size=atoms_chunk,
        what="the Hessian",
        option="atoms_chunk",
        dtype=dtype,
    )
    return cols.reshape(len(indices), 3, n, 3), -gradient


def hessian(
    model: Model, atoms: Atoms, *, atoms_chunk: int | None = None, dtype=None
) -> np.ndarray:
    """The exact Hessian of the energy in the positions, forward-over-reverse in chunks.

    Args:
        model: a [`Model`][jmattersim.Model].
        atoms: the structure (ASE ``Atoms``), periodic or not.
        atoms_chunk: atoms per compiled call (3 directions each); default 32
            (``DEFAULT_TANGENTS / 3``), fewer where one call would need more than
            2 GiB. Memory grows linearly with it.
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
