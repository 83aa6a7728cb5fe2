"""Cell geometry: plain functions of a cell and a cutoff, numpy or jax.numpy.

Cells are rows of lattice vectors (ASE, MatterSim): Cartesian ``r = frac @ cell``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def widths(cell, xp=np):
    """(..., 3) distances between opposite faces of (..., 3, 3) cells (rows)."""
    a, b, c = cell[..., 0, :], cell[..., 1, :], cell[..., 2, :]
    volume = xp.abs(xp.sum(a * xp.cross(b, c), axis=-1))
    areas = xp.stack(
        [
            xp.linalg.norm(xp.cross(b, c), axis=-1),
            xp.linalg.norm(xp.cross(c, a), axis=-1),
            xp.linalg.norm(xp.cross(a, b), axis=-1),
        ],
        axis=-1,
    )
    return volume[..., None] / areas


def image_range(cell, cutoff: float, pbc=None, xp=np):
    """(..., 3) int: the largest ``|n_k|`` of a lattice image that can hold a pair
    within ``cutoff`` of (..., 3, 3) cells; 0 along non-periodic axes."""
    reach = xp.ceil(cutoff / widths(cell, xp)).astype(int)
    return reach if pbc is None else xp.where(xp.asarray(pbc, bool), reach, 0)


def candidate_pairs(n_atoms: int, cell: np.ndarray, pbc: Sequence[bool], cutoff: float) -> int:
    """``n^2 M``: (atom, atom, image) triples to try for one structure, M images."""
    k = image_range(np.asarray(cell, float), cutoff, pbc)
    return n_atoms**2 * int(np.prod(2 * k + 1))


def molecule_box(positions: np.ndarray, cutoff: float) -> np.ndarray:
    """The cubic cell (rows, Å) upstream puts a structure with no periodic axis in:
    edge = largest extent + 5 x cutoff, so no atom sees an image; its volume
    enters upstream's stress."""
    positions = np.asarray(positions, float)
    extent = positions.max(axis=0) - positions.min(axis=0)
    return np.eye(3) * float(np.max(extent + 5 * cutoff))


def periodic_cell(
    positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """(cell, pbc) as upstream evaluates a structure: unchanged, or upstream's
    cubic box (all periodic) when no axis is periodic."""
    pbc = np.asarray(pbc, bool)
    if not pbc.any():
        return molecule_box(positions, cutoff), np.ones(3, bool)
    return np.asarray(cell, float), pbc
