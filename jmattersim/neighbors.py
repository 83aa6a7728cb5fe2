"""Periodic neighbour lists and triplets under ``jit``: static capacities, an
overflow flag, exact for any cell (image enumeration for cells shorter than
the cutoff).

Each graph's atoms form a dense block of ``max_atoms`` slots; every pair of
slots is tried against every lattice image in a static range, and the pairs
within the cutoff are compacted into ``max_edges`` slots (sender-major, as
the host builder orders them). Positions are wrapped into the cell first, so
the range ``|n_k| <= ceil(cutoff / width_k)`` suffices, where width_k is the
cell's perpendicular width along lattice vector k. Shifts are reported for the
positions as given. Too small a capacity sets ``overflow``; the energy
functions then return NaN rather than a wrong number.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .config import M3GNetConfig

Array = jnp.ndarray


class Topology(NamedTuple):
    """Edges (i, j, n) and triplets of a padded batch.

    senders, receivers: (E,) int; shifts: (E, 3) image n (float, integer-valued);
    edge_mask: (E,) bool; triplets: (T, 2) edge indices (ij, ik); triplet_mask:
    (T,) bool; overflow: () bool, True when a capacity was too small.
    """

    senders: Array
    receivers: Array
    shifts: Array
    edge_mask: Array
    triplets: Array
    triplet_mask: Array
    overflow: Array


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Static sizes of an in-jit topology.

    max_edges: edges in the whole batch; max_triplets: triplets in the batch;
    max_neighbors: bonds per atom within the three-body cutoff; images: largest
    |n_k| tried along each lattice vector; max_atoms: atoms per graph (batches).
    """

    max_edges: int
    max_triplets: int
    max_neighbors: int
    images: tuple[int, int, int] = (1, 1, 1)
    max_atoms: int | None = None

    def scaled(self, factor: float) -> Capacity:
        """A capacity ``factor`` times larger (one more image per direction)."""
        return Capacity(
            max_edges=math.ceil(self.max_edges * factor),
            max_triplets=math.ceil(self.max_triplets * factor),
            max_neighbors=math.ceil(self.max_neighbors * factor),
            images=tuple(k + 1 for k in self.images),
            max_atoms=self.max_atoms,
        )


def image_range(lattice: np.ndarray | Array, cutoff: float, xp=np):
    """(..., 3) largest |n_k| needed along each lattice vector of (..., 3, 3) cells."""
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    volume = xp.abs(xp.sum(a * xp.cross(b, c), axis=-1))
    areas = xp.stack([xp.linalg.norm(xp.cross(b, c), axis=-1),
                      xp.linalg.norm(xp.cross(c, a), axis=-1),
                      xp.linalg.norm(xp.cross(a, b), axis=-1)], axis=-1)
    widths = volume[..., None] / areas
    return xp.ceil(cutoff / widths).astype(int)


def capacity_for(
    structures: Sequence[Atoms], config: M3GNetConfig, headroom: float = 1.25,
    batch_size: int | None = None,
) -> Capacity:
    """A capacity that holds each of ``structures`` (or any ``batch_size`` of them
    together) with ``headroom``: measured on the host with :mod:`jmattersim.graph`."""
    from .graph import structure_graph

    graphs = [structure_graph(a, config) for a in structures]
    per = batch_size or 1
    edges = sorted((g.n_edge for g in graphs), reverse=True)[:per]
    trips = sorted((g.n_triplet for g in graphs), reverse=True)[:per]
    # bonds per centre within the three-body cutoff: the distinct ij of its triplets
    k3 = max(
        int(np.bincount(g.senders[np.unique(g.triplets[:, 0])]).max()) if g.n_triplet else 1
        for g in graphs
    )
    images = np.max([image_range(np.asarray(a.cell.array), config.cutoff) for a in structures],
                    axis=0)
    return Capacity(
        max_edges=math.ceil(sum(edges) * headroom) + 1,
        max_triplets=math.ceil(sum(trips) * headroom) + 1,
        max_neighbors=math.ceil(k3 * headroom) + 1,
        images=tuple(int(k) for k in images),
        max_atoms=max(len(a) for a in structures),
    )


def _images(k: Sequence[int]) -> np.ndarray:
    ranges = [range(-int(n), int(n) + 1) for n in k]
    return np.array(list(itertools.product(*ranges)), dtype=np.int32)


