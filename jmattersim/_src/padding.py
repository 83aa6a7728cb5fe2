"""Padded jraph batches of host graphs, and their static sizes (budgets).

Batches follow jraph's padding convention (:func:`jraph.pad_with_graphs`): the
first graph after the real ones holds every padding node and edge (any further
padding graphs are empty); padding edges join the first padding node to
itself. Triplets, which jraph does not know, are padded with index pairs onto
the first padding edge and a False mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jraph
import numpy as np

from .config import M3GNetConfig
from .graph import StructureGraph
from .topology import Topology


class Counts(NamedTuple):
    """What a graph or a group of graphs holds."""

    nodes: int
    edges: int
    triplets: int
    graphs: int = 1

    def __add__(self, other: Counts) -> Counts:  # type: ignore[override]
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))


class BatchBudget(NamedTuple):
    """The static sizes of one padded batch.

    A batch fits when every count is strictly below its budget (jraph's padding
    needs one padding graph, node and edge at least). One compiled function per
    budget and dtype.

    Attributes:
        nodes: atom slots.
        edges: edge (neighbour pair) slots.
        triplets: triplet slots.
        graphs: structure slots.
    """

    nodes: int
    edges: int
    triplets: int
    graphs: int

    def holds(self, counts: Counts) -> bool:
        """Whether a batch of these counts fits.

        Args:
            counts: (nodes, edges, triplets, graphs) of the batch.

        Returns:
            True if every count is strictly below its budget.
        """
        return all(c < b for c, b in zip(counts, self, strict=True))

    def cost(self) -> float:
        """Relative cost of a call (measured on CPU).

        Returns:
            Edge slots plus a hundredth of the triplet slots and a tenth of the
            node slots.
        """
        return self.edges + self.triplets / 100 + self.nodes / 10


def counts_of(g: StructureGraph) -> Counts:
    return Counts(g.n_node, g.n_edge, g.n_triplet, 1)


def total_counts(graphs: Sequence[StructureGraph]) -> Counts:
    return sum((counts_of(g) for g in graphs), Counts(0, 0, 0, 0))


def tight_budget(counts: Counts) -> BatchBudget:
    """The smallest budget of :func:`bucket` sizes that holds ``counts``."""
    return BatchBudget(*(bucket(c) for c in counts))


def bucket(n: int, minimum: int = 8) -> int:
    """Smallest size in the ladder ``minimum * 2^(k/2)`` (multiples of 8) above n."""
    size, k = minimum, 0
    while size <= n:
        k += 1
        size = int(math.ceil(minimum * 2 ** (k / 2) / 8) * 8)
    return size


class Batch(NamedTuple):
    """A padded batch: a jraph graph (its nodes and globals) and its topology.

    graph.nodes: {"atom_types": (N, max_z+1), "positions": (N, 3)};
    graph.globals: {"lattice": (G, 3, 3)}; graphs after the real ones are
    padding. topology: the batch's :class:`~jmattersim._src.topology.Topology`
    (its senders and receivers are also the graph's, as jraph wants them).
    """

    graph: jraph.GraphsTuple
    topology: Topology


def pad(
    graphs: Sequence[StructureGraph], budget: BatchBudget, config: M3GNetConfig, dtype=np.float32
) -> Batch:
    """Concatenates ``graphs`` and pads them to ``budget`` (which must hold them)."""
    total = total_counts(graphs)
    if not budget.holds(total):
        raise ValueError(
            f"{budget} cannot hold {total} (each count must stay below its "
            "budget: padding needs one graph, node and edge)"
        )
    nodes, edges, trips = total.nodes, total.edges, total.triplets
    n_node, n_edge, n_triplet, n_graph = budget
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
        if g.atom_types is None:
            atom_types[a + np.arange(g.n_node), g.numbers] = 1.0
        else:
            atom_types[a : a + g.n_node] = g.atom_types
        positions[a : a + g.n_node] = g.positions
        lattice[k] = g.cell
        topo = g.topology
        senders[e : e + g.n_edge] = topo.senders + a
        receivers[e : e + g.n_edge] = topo.receivers + a
        shifts[e : e + g.n_edge] = topo.shifts
        triplets[t : t + g.n_triplet] = topo.triplets + e
        node_counts[k], edge_counts[k] = g.n_node, g.n_edge
        a, e, t = a + g.n_node, e + g.n_edge, t + g.n_triplet
    node_counts[len(graphs)] = n_node - nodes  # jraph: the first padding graph holds them
    edge_counts[len(graphs)] = n_edge - edges
    graph = jraph.GraphsTuple(
        nodes={"atom_types": atom_types, "positions": positions},
        edges=None,
        senders=senders,
        receivers=receivers,
        globals={"lattice": lattice},
        n_node=node_counts,
        n_edge=edge_counts,
    )
    topology = Topology(
        senders,
        receivers,
        shifts,
        np.arange(n_edge) < edges,
        triplets,
        np.arange(n_triplet) < trips,
        np.asarray(False),
    )
    return Batch(graph, topology)
