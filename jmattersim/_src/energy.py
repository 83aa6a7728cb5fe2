"""Energies, forces and stresses, by automatic differentiation.

Two ways to get a topology, one model underneath:

- host graphs (:mod:`jmattersim._src.graph`) packed into a padded :class:`Batch`:
  :func:`predict` (the calculator, :func:`jmattersim.evaluate`, ``forward_batch``);
- topology recomputed inside the function at every call
  (:mod:`jmattersim._src.neighbors`): :func:`energy_fn` (one structure, a pure
  function of params, atom types, positions and lattice) and
  ``batch_energy_fn`` / ``batch_properties_fn`` (a jraph ``GraphsTuple``, in
  :mod:`jmattersim._src.batch_energy`).

Stress follows upstream: a strain eps (G, 3, 3) deforms cell and positions as
``x @ (I + eps)``; stress = dE/d eps / V at eps = 0 (eV/Å^3, ASE's sign).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jraph

from .arrays import Array
from .capacity import Capacity
from .config import M3GNetConfig
from .model import M3GNet, ModelInputs
from .neighbors import topology
from .padding import Batch
from .predictions import EV_PER_A3_TO_GPA as EV_PER_A3_TO_GPA  # elastic, md read it here
from .predictions import Predictions
from .topology import Topology

Params = Any  # Flax variables: {"params": ..., "constants": ...}


def node_graph_index(n_node: Array, n_atoms: int) -> Array:
    """(N,) index of the graph each node belongs to."""
    return jnp.repeat(jnp.arange(n_node.shape[0]), n_node, total_repeat_length=n_atoms)


def energies(
    config: M3GNetConfig,
    params: Params,
    atom_types: Array,
    positions: Array,
    lattice: Array,
    n_node: Array,
    topo: Topology,
    strain: Array | None = None,
    soft_normalize: bool = True,
    remat: bool = False,
    within_cutoffs: bool = False,
    smooth_angles: bool = False,
    compact: Capacity | None = None,
) -> Array:
    """Total energy (G,) in eV of each graph of a batch with a given topology.

    atom_types (N, max_z+1); positions (N, 3) Å; lattice (G, 3, 3) rows;
    n_node (G,); strain optional (G, 3, 3), applied as x @ (I + strain).
    soft_normalize: per-element scale and shift as atom_types @ scale (True), or
    those of each row's most likely element (False, no gradient through them).
    remat: recompute each interaction block in the backward pass (``jax.checkpoint``)
    instead of storing it: less memory for gradients, the same numbers.
    within_cutoffs: keep only the listed edges and triplets within the cutoffs at
    these positions (a list built with a skin holds more).
    smooth_angles: differentiate through upstream's clamp of the angle cosine as if
    it were the identity (the same values; see :class:`M3GNet`): for second and
    higher derivatives, which the clamp's plateau at straight triplets would spoil.
    compact: with ``within_cutoffs``, gather the edges and triplets within the
    cutoffs into this capacity's ``edges`` and ``triplets`` slots, so the model runs
    on them alone (a list with a skin holds more); the energies are NaN if they do
    not fit.
    """
    node_graph = node_graph_index(n_node, positions.shape[0])
    if strain is not None:
        deform = jnp.eye(3, dtype=lattice.dtype) + strain
        lattice = lattice @ deform
        positions = jnp.einsum("ni,nij->nj", positions, deform[node_graph])
    offsets = jnp.einsum("ei,eij->ej", topo.shifts, lattice[node_graph[topo.senders]])
    edge_vectors = positions[topo.senders] - (positions[topo.receivers] + offsets)
    if within_cutoffs:
        topo = restrict_to_cutoffs(topo, edge_vectors, config)
        if compact is not None:
            topo, edge_vectors = compacted(topo, edge_vectors, compact)
    inputs = ModelInputs(atom_types, edge_vectors, topo)
    atom_energies = M3GNet(
        config, soft_normalize=soft_normalize, remat=remat, smooth_angles=smooth_angles
    ).apply(params, inputs)
    e = jax.ops.segment_sum(atom_energies, node_graph, num_segments=n_node.shape[0])
    return e if compact is None else with_overflow_nan(e, topo.overflow)


def restrict_to_cutoffs(topo: Topology, edge_vectors: Array, config: M3GNetConfig) -> Topology:
    """The edges of ``topo`` shorter than the cutoff, and its triplets whose two
    bonds are within the three-body cutoff, at ``edge_vectors`` (E, 3) Å."""
    d2 = jax.lax.stop_gradient(jnp.sum(edge_vectors * edge_vectors, axis=-1))
    edge_mask = topo.edge_mask & (d2 < config.cutoff**2)
    in3 = edge_mask & (d2 <= config.threebody_cutoff**2)
    triplet_mask = topo.triplet_mask & in3[topo.triplets[:, 0]] & in3[topo.triplets[:, 1]]
    return topo._replace(edge_mask=edge_mask, triplet_mask=triplet_mask)


def compacted(topo: Topology, edge_vectors: Array, capacity: Capacity) -> tuple[Topology, Array]:
    """The real edges and triplets of ``topo`` gathered into ``capacity.edges`` and
    ``capacity.triplets`` slots (in their order; padding slots repeat the first and
    are masked), with their edge vectors; ``overflow`` set if they do not fit."""
    n_edge = jnp.sum(topo.edge_mask)
    (edges,) = jnp.nonzero(topo.edge_mask, size=capacity.edges, fill_value=0)
    slot = jnp.maximum(jnp.cumsum(topo.edge_mask) - 1, 0)  # the compact index of each edge
    n_trip = jnp.sum(topo.triplet_mask)
    (trips,) = jnp.nonzero(topo.triplet_mask, size=capacity.triplets, fill_value=0)
    overflow = topo.overflow | (n_edge > capacity.edges) | (n_trip > capacity.triplets)
    packed = Topology(
        topo.senders[edges],
        topo.receivers[edges],
        topo.shifts[edges],
        jnp.arange(capacity.edges) < n_edge,
        slot[topo.triplets[trips]],
        jnp.arange(capacity.triplets) < n_trip,
        overflow,
    )
    return packed, edge_vectors[edges]


def forces_and_stress(
    energy_of: Callable[[Array, Array], Array], positions: Array, lattice: Array, real: Array
) -> Predictions:
    """The one place that differentiates an energy: energies, forces and stresses
    from one reverse pass.

    Every path goes through it: the engine, ``forward_batch`` (all modes), the
    jax-md driver's properties, the Hessian, elastic and fc3 chunks, and the
    training step.

    Args:
        energy_of: ``energy_of(positions (N, 3), strain (G, 3, 3)) -> (G,)`` eV,
            the strain applied as ``x @ (I + strain)``.
        positions: (N, 3) Å, where the derivatives are taken.
        lattice: (G, 3, 3) Å rows, the cells whose volume divides the virial.
        real: (G,) bool, the graphs that count (padding graphs do not).

    Returns:
        [`Predictions`][jmattersim.Predictions]: energy (G,) eV, forces
        ``-dE/dr`` (N, 3) eV/Å and stress ``dE/dε / V`` (G, 3, 3) eV/Å³ at ε = 0.
    """
    with jax.named_scope("forces_and_stress"):

        def total(positions, strain):
            e = energy_of(positions, strain)
            return jnp.sum(jnp.where(real, e, 0.0)), e

        strain = jnp.zeros_like(lattice)
        (_, e), (de_dr, de_deps) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            positions, strain
        )
        unit = jnp.eye(3, dtype=lattice.dtype)
        volume = jnp.abs(jnp.linalg.det(jnp.where(real[:, None, None], lattice, unit)))
        return Predictions(e, -de_dr, de_deps / volume[:, None, None])


def batch_energy_of(config: M3GNetConfig, params: Params, batch: Batch, **options: Any):
    """energy_of(positions (N, 3), strain (G, 3, 3) or None) -> (G,) eV of a host-built
    batch, its topology fixed (``options`` go to :func:`energies`)."""
    g = batch.graph
    topo = batch.topology

    def energy_of(positions: Array, strain: Array | None = None) -> Array:
        return energies(
            config,
            params,
            g.nodes["atom_types"],
            positions,
            g.globals["lattice"],
            g.n_node,
            topo,
            strain,
            **options,
        )

    return energy_of


def predict(
    config: M3GNetConfig,
    params: Params,
    batch: Batch,
    soft_normalize: bool = True,
    within_cutoffs: bool = False,
    remat: bool = False,
    derivatives: bool = True,
) -> Predictions:
    """Energies, forces (-dE/dr) and stresses (dE/d eps / V) of a host-built batch
    (``within_cutoffs``: its lists hold a skin; ``remat``: see :func:`energies`).
    Without ``derivatives``, energies only (forces and stress None)."""
    g = batch.graph
    energy_of = batch_energy_of(
        config,
        params,
        batch,
        soft_normalize=soft_normalize,
        within_cutoffs=within_cutoffs,
        remat=remat,
    )
    if not derivatives:
        return Predictions(energy_of(g.nodes["positions"]), None, None)
    return forces_and_stress(
        energy_of, g.nodes["positions"], g.globals["lattice"], jraph.get_graph_padding_mask(g)
    )


def with_overflow_nan(value: Array, overflow: Array) -> Array:
    """NaN where a capacity overflowed: never a silently wrong number."""
    return jnp.where(overflow, jnp.nan, value)


def energy_fn(
    config: M3GNetConfig,
    capacity: Capacity | None = None,
    *,
    soft_normalize: bool = True,
    remat: bool = False,
    **capacities: Any,
) -> Callable[[Params, Array, Array, Array], Array]:
    """A pure energy function of one periodic structure, differentiable in every input.

    The topology is rebuilt inside at every call within the static capacity; if
    the structure does not fit it, the energy is NaN (never a number from a
    truncated topology). ``jax.jit``, ``jax.grad`` (any argument, params
    included), ``jax.vmap`` (same-size structures), ``jax.hessian`` and
    ``jax.jvp`` apply.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig]
            (``model.config``).
        capacity: a [`Capacity`][jmattersim.Capacity], e.g. from
            [`capacity_for`][jmattersim.capacity_for].
        soft_normalize: apply the per-element scale and shift as
            ``atom_types @ scale`` (True), or those of each atom's most likely
            element (False, no gradient through them).
        remat: recompute each interaction block in the backward pass
            (``jax.checkpoint``): the same numbers, less memory for gradients.
        **capacities: the fields of a ``Capacity`` (``edges``,
            ``triplets``, ``neighbors``, ``pairs``, ...) instead of
            ``capacity``.

    Returns:
        ``energy(params, atom_types, positions, lattice) -> ()`` eV, where
        ``params`` is ``model.params``; atom_types (N, max_z + 1) one-hot or any
        distribution over elements; positions (N, 3) Cartesian Å; lattice (3, 3)
        Å, rows are lattice vectors. Its gradients: eV/Å in positions (minus the
        forces) and in lattice.
    """
    energy_and_overflow = unmasked_energy_fn(
        config, capacity or Capacity(**capacities), soft_normalize, remat
    )

    def energy(params: Params, atom_types: Array, positions: Array, lattice: Array) -> Array:
        return with_overflow_nan(*energy_and_overflow(params, atom_types, positions, lattice))

    return energy


def unmasked_energy_fn(
    config: M3GNetConfig, capacity: Capacity, soft_normalize: bool, remat: bool = False
) -> Callable[[Params, Array, Array, Array], tuple[Array, Array]]:
    """:func:`energy_fn`'s energy before the overflow mask, and the overflow flag:
    ``(params, atom_types, positions, lattice) -> (() eV, () bool)``."""

    def energy_and_overflow(params, atom_types, positions, lattice):
        n_node = jnp.array([positions.shape[0]])
        topo = topology(positions, lattice[None], n_node, config, capacity)
        e = energies(
            config,
            params,
            atom_types,
            positions,
            lattice[None],
            n_node,
            topo,
            soft_normalize=soft_normalize,
            remat=remat,
        )[0]
        return e, topo.overflow

    return energy_and_overflow
