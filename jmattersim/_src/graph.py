"""Host graphs of concrete structures, and the checked Atoms -> graph factory.

A :class:`StructureGraph` holds the sets of :mod:`jmattersim._src.host_neighbors`
(upstream's edges and triplets) for one structure. :func:`checked_graph` is the
way in from the public edges: the input checks of :mod:`jmattersim._src.checks`,
then the graph, the distance check made on it.

With a ``skin``, both cutoffs grow by it: the list then holds every pair the
energy can need until some atom has moved ``skin / 2``, and the energy keeps the
pairs within the cutoffs at the positions it is given
(:func:`jmattersim._src.energy.energies` with ``within_cutoffs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
from ase import Atoms

from .checks import MIN_DISTANCE, _config, check_atoms, check_graph_distances, structure_label
from .config import M3GNetConfig
from .geometry import periodic_cell
from .host_neighbors import neighbor_list, triplet_indices
from .topology import Topology, host_topology


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


def checked_graph(
    atoms: Atoms,
    config: M3GNetConfig | Any,
    label: str | int | None = None,
    min_distance: float = MIN_DISTANCE,
):
    """:func:`check_atoms`, then the structure's graph
    (:func:`structure_graph`), the distance check made on it."""
    config = _config(config)
    check_atoms(atoms, config, label, min_distance, distances=False)
    graph = structure_graph(atoms, config)
    name = label if isinstance(label, str) else structure_label(label, atoms.numbers)
    check_graph_distances(graph, name, min_distance)
    return graph


def check_structures(
    structures: Sequence[Atoms], config: M3GNetConfig | Any, kind: str = "structure"
) -> None:
    """:func:`check_atoms` on each, labelled '<kind> <index> (<formula>)'."""
    for k, atoms in enumerate(structures):
        check_atoms(atoms, config, _label(k, atoms, kind))


def checked_graphs(
    structures: Sequence[Atoms], config: M3GNetConfig | Any, kind: str = "structure"
) -> list:
    """:func:`checked_graph` of each, labelled '<kind> <index> (<formula>)'."""
    return [
        checked_graph(atoms, config, _label(k, atoms, kind)) for k, atoms in enumerate(structures)
    ]


def _label(index: int, atoms: Any, kind: str) -> str:
    if isinstance(atoms, Atoms):
        return structure_label(index, atoms.numbers, kind)
    return f"{kind} {index}"
