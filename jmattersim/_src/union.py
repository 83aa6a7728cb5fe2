"""Many periodic systems as one padded disjoint union, advanced together under ``jit``.

The systems' atoms share one axis (each system's atoms contiguous, in order); each
has its own cell, temperature and state. One skin list (:class:`SkinList`) holds the
edges within ``cutoff + skin`` and the triplets within ``threebody_cutoff + skin`` of
every system, built by the packed image search of
:func:`jmattersim._src.neighbors.find_edges` (exact for cells shorter than the
cutoff), and it is rebuilt under ``lax.cond`` only once an atom has moved half the
skin. At every step the energy keeps the edges and triplets within the cutoffs and
gathers them into the model's capacity before the model runs, so a step does the
model work of the real topology; forces and stresses come from one reverse pass
(:func:`jmattersim._src.energy.forces_and_stress`).

A system that fails (non-finite energy or forces, two atoms closer than
``min_distance``) keeps its last good state, loses its edges and stops; the others
go on. Positions are never wrapped: the list's image shifts are for the positions
as they are, so trajectories stay continuous.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from ase import Atoms

from .arrays import Array
from .capacity import Capacity, model_capacity
from .config import M3GNetConfig
from .energy import energies, forces_and_stress, restrict_to_cutoffs
from .neighbors import build_triplets, capacity_for, find_edges
from .topology import Topology

RUNNING, NON_FINITE, COLLIDED, COLLAPSED = 0, 1, 2, 3
REASONS = {
    NON_FINITE: "non-finite energy or forces",
    COLLIDED: "atoms collided",
    COLLAPSED: "the cell collapsed (its neighbour pairs grew past their limit)",
}
"""Why a system failed, by its status code (0: running)."""

PADDING = 20
"""The status of a union's padding slots (never running)."""


class Systems(NamedTuple):
    """What does not change as the systems move (a pytree).

    Attributes:
        atom_types: (N, max_z + 1) one-hot rows.
        mass: (N,) amu.
        n_node: (G,) atoms per system.
        node_graph: (N,) the system of each atom.
        kT: (G,) eV, each system's thermostat target (k_B T).
        pressure: (G,) eV/Å³, each system's barostat target (or None).
        compressibility: (G,) Å³/eV, the barostat's guess of each system's
            compressibility (or None).
    """

    atom_types: Array
    mass: Array
    n_node: Array
    node_graph: Array
    kT: Array
    pressure: Array | None = None
    compressibility: Array | None = None


class SkinList(NamedTuple):
    """A topology with a skin, and where it was built (a pytree).

    Attributes:
        topology: edges within ``cutoff + skin`` (shifts for the positions as
            given), triplets within ``threebody_cutoff + skin``; ``overflow`` sticky.
        reference: (N, 3) Å, the positions it was built at.
        lattice: (G, 3, 3) Å, the cells it was built in.
    """

    topology: Topology
    reference: Array
    lattice: Array


class State(NamedTuple):
    """The moving part of the union (a pytree).

    Attributes:
        positions: (N, 3) Å, Cartesian, unwrapped.
        momenta: (N, 3) amu Å/(Å sqrt(amu/eV)) (ASE's momenta).
        lattice: (G, 3, 3) Å, rows are lattice vectors.
        forces: (N, 3) eV/Å at ``positions``.
        energy: (G,) eV.
        stress: (G, 3, 3) eV/Å³ (ASE's sign).
        key: (G, 2) uint32, each system's random key (Langevin noise).
        status: (G,) int32, 0 while running, else a code of :data:`REASONS`.
        steps: (G,) int32, the time steps each system has completed.
        overflow: () bool, a capacity overflowed since the chunk began (redo it).
        nbrs: the :class:`SkinList`.
        thermostat: the integrator's bath variables (a pytree, or None).
    """

    positions: Array
    momenta: Array
    lattice: Array
    forces: Array
    energy: Array
    stress: Array
    key: Array
    status: Array
    steps: Array
    overflow: Array
    nbrs: SkinList
    thermostat: Any = None


