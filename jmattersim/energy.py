"""Energies, forces and stresses of padded batches, by automatic differentiation.

Stress follows upstream: a strain eps (G, 3, 3) deforms cell and positions as
``x @ (I + eps)``; stress = dE/d eps / V at eps = 0 (eV/Å^3, ASE's sign).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
from ase.units import GPa

from .config import M3GNetConfig
from .graph import Batch
from .model import M3GNet, ModelInputs

Array = jnp.ndarray
Params = Any  # Flax variables: {"params": ..., "constants": ...}

EV_PER_A3_TO_GPA = 1.0 / GPa


class Predictions(NamedTuple):
    """energy (G,) eV; forces (N, 3) eV/Å; stress (G, 3, 3) eV/Å^3. The last
    graph, and nodes beyond the real ones, are padding."""

    energy: Array
    forces: Array
    stress: Array


def node_graph_index(graph: jraph.GraphsTuple) -> Array:
    """(N,) index of the graph each node belongs to."""
    n_graph = graph.n_node.shape[0]
    n_nodes = graph.nodes["positions"].shape[0]
    return jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=n_nodes)


def graph_energies(
    config: M3GNetConfig,
    params: Params,
    batch: Batch,
    strain: Array | None = None,
) -> Array:
    """Total energy of each graph (G,) in eV; the last graph is padding.

    strain: optional (G, 3, 3), applied to cells and positions as x @ (I + strain).
    """
    g = batch.graph
    positions = g.nodes["positions"]
    lattice = g.globals["lattice"]
    node_graph = node_graph_index(g)
    if strain is not None:
        deform = jnp.eye(3, dtype=lattice.dtype) + strain
        lattice = lattice @ deform
        positions = jnp.einsum("ni,nij->nj", positions, deform[node_graph])
    edge_graph = node_graph[g.senders]
    offsets = jnp.einsum("ei,eij->ej", g.edges["shifts"], lattice[edge_graph])
    edge_vectors = positions[g.senders] - (positions[g.receivers] + offsets)
    edge_mask = jraph.get_edge_padding_mask(g)
    inputs = ModelInputs(
        atom_types=g.nodes["atom_types"],
        edge_vectors=edge_vectors,
        senders=g.senders,
        receivers=g.receivers,
        edge_mask=edge_mask,
        triplets=batch.triplets,
        triplet_mask=batch.triplet_mask,
    )
    atom_energies = M3GNet(config).apply(params, inputs)
    return jax.ops.segment_sum(atom_energies, node_graph, num_segments=g.n_node.shape[0])


def predict(config: M3GNetConfig, params: Params, batch: Batch) -> Predictions:
    """Energies, forces (-dE/dr) and stresses (dE/d eps / V) from one pass."""
    g = batch.graph
    lattice = g.globals["lattice"]
    strain = jnp.zeros_like(lattice)

    def total(positions, strain):
        b = batch._replace(graph=g._replace(nodes={**g.nodes, "positions": positions}))
        energies = graph_energies(config, params, b, strain)
        return jnp.sum(energies * jraph.get_graph_padding_mask(g)), energies

    (_, energies), (de_dr, de_deps) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        g.nodes["positions"], strain
    )
    volume = jnp.abs(jnp.linalg.det(lattice))
    return Predictions(energies, -de_dr, de_deps / volume[:, None, None])


def init_params(config: M3GNetConfig, key: Array) -> Params:
    """Random Flax variables of the right shapes for ``config`` (float32)."""
    import numpy as np

    from .graph import StructureGraph, batch_graphs

    g = StructureGraph(
        numbers=np.array([1]), positions=np.zeros((1, 3)), cell=np.eye(3) * 10,
        senders=np.zeros(0, int), receivers=np.zeros(0, int), shifts=np.zeros((0, 3), int),
        triplets=np.zeros((0, 2), int),
    )
    b = jax.tree_util.tree_map(jnp.asarray, batch_graphs([g], config))
    inputs = ModelInputs(
        atom_types=b.graph.nodes["atom_types"], edge_vectors=b.graph.edges["shifts"],
        senders=b.graph.senders, receivers=b.graph.receivers,
        edge_mask=jraph.get_edge_padding_mask(b.graph), triplets=b.triplets,
        triplet_mask=b.triplet_mask,
    )
    return M3GNet(config).init(key, inputs)
