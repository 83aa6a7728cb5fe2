"""Host-side graphs: periodic neighbours, triplets, and padded jraph batches.

These are the sets upstream MatterSim builds (``mattersim.datasets.utils.convertor``):
every periodic neighbour (i, j, image n) with |r_i - (r_j + n @ cell)| below the
two-body cutoff, except i with itself at the zero image; and every ordered pair
of distinct bonds (ij, ik) of one centre i, both no longer than the three-body
cutoff. Cells rows are lattice vectors (ASE's convention).

Batches follow jraph's padding convention (:func:`jraph.pad_with_graphs`): the
first graph after the real ones holds every padding node and edge (any further
padding graphs are empty); padding edges join the first padding node to
itself. Triplets, which jraph does not know, are padded with index pairs onto
the first padding edge and a False mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import ase
import jraph
import numpy as np
from ase.neighborlist import primitive_neighbor_list

from .config import M3GNetConfig
from .neighbors import image_range


@dataclasses.dataclass(frozen=True)
class StructureGraph:
    """One structure's graph, unpadded, in numpy.

    numbers (N,) int atomic numbers; positions (N, 3) Å; cell (3, 3) rows;
    senders, receivers (E,) int; shifts (E, 3) integer image n of the receiver;
    triplets (T, 2) edge indices (ij, ik) sharing the centre i = senders.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    triplets: np.ndarray

    @property
    def n_node(self) -> int:
        return len(self.numbers)

    @property
    def n_edge(self) -> int:
        return len(self.senders)

    @property
    def n_triplet(self) -> int:
        return len(self.triplets)


def molecule_box(positions: np.ndarray, config: M3GNetConfig) -> np.ndarray:
    """The cubic cell upstream puts a non-periodic structure in (rows, Å).

    Its edge is the largest extent plus five times the largest cutoff, so that
    no atom sees a periodic image; the volume enters upstream's stress.
    """
    extent = positions.max(axis=0) - positions.min(axis=0)
    return np.eye(3) * float(np.max(extent + 5 * max(config.cutoff, config.threebody_cutoff)))


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
    reach = image_range(cell, cutoff) * pbc
    images = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij"),
                      axis=-1).reshape(-1, 3)
    if n * n * len(images) > _DENSE_PAIRS:
        i, j, shifts, d = primitive_neighbor_list(
            "ijSd", pbc, cell, positions, cutoff, self_interaction=False,
            use_scaled_positions=False)
        order = np.lexsort((j, i))
        return i[order], j[order], shifts[order].astype(np.int64), d[order]
    wrap = np.where(pbc, np.floor(np.linalg.solve(cell.T, positions.T).T), 0.0)
    wrapped = positions - wrap @ cell
    vec = (wrapped[:, None, None, :]
           - (wrapped[None, :, None, :] + (images @ cell)[None, None, :, :]))  # (N, N, M, 3)
    d2 = np.einsum("ijmk,ijmk->ijm", vec, vec)
    within = d2 < cutoff * cutoff
    zero = int(np.flatnonzero((images == 0).all(axis=1))[0])
    within[np.arange(n), np.arange(n), zero] = False
    i, j, m = np.nonzero(within)
    shifts = (images[m] + wrap[i] - wrap[j]).astype(np.int64)
    return i, j, shifts, np.sqrt(d2[i, j, m])


# Candidate pairs (N^2 x images) above which neighbor_list uses ASE's cell list.
_DENSE_PAIRS = 2_000_000


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


def structure_graph(atoms: ase.Atoms, config: M3GNetConfig) -> StructureGraph:
    """Graph of an ASE structure, as upstream builds it.

    A structure with no periodic direction is put in upstream's cubic box
    (:func:`molecule_box`) and treated as periodic, as upstream does.
    """
    positions = np.asarray(atoms.positions, dtype=float)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not pbc.any():
        cell, pbc = molecule_box(positions, config), np.ones(3, bool)
    senders, receivers, shifts, d = neighbor_list(positions, cell, pbc, config.cutoff)
    return StructureGraph(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=positions,
        cell=cell,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        triplets=triplet_indices(senders, d, config.threebody_cutoff),
    )