def topology(
    positions: Array,
    lattice: Array,
    n_node: Array,
    config: M3GNetConfig,
    capacity: Capacity,
    node_mask: Array | None = None,
) -> Topology:
    """Neighbours and triplets of a batch of graphs, under jit.

    positions (N, 3) Å, nodes of each graph contiguous, in graph order; lattice
    (G, 3, 3) rows; n_node (G,) atoms per graph (padding graphs may hold padding
    nodes, which ``node_mask`` (N,) excludes). Returns a :class:`Topology`.
    """
    n_graph, n_atoms = lattice.shape[0], positions.shape[0]
    block = capacity.max_atoms or n_atoms
    if node_mask is None:
        node_mask = jnp.ones(n_atoms, bool)
    dtype = positions.dtype
    positions = jax.lax.stop_gradient(positions)
    lattice = jax.lax.stop_gradient(lattice)

    node_graph = jnp.repeat(jnp.arange(n_graph), n_node, total_repeat_length=n_atoms)
    start = jnp.cumsum(n_node) - n_node
    local = jnp.arange(block)
    slots = start[:, None] + local[None, :]  # (G, B) node index of each slot
    slot_ok = (local[None, :] < n_node[:, None]) & (slots < n_atoms)
    slots = jnp.where(slot_ok, slots, 0)
    slot_ok = slot_ok & node_mask[slots]

    # wrap into the cell: the static image range then suffices
    frac = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(lattice)[node_graph])
    wrap = jnp.floor(frac)
    wrapped = positions - jnp.einsum("ni,nij->nj", wrap, lattice[node_graph])

    images = _images(capacity.images)
    zero_image = int(np.flatnonzero((images == 0).all(axis=1))[0])
    offsets = jnp.einsum("mi,gij->gmj", jnp.asarray(images, dtype), lattice)  # (G, M, 3)
    p = wrapped[slots]  # (G, B, 3)
    vec = p[:, :, None, None, :] - (p[:, None, :, None, :] + offsets[:, None, None, :, :])
    d2 = jnp.sum(vec * vec, axis=-1)  # (G, B, B, M)
    same = jnp.eye(block, dtype=bool)[None, :, :, None] & (
        jnp.arange(len(images)) == zero_image)[None, None, None, :]
    pair_ok = slot_ok[:, :, None, None] & slot_ok[:, None, :, None] & ~same
    within = pair_ok & (d2 < config.cutoff**2)

    flat = within.reshape(-1)
    n_edges = jnp.sum(flat)
    (idx,) = jnp.nonzero(flat, size=capacity.max_edges, fill_value=0)
    edge_mask = jnp.arange(capacity.max_edges) < n_edges
    g, a, b, m = jnp.unravel_index(idx, within.shape)
    senders, receivers = slots[g, a], slots[g, b]
    shifts = (jnp.asarray(images)[m] + wrap[senders] - wrap[receivers]).astype(dtype)
    shifts = jnp.where(edge_mask[:, None], shifts, 0)
    d2_edge = d2.reshape(-1)[idx]

    # triplets: a table of each atom's bonds within the three-body cutoff
    k = capacity.max_neighbors
    in3 = edge_mask & (d2_edge <= config.threebody_cutoff**2)
    count = jax.ops.segment_sum(in3.astype(jnp.int32), senders, num_segments=n_atoms)
    first = jnp.cumsum(count) - count
    rank = jnp.cumsum(in3) - 1 - first[senders]
    row = jnp.where(in3 & (rank < k), senders, n_atoms)  # out of range: dropped
    table = jnp.zeros((n_atoms, k), jnp.int32).at[row, rank].set(
        jnp.arange(capacity.max_edges, dtype=jnp.int32), mode="drop")
    slot = jnp.arange(k)
    held = slot[None, :] < count[:, None]  # (N, k)
    pair = held[:, :, None] & held[:, None, :] & (slot[:, None] != slot[None, :])[None]
    n_trip = jnp.sum(pair)
    (tidx,) = jnp.nonzero(pair.reshape(-1), size=capacity.max_triplets, fill_value=0)
    ti, ta, tb = jnp.unravel_index(tidx, pair.shape)
    triplets = jnp.stack([table[ti, ta], table[ti, tb]], axis=1)
    triplet_mask = jnp.arange(capacity.max_triplets) < n_trip

    needed = image_range(lattice, config.cutoff, xp=jnp)  # (G, 3)
    graph_real = jax.ops.segment_max(node_mask.astype(jnp.int32), node_graph,
                                     num_segments=n_graph) > 0
    too_few_images = jnp.any(graph_real[:, None] & (needed > jnp.asarray(capacity.images)))
    overflow = (
        (n_edges > capacity.max_edges)
        | (n_trip > capacity.max_triplets)
        | (jnp.max(count) > k)
        | too_few_images
        | jnp.any(graph_real & (n_node > block))
    )
    return Topology(senders, receivers, shifts, edge_mask, triplets, triplet_mask, overflow)