class Capacities(NamedTuple):
    """The two static capacities of a union: the skin list's and the model's."""

    list: Capacity
    model: Capacity

    def scaled(self, factor: float) -> Capacities:
        """Both capacities grown by ``factor`` (after an overflow)."""
        return Capacities(self.list.scaled(factor), self.model.scaled(factor))

    @classmethod
    def measured(
        cls, structures: Sequence[Atoms], config: M3GNetConfig, multiplier: float, skin: float
    ) -> Capacities:
        """The capacities that hold ``structures`` together, measured on the host:
        the list's with ``skin`` and ``multiplier`` headroom, the model's from the
        counts within the cutoffs (:func:`~jmattersim._src.capacity.model_capacity`)."""
        count = len(structures)
        within = capacity_for(structures, config, 1.0, count)
        return cls(
            capacity_for(structures, config, multiplier, count, skin=skin),
            model_capacity(within.edges, within.triplets, multiplier),
        )

    def covering(self, other: Capacities) -> Capacities:
        """The larger of the two in every count."""

        def larger(a: Capacity, b: Capacity) -> Capacity:
            sizes = {
                f: max(x, y)
                for f in ("edges", "triplets", "neighbors", "pairs")
                if (x := getattr(a, f)) is not None and (y := getattr(b, f)) is not None
            }
            return dataclasses.replace(a, **sizes)

        return Capacities(larger(self.list, other.list), larger(self.model, other.model))


def build_list(
    positions: Array,
    lattice: Array,
    systems: Systems,
    running: Array,
    config: M3GNetConfig,
    skin: float,
    capacity: Capacity,
) -> SkinList:
    """The skin list of the running systems (``running`` (G,) bool) at ``positions``."""
    node_mask = running[systems.node_graph]
    senders, receivers, shifts, edge_mask, d2, overflow = find_edges(
        positions,
        lattice,
        systems.n_node,
        node_mask,
        None,
        config.cutoff + skin,
        capacity.edges,
        max_pairs=capacity.pair_slots(positions.shape[0]),
    )
    triplets, triplet_mask, trip_overflow = build_triplets(
        senders,
        d2,
        edge_mask,
        positions.shape[0],
        config.threebody_cutoff + skin,
        capacity.neighbors,
        capacity.triplets,
    )
    index = lambda x: x.astype(jnp.int32)  # noqa: E731 (int64 under x64)
    topo = Topology(
        index(senders),
        index(receivers),
        shifts,
        edge_mask,
        index(triplets),
        triplet_mask,
        overflow | trip_overflow,
    )
    return SkinList(topo, jax.lax.stop_gradient(positions), jax.lax.stop_gradient(lattice))


def starting_state(
    positions: Array, momenta: Array, lattice: Array, key: Array, capacity: Capacity
) -> State:
    """A state before its first evaluation: no forces yet, and an empty list of
    ``capacity`` that the first evaluation rebuilds (its reference is infinitely far)."""
    n, dtype = positions.shape[0], positions.dtype
    n_graph = lattice.shape[0]
    empty = Topology(
        jnp.zeros(capacity.edges, jnp.int32),
        jnp.zeros(capacity.edges, jnp.int32),
        jnp.zeros((capacity.edges, 3), dtype),
        jnp.zeros(capacity.edges, bool),
        jnp.zeros((capacity.triplets, 2), jnp.int32),
        jnp.zeros(capacity.triplets, bool),
        jnp.zeros((), bool),
    )
    status = jnp.zeros(n_graph, jnp.int32)
    return State(
        positions,
        momenta,
        lattice,
        jnp.zeros_like(positions),
        jnp.zeros(n_graph, dtype),
        jnp.zeros((n_graph, 3, 3), dtype),
        key,
        status,
        status,
        jnp.zeros((), bool),
        SkinList(empty, jnp.full((n, 3), jnp.inf, dtype), lattice),
    )


def with_empty_list(state: State, capacity: Capacity) -> State:
    """``state`` with an empty list of ``capacity`` and no overflow: the next
    evaluation rebuilds the list (a new union, or a redo with new capacities)."""
    empty = starting_state(state.positions, state.momenta, state.lattice, state.key, capacity)
    return state._replace(nbrs=empty.nbrs, overflow=empty.overflow)