class Batch(NamedTuple):
    """A padded batch: a jraph graph plus MatterSim's triplets.

    graph.nodes: {"atom_types": (N, max_z+1), "positions": (N, 3)};
    graph.edges: {"shifts": (E, 3)}; graph.globals: {"lattice": (G, 3, 3)};
    graphs after the real ones are padding. triplets (T, 2) edge indices; triplet_mask (T,).
    """

    graph: jraph.GraphsTuple
    triplets: np.ndarray
    triplet_mask: np.ndarray


def bucket(n: int, minimum: int = 8) -> int:
    """Smallest size in the ladder minimum * 2^(k/2) (rounded up to a multiple
    of 8) that is strictly above n: a stream of sizes gives few shapes."""
    size = minimum
    k = 0
    while size <= n:
        k += 1
        size = int(math.ceil(minimum * 2 ** (k / 2) / 8) * 8)
    return size


def batch_graphs(
    graphs: Sequence[StructureGraph],
    config: M3GNetConfig,
    n_node: int | None = None,
    n_edge: int | None = None,
    n_triplet: int | None = None,
    n_graph: int | None = None,
    dtype=np.float32,
) -> Batch:
    """Concatenates graphs and pads to the given sizes (default: buckets).

    Every size must exceed the real total, leaving one padding graph, node and
    edge at least (jraph's convention), so padding never aliases real entries.
    """
    nodes = sum(g.n_node for g in graphs)
    edges = sum(g.n_edge for g in graphs)
    trips = sum(g.n_triplet for g in graphs)
    n_node = bucket(nodes) if n_node is None else n_node
    n_edge = bucket(edges) if n_edge is None else n_edge
    n_triplet = bucket(trips) if n_triplet is None else n_triplet
    n_graph = len(graphs) + 1 if n_graph is None else n_graph
    if n_node <= nodes or n_edge <= edges or n_triplet <= trips or n_graph <= len(graphs):
        raise ValueError(
            f"padded sizes (nodes {n_node}, edges {n_edge}, triplets {n_triplet}, graphs "
            f"{n_graph}) must exceed the batch's ({nodes}, {edges}, {trips}, {len(graphs)})"
        )
    atom_types = np.zeros((n_node, config.num_species), dtype)
    positions = np.zeros((n_node, 3), dtype)
    lattice = np.tile(np.eye(3, dtype=dtype), (n_graph, 1, 1))  # padding: a unit cube
    senders = np.full(n_edge, nodes, np.int32)
    receivers = np.full(n_edge, nodes, np.int32)
    shifts = np.zeros((n_edge, 3), dtype)
    triplets = np.full((n_triplet, 2), edges, np.int32)
    node_counts = np.zeros(n_graph, np.int32)
    edge_counts = np.zeros(n_graph, np.int32)
    a = e = t = 0
    for k, g in enumerate(graphs):
        atom_types[a + np.arange(g.n_node), g.numbers] = 1.0
        positions[a : a + g.n_node] = g.positions
        lattice[k] = g.cell
        senders[e : e + g.n_edge] = g.senders + a
        receivers[e : e + g.n_edge] = g.receivers + a
        shifts[e : e + g.n_edge] = g.shifts
        triplets[t : t + g.n_triplet] = g.triplets + e
        node_counts[k], edge_counts[k] = g.n_node, g.n_edge
        a, e, t = a + g.n_node, e + g.n_edge, t + g.n_triplet
    node_counts[len(graphs)] = n_node - nodes  # jraph: the first padding graph holds them
    edge_counts[len(graphs)] = n_edge - edges
    graph = jraph.GraphsTuple(
        nodes={"atom_types": atom_types, "positions": positions},
        edges={"shifts": shifts},
        senders=senders,
        receivers=receivers,
        globals={"lattice": lattice},
        n_node=node_counts,
        n_edge=edge_counts,
    )
    return Batch(graph, triplets, np.arange(n_triplet) < trips)
