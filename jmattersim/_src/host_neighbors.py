"""Host neighbour lists: exact, fast, for concrete structures.

These are the sets upstream MatterSim builds (``mattersim.datasets.utils.convertor``):
every periodic neighbour (i, j, image n) with |r_i - (r_j + n @ cell)| below the
two-body cutoff, except i with itself at the zero image; and every ordered pair
of distinct bonds (ij, ik) of one centre i, both no longer than the three-body
cutoff. Cell rows are lattice vectors (ASE's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.neighborlist import primitive_neighbor_list

from .geometry import image_range

# Candidate pairs (N^2 x images) above which neighbor_list uses ASE's cell list.
_DENSE_PAIRS = 2_000_000


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, n) with |r_i - (r_j + n @ cell)| < cutoff, no self pair at n = 0.

    Any cell: many images where it is shorter than the cutoff, triclinic, partly
    periodic. Returns senders i, receivers j, shifts n (E, 3) int, distances (E,),
    sorted by sender, then receiver (upstream orders its bonds by sender too).
    Vectorised over all candidate pairs (atoms wrapped into the cell, every image
    within range); large structures go through ASE's linear-scaling list.
    """
    positions = np.asarray(positions, float)
    cell = np.asarray(cell, float)
    pbc = np.asarray(pbc, bool)
    n = len(positions)
    reach = image_range(cell, cutoff, pbc)
    images = np.stack(
        np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    if n * n * len(images) > _DENSE_PAIRS:
        i, j, shifts, d = primitive_neighbor_list(
            "ijSd", pbc, cell, positions, cutoff, self_interaction=False, use_scaled_positions=False
        )
        order = np.lexsort((j, i))
        return i[order], j[order], shifts[order].astype(np.int64), d[order]
    wrap = np.zeros_like(positions)
    if pbc.any():
        wrap = np.where(pbc, np.floor(np.linalg.solve(cell.T, positions.T).T), 0.0)
    wrapped = positions - wrap @ cell
    vec = wrapped[:, None, None, :] - (
        wrapped[None, :, None, :] + (images @ cell)[None, None, :, :]
    )  # (N, N, M, 3)
    d2 = np.einsum("ijmk,ijmk->ijm", vec, vec)
    within = d2 < cutoff * cutoff
    zero = int(np.flatnonzero((images == 0).all(axis=1))[0])
    within[np.arange(n), np.arange(n), zero] = False
    i, j, m = np.nonzero(within)
    shifts = (images[m] + wrap[i] - wrap[j]).astype(np.int64)
    return i, j, shifts, np.sqrt(d2[i, j, m])


def triplet_indices(senders: np.ndarray, distances: np.ndarray, cutoff: float) -> np.ndarray:
    """Ordered pairs (ij, ik), ij != ik, of bonds with one centre, both <= cutoff.

    senders must be sorted. Returns (T, 2) int, sorted by ij then ik.
    """
    bonds = np.flatnonzero(distances <= cutoff)
    if bonds.size == 0:
        return np.zeros((0, 2), np.int64)
    centre = senders[bonds]
    starts = np.searchsorted(centre, centre, side="left")
    counts = np.searchsorted(centre, centre, side="right") - starts
    # each bond b pairs with every bond of its group: repeat b count times
    first = np.repeat(np.arange(bonds.size), counts)
    offset = np.arange(first.size) - np.repeat(np.cumsum(counts) - counts, counts)
    second = np.repeat(starts, counts) + offset
    keep = first != second
    return np.stack([bonds[first[keep]], bonds[second[keep]]], axis=1)
