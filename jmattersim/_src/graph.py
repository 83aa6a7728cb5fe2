"""Host neighbour lists: exact, fast, for concrete structures.

These are the sets upstream MatterSim builds (``mattersim.datasets.utils.convertor``):
every periodic neighbour (i, j, image n) with |r_i - (r_j + n @ cell)| below the
two-body cutoff, except i with itself at the zero image; and every ordered pair
of distinct bonds (ij, ik) of one centre i, both no longer than the three-body
cutoff. Cell rows are lattice vectors (ASE's convention).

With a ``skin``, both cutoffs grow by it: the list then holds every pair the
energy can need until some atom has moved ``skin / 2``, and the energy keeps the
pairs within the cutoffs at the positions it is given
(:func:`jmattersim._src.energy.energies` with ``within_cutoffs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ase
import numpy as np
from ase.neighborlist import primitive_neighbor_list

from .config import M3GNetConfig
from .geometry import image_range, periodic_cell
from .topology import Topology, host_topology

# Candidate pairs (N^2 x images) above which neighbor_list uses ASE's cell list.
_DENSE_PAIRS = 2_000_000


@dataclasses.dataclass(frozen=True)
class StructureGraph:
    """One structure's graph, unpadded, in numpy.

    numbers (N,) int atomic numbers; positions (N, 3) Å; cell (3, 3) rows (upstream's
    box for a structure with no periodic axis); pbc (3,) bool; topology: its
    :class:`~jmattersim._src.topology.Topology` (numpy, unpadded: shifts (E, 3)
    integer image n of the receiver, triplets (T, 2) edge indices (ij, ik)
    sharing the centre i); distances (E,) Å; atom_types
    (N, max_z+1) or None (one-hot of ``numbers``); skin: Å added to both cutoffs.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    topology: Topology
    distances: np.ndarray
    atom_types: np.ndarray | None = None
    skin: float = 0.0

    @property
    def n_node(self) -> int:
        return len(self.positions)

    @property
    def n_edge(self) -> int:
        return self.topology.n_edge

    @property
    def n_triplet(self) -> int:
        return self.topology.n_triplet


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


def graph_of(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool],
    config: M3GNetConfig,
    numbers: np.ndarray | None = None,
    atom_types: np.ndarray | None = None,
    skin: float = 0.0,
) -> StructureGraph:
    """The graph of one structure given as arrays (positions Å, cell rows, pbc).

    A structure with no periodic direction is put in upstream's cubic box
    (:func:`jmattersim._src.geometry.molecule_box`) and treated as periodic, as upstream does.
    """
    positions = np.asarray(positions, dtype=float)
    cell, pbc = periodic_cell(positions, cell, pbc, config.cutoff)
    senders, receivers, shifts, d = neighbor_list(positions, cell, pbc, config.cutoff + skin)
    if numbers is None:
        numbers = (
            np.argmax(atom_types, axis=-1)
            if atom_types is not None
            else np.zeros(len(positions), np.int64)
        )
    return StructureGraph(
        numbers=np.asarray(numbers, dtype=np.int64),
        positions=positions,
        cell=cell,
        pbc=pbc,
        topology=host_topology(
            senders, receivers, shifts, triplet_indices(senders, d, config.threebody_cutoff + skin)
        ),
        distances=d,
        atom_types=None if atom_types is None else np.asarray(atom_types),
        skin=float(skin),
    )


def structure_graph(atoms: ase.Atoms, config: M3GNetConfig, skin: float = 0.0) -> StructureGraph:
    """Graph of an ASE structure, as upstream builds it (see :func:`graph_of`)."""
    return graph_of(
        atoms.positions, atoms.cell.array, atoms.pbc, config, numbers=atoms.numbers, skin=skin
    )


def neighbors_in_threebody(g: StructureGraph) -> int:
    """Largest number of bonds of one centre that appear in triplets."""
    if g.n_triplet == 0:
        return 1
    topo = g.topology
    return int(np.bincount(topo.senders[np.unique(topo.triplets[:, 0])]).max())
