"""Pure energy functions of a padded jraph batch, the topology rebuilt inside at
every call (:func:`jmattersim._src.neighbors.topology`), derived through
:func:`jmattersim._src.energy.forces_and_stress`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph

from .arrays import Array
from .capacity import Capacity
from .config import M3GNetConfig
from .energy import Params, Predictions, energies, forces_and_stress, with_overflow_nan
from .neighbors import topology
from .topology import Topology


def graph_mask(graph: jraph.GraphsTuple) -> Array:
    """(G,) True for real graphs (jraph's padding convention)."""
    return jraph.get_graph_padding_mask(graph)


def graph_topology(
    graph: jraph.GraphsTuple, config: M3GNetConfig, capacity: Capacity
) -> tuple[Array, Topology]:
    """Safe lattices (a unit cube for padding graphs) and the in-jit topology of
    a padded jraph graph; ``graph.globals["pbc"]`` (G, 3) is optional."""
    graph = graph._replace(n_node=jnp.asarray(graph.n_node))  # jraph's masks index it
    lattice = graph.globals["lattice"]
    real = graph_mask(graph)
    lattice = jnp.where(real[:, None, None], lattice, jnp.eye(3, dtype=lattice.dtype))
    pbc = graph.globals.get("pbc") if isinstance(graph.globals, dict) else None
    topo = topology(
        graph.nodes["positions"],
        lattice,
        graph.n_node,
        config,
        capacity,
        jraph.get_node_padding_mask(graph),
        pbc,
    )
    return lattice, topo


def batch_predict(
    config: M3GNetConfig,
    capacity: Capacity,
    params: Params,
    graph: jraph.GraphsTuple,
    soft_normalize: bool = True,
    derivatives: bool = True,
    remat: bool = False,
) -> tuple[Predictions, Array]:
    """Predictions of a padded jraph graph, topology rebuilt inside, and the
    overflow flag (values are not masked: callers decide). Without
    ``derivatives`` forces and stress are None (no gradient pass).

    graph.nodes = {"atom_types": (N, max_z+1), "positions": (N, 3)},
    graph.globals = {"lattice": (G, 3, 3), optional "pbc": (G, 3) bool}, n_node
    (G,), padded in jraph's convention (:func:`jmattersim.batch.pad_graph`).
    """
    graph = graph._replace(n_node=jnp.asarray(graph.n_node))
    lattice, topo = graph_topology(graph, config, capacity)

    def energy_of(positions, strain=None):
        return energies(
            config,
            params,
            graph.nodes["atom_types"],
            positions,
            lattice,
            graph.n_node,
            topo,
            strain,
            soft_normalize,
            remat,
        )

    real = graph_mask(graph)
    if not derivatives:
        e = jnp.where(real, energy_of(graph.nodes["positions"]), 0.0)
        return Predictions(e, None, None), topo.overflow
    out = forces_and_stress(energy_of, graph.nodes["positions"], lattice, real)
    return out._replace(energy=jnp.where(real, out.energy, 0.0)), topo.overflow


def batch_energy_fn(
    config: M3GNetConfig,
    capacity: Capacity,
    soft_normalize: bool = True,
    remat: bool = False,
) -> Callable[[Params, jraph.GraphsTuple], Array]:
    """A pure energy function of a padded batch (a jraph ``GraphsTuple``).

    The topology is rebuilt inside at every call within ``capacity`` (counts over
    the whole batch). Pure: ``jax.jit``, ``jax.grad`` and ``jax.vmap`` apply.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`Capacity`][jmattersim.Capacity] for the
            whole batch (``capacity_for(..., batch_size=G)``).
        soft_normalize: per-element scale and shift as ``atom_types @ scale``
            (True) or of each atom's most likely element (False).
        remat: recompute each interaction block in the backward pass.

    Returns:
        ``energies(params, graph) -> (G,)`` eV: NaN where the capacity
        overflows, 0 for padding graphs. ``graph.nodes`` holds ``atom_types``
        (N, max_z + 1) and ``positions`` (N, 3) Å; ``graph.globals`` holds
        ``lattice`` (G, 3, 3) Å rows and optionally ``pbc`` (G, 3) bool;
        ``graph.n_node`` (G,); padded in jraph's convention (the first graph
        after the real ones holds the padding nodes).
    """

    def batch_energies(params: Params, graph: jraph.GraphsTuple) -> Array:
        out, overflow = batch_predict(config, capacity, params, graph, soft_normalize, False, remat)
        return with_overflow_nan(out.energy, overflow)

    return batch_energies


def batch_properties_fn(
    config: M3GNetConfig,
    capacity: Capacity,
    soft_normalize: bool = True,
    remat: bool = False,
) -> Callable[[Params, jraph.GraphsTuple], Predictions]:
    """A pure function of a padded batch giving energies, forces and stresses in one call.

    Differentiable again: a loss on forces or stresses has gradients in every
    input and in params (force and stress training, inverse design).

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`Capacity`][jmattersim.Capacity] for the
            whole batch.
        soft_normalize: per-element scale and shift as ``atom_types @ scale``
            (True) or of each atom's most likely element (False).
        remat: recompute each interaction block in the backward pass.

    Returns:
        ``properties(params, graph) -> Predictions``: energy (G,) eV, forces
        (N, 3) eV/Å, stress (G, 3, 3) **eV/Å³**; NaN where the capacity
        overflows. ``graph`` as for [`batch_energy_fn`][jmattersim.batch.batch_energy_fn].
    """

    def properties(params: Params, graph: jraph.GraphsTuple) -> Predictions:
        out, overflow = batch_predict(config, capacity, params, graph, soft_normalize, True, remat)
        return jax.tree_util.tree_map(lambda v: with_overflow_nan(v, overflow), out)

    return properties
