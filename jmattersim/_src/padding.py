"""Padded jraph batches of host graphs, and what the graphs hold (their counts).

Batches follow jraph's padding convention (:func:`jraph.pad_with_graphs`): the
first graph after the real ones holds every padding node and edge (any further
padding graphs are empty); padding edges join the first padding node to
itself. Triplets, which jraph does not know, are padded with index pairs onto
the first padding edge and a False mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jraph
import numpy as np

from .capacity import Capacity, Counts
from .config import M3GNetConfig
from .graph import StructureGraph
from .topology import Topology


def counts_of(g: StructureGraph) -> Counts:
    return Counts(g.n_node, g.n_edge, g.n_triplet, 1)


def total_counts(graphs: Sequence[StructureGraph]) -> Counts:
    return sum((counts_of(g) for g in graphs), Counts(0, 0, 0, 0))


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
    graphs: Sequence[StructureGraph], budget: Capacity, config: M3GNetConfig, dtype=np.float32
) -> Batch:
    """Concatenates ``graphs`` and pads them to ``budget`` (a padded-batch
    :class:`~jmattersim.Capacity`, which must hold them)."""
    total = total_counts(graphs)
    if not budget.holds(total):
        raise ValueError(
            f"{budget} cannot hold {total} (each count must stay below its "
            "budget: padding needs one graph, node and edge)"
        )
    nodes, edges, trips = total.nodes, total.edges, total.triplets
    n_node, n_edge, n_triplet, n_graph = budget.slots
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