def union_fns(
    config: M3GNetConfig,
    params: Any,
    systems: Systems,
    capacities: Capacities,
    skin: float,
    min_distance: float,
    max_edges: Array | None = None,
) -> Callable[..., State]:
    """``evaluate(state, positions, momenta, lattice=None) -> State`` of a union: the
    systems moved to ``positions`` (N, 3) Å with ``momenta`` (and to the cells
    ``lattice`` (G, 3, 3) Å when given), the list refreshed once it may have missed
    a pair, energies, forces and stresses from one reverse pass, and a system that
    fails there stopped in its previous state. ``max_edges`` (G,): a system with
    more edges within the cutoff fails as a collapsing cell.
    """
    cutoff2 = config.cutoff**2
    cutoffs = (config.cutoff, config.threebody_cutoff)
    n_graph = systems.n_node.shape[0]
    node_graph = systems.node_graph

    def refreshed(nbrs: SkinList, positions, lattice, running) -> SkinList:
        # In the frame of the cells the list was built in (positions @ M), an edge's
        # vector has moved by at most twice the largest displacement there, and the
        # map back stretches lengths by at most M's largest singular value: the list
        # holds every pair within a cutoff while (cutoff + skin - 2 moved) / stretch
        # stays above it.
        frame = jax.lax.stop_gradient(jnp.linalg.solve(lattice, nbrs.lattice))  # (G, 3, 3)
        there = jnp.einsum("ni,nij->nj", positions, frame[node_graph])
        moved = jnp.sqrt(jnp.sum((there - nbrs.reference) ** 2, axis=-1))
        moved = jax.ops.segment_max(
            jnp.where(running[node_graph], moved, 0.0), node_graph, num_segments=n_graph
        )
        stretch = jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(jnp.swapaxes(frame, 1, 2) @ frame), -1))
        safe = jnp.all(jnp.stack([c + skin - 2 * moved >= c * stretch for c in cutoffs]), axis=0)
        rebuild = jnp.any(running & ~safe)

        def build(_):
            fresh = build_list(positions, lattice, systems, running, config, skin, capacities.list)
            topo = fresh.topology
            return fresh._replace(
                topology=topo._replace(overflow=topo.overflow | nbrs.topology.overflow)
            )

        return jax.lax.cond(rebuild, build, lambda _: nbrs, None)

    def properties(positions, lattice, nbrs: SkinList, running):
        topo = nbrs.topology
        topo = topo._replace(edge_mask=topo.edge_mask & running[node_graph[topo.senders]])
        # the edges within the cutoffs now: whether they fit the model's capacity, and
        # each system's closest pair and edge count
        edge_graph = node_graph[topo.senders]
        offsets = jnp.einsum("ei,eij->ej", topo.shifts, lattice[edge_graph])
        vectors = jax.lax.stop_gradient(
            positions[topo.senders] - (positions[topo.receivers] + offsets)
        )
        within = restrict_to_cutoffs(topo, vectors, config)
        d2 = jnp.where(within.edge_mask, jnp.sum(vectors * vectors, axis=-1), cutoff2)
        closest2 = jax.ops.segment_min(d2, edge_graph, num_segments=n_graph)
        edges = jax.ops.segment_sum(
            within.edge_mask.astype(jnp.int32), edge_graph, num_segments=n_graph
        )
        overflow = (
            topo.overflow
            | (jnp.sum(within.edge_mask) > capacities.model.edges)
            | (jnp.sum(within.triplet_mask) > capacities.model.triplets)
        )

        def energy_of(r, strain):
            return energies(
                config,
                params,
                systems.atom_types,
                r,
                lattice,
                systems.n_node,
                topo,
                strain,
                within_cutoffs=True,
                compact=capacities.model,
            )

        preds = forces_and_stress(energy_of, positions, lattice, running)
        return preds, closest2, edges, overflow

    def evaluate(
        state: State, positions: Array, momenta: Array, lattice: Array | None = None
    ) -> State:
        lattice = state.lattice if lattice is None else lattice
        running = state.status == RUNNING
        nbrs = refreshed(state.nbrs, positions, lattice, running)
        preds, closest2, edges, overflow = properties(positions, lattice, nbrs, running)
        atom_finite = jnp.all(jnp.isfinite(preds.forces) & jnp.isfinite(positions), axis=-1)
        finite = jnp.isfinite(preds.energy) & (
            jax.ops.segment_min(atom_finite.astype(jnp.int32), node_graph, num_segments=n_graph) > 0
        )
        collided = closest2 < min_distance**2
        collapsed = jnp.zeros(n_graph, bool) if max_edges is None else edges > max_edges
        fails = running & ~overflow & (~finite | collided | collapsed)
        reason = jnp.where(~finite, NON_FINITE, jnp.where(collided, COLLIDED, COLLAPSED))
        status = jnp.where(fails, reason, state.status).astype(jnp.int32)
        moving = status == RUNNING
        moves = moving[node_graph][:, None]
        return state._replace(
            positions=jnp.where(moves, positions, state.positions),
            momenta=jnp.where(moves, momenta, state.momenta),
            lattice=jnp.where(moving[:, None, None], lattice, state.lattice),
            forces=jnp.where(moves, preds.forces, state.forces),
            energy=jnp.where(moving, preds.energy, state.energy),
            stress=jnp.where(moving[:, None, None], preds.stress, state.stress),
            status=status,
            overflow=state.overflow | overflow,
            nbrs=nbrs,
        )

    return evaluate
