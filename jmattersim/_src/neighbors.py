"""Periodic neighbour lists and triplets under ``jit``: static capacities, an
overflow flag, exact for any cell (image enumeration for cells shorter than
the cutoff, triclinic, partly periodic).

Candidates are packed: graph g contributes ``n_g^2 * M_g`` candidate pairs
(i, j, image), where ``M_g = prod(2 k_g + 1)`` and ``k_g = ceil(cutoff / width)``
along each periodic lattice vector (width: the cell's perpendicular width;
0 along a non-periodic one). All candidates of a batch share one flat axis of
``max_pairs`` slots, so a 2-atom cell that needs many images and a 100-atom cell
that needs few cost what each needs, not the batch's worst case. Candidates
within the cutoff are compacted into ``max_edges`` slots (sender-major, as the
host builder orders them). Positions are wrapped into the cell first, so the
image range suffices; shifts are reported for the positions as given.

Too small a capacity sets ``overflow``; the energy functions then return NaN
rather than a wrong number, and the Python drivers re-allocate and retry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .arrays import Array
from .config import M3GNetConfig
from .geometry import candidate_pairs, image_range
from .graph import neighbors_in_threebody, structure_graph
from .padding import bucket
from .topology import Topology


@dataclasses.dataclass(frozen=True)
class TopologyCapacity:
    """Static sizes of a topology built inside ``jit`` (counts over the whole batch).

    Size one from the data with [`capacity_for`][jmattersim.capacity_for]. A
    structure that does not fit makes the energy NaN.

    Attributes:
        max_edges: edges (neighbour pairs within the cutoff).
        max_triplets: triplets (ordered pairs of bonds of one atom).
        max_neighbors: bonds of one atom within the three-body cutoff.
        images: largest |n_k| per lattice vector that the default ``max_pairs``
            allows for.
        max_atoms: atoms per structure that the default ``max_pairs`` allows for.
        max_pairs: candidate pairs ``sum_g n_g^2 M_g``, M_g the lattice images
            tried for structure g (default: from ``images`` and ``max_atoms``).
    """

    max_edges: int
    max_triplets: int
    max_neighbors: int
    images: tuple[int, int, int] = (1, 1, 1)
    max_atoms: int | None = None
    max_pairs: int | None = None

    def pairs(self, n_atoms: int) -> int:
        """The candidate budget.

        Args:
            n_atoms: node slots of the batch (used when ``max_atoms`` is None).

        Returns:
            ``max_pairs``, or the default from ``images`` and the atom count.
        """
        if self.max_pairs is not None:
            return self.max_pairs
        m = int(np.prod([2 * k + 1 for k in self.images]))
        return (self.max_atoms or n_atoms) ** 2 * m

    def scaled(self, factor: float) -> TopologyCapacity:
        """A larger capacity, for re-allocation after an overflow.

        Args:
            factor: growth of every count (images grow by one).

        Returns:
            The new capacity.
        """
        grow = lambda n: None if n is None else math.ceil(n * factor)  # noqa: E731
        return dataclasses.replace(
            self,
            max_edges=grow(self.max_edges),
            max_triplets=grow(self.max_triplets),
            max_neighbors=grow(self.max_neighbors),
            max_pairs=grow(self.max_pairs),
            images=tuple(k + 1 for k in self.images),
        )

    def covers(self, other: TopologyCapacity) -> bool:
        """Whether every count of ``other`` fits in this capacity.

        Args:
            other: another capacity.

        Returns:
            True if none of its counts exceeds this one's.
        """
        fields = ("max_edges", "max_triplets", "max_neighbors", "max_pairs")
        return all(getattr(self, f) >= getattr(other, f) for f in fields)

    def union(self, other: TopologyCapacity) -> TopologyCapacity:
        """The smallest capacity covering both (the sticky growth of a stream).

        Args:
            other: another capacity.

        Returns:
            The elementwise maximum.
        """
        return TopologyCapacity(
            max_edges=max(self.max_edges, other.max_edges),
            max_triplets=max(self.max_triplets, other.max_triplets),
            max_neighbors=max(self.max_neighbors, other.max_neighbors),
            max_pairs=max(self.pairs(0), other.pairs(0)),
        )


def bucket_up(n: int) -> int:
    """n rounded up to the ladder of :func:`jmattersim._src.padding.bucket`: few shapes."""
    return bucket(n - 1)


def capacity_for(
    structures: Sequence[Atoms],
    config: M3GNetConfig,
    headroom: float = 1.25,
    batch_size: int | None = None,
    bucketed: bool = False,
) -> TopologyCapacity:
    """A capacity that holds each of ``structures``, measured on the host.

    Args:
        structures: ASE structures the capacity must hold.
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        headroom: factor on every measured count (room for atoms to move).
        batch_size: hold any ``batch_size`` of the structures together (for the
            batch functions); default one at a time.
        bucketed: round every count up to a ladder of sizes (fewer compilations).

    Returns:
        A [`TopologyCapacity`][jmattersim.batch.TopologyCapacity].
    """
    graphs = [structure_graph(a, config) for a in structures]
    per = batch_size or 1
    top = lambda values: sum(sorted(values, reverse=True)[:per])  # noqa: E731
    pairs = [candidate_pairs(g.n_node, g.cell, g.pbc, config.cutoff) for g in graphs]
    k3 = max(neighbors_in_threebody(g) for g in graphs)
    round_ = bucket_up if bucketed else (lambda n: n)
    return TopologyCapacity(
        max_edges=round_(math.ceil(top(g.n_edge for g in graphs) * headroom) + 1),
        max_triplets=round_(math.ceil(top(g.n_triplet for g in graphs) * headroom) + 1),
        max_neighbors=round_(math.ceil(k3 * headroom) + 1),
        max_pairs=round_(top(pairs)),
    )


def topology(
    positions: Array,
    lattice: Array,
    n_node: Array,
    config: M3GNetConfig,
    capacity: TopologyCapacity,
    node_mask: Array | None = None,
    pbc: Array | None = None,
) -> Topology:
    """Neighbours and triplets of a batch of graphs, under jit.

    positions (N, 3) Å, nodes of each graph contiguous, in graph order; lattice
    (G, 3, 3) rows; n_node (G,) atoms per graph (padding graphs may hold padding
    nodes, which ``node_mask`` (N,) excludes); pbc (G, 3) bool, periodic
    directions (default all). Returns a :class:`Topology`; no gradient flows
    through it (the energy is continuous where the topology changes).
    """
    n_graph, n_atoms = lattice.shape[0], positions.shape[0]
    if node_mask is None:
        node_mask = jnp.ones(n_atoms, bool)
    pbc = jnp.ones((n_graph, 3), bool) if pbc is None else jnp.asarray(pbc, bool)
    dtype = positions.dtype
    positions = jax.lax.stop_gradient(positions)
    lattice = jax.lax.stop_gradient(lattice)

    node_graph = jnp.repeat(jnp.arange(n_graph), n_node, total_repeat_length=n_atoms)
    n_real = jax.ops.segment_sum(node_mask.astype(jnp.int32), node_graph, num_segments=n_graph)
    node_start = jnp.cumsum(n_node) - n_node

    # wrap into the cell along periodic directions: the image range then suffices
    frac = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(lattice)[node_graph])
    wrap = jnp.where(pbc[node_graph], jnp.floor(frac), 0.0)
    wrapped = positions - jnp.einsum("ni,nij->nj", wrap, lattice[node_graph])

    k = image_range(lattice, config.cutoff, pbc, xp=jnp)  # (G, 3)
    width = 2 * k + 1
    n_images = jnp.prod(width, axis=1)
    count = n_real * n_real * n_images  # candidates per graph
    end = jnp.cumsum(count)
    max_pairs = capacity.pairs(n_atoms)
    p = jnp.arange(max_pairs)
    g = jnp.minimum(jnp.searchsorted(end, p, side="right"), n_graph - 1)
    valid = p < end[-1]
    q = p - (end - count)[g]
    n_g = jnp.maximum(n_real[g], 1)
    m = q % n_images[g]
    t = q // n_images[g]
    i = node_start[g] + t // n_g
    j = node_start[g] + t % n_g
    w = width[g]
    image = (
        jnp.stack([m // (w[:, 1] * w[:, 2]), (m // w[:, 2]) % w[:, 1], m % w[:, 2]], axis=1) - k[g]
    )
    i, j = jnp.where(valid, i, 0), jnp.where(valid, j, 0)
    vec = wrapped[i] - (wrapped[j] + jnp.einsum("pi,pij->pj", image.astype(dtype), lattice[g]))
    d2 = jnp.sum(vec * vec, axis=-1)
    self_pair = (i == j) & jnp.all(image == 0, axis=1)
    within = valid & ~self_pair & (d2 < config.cutoff**2)

    n_edges = jnp.sum(within)
    (idx,) = jnp.nonzero(within, size=capacity.max_edges, fill_value=0)
    edge_mask = jnp.arange(capacity.max_edges) < n_edges
    senders, receivers = i[idx], j[idx]
    shifts = image[idx].astype(dtype) + wrap[senders] - wrap[receivers]
    shifts = jnp.where(edge_mask[:, None], shifts, 0)
    triplets, triplet_mask, trip_overflow = build_triplets(
        senders,
        d2[idx],
        edge_mask,
        n_atoms,
        config.threebody_cutoff,
        capacity.max_neighbors,
        capacity.max_triplets,
    )
    overflow = (n_edges > capacity.max_edges) | (end[-1] > max_pairs) | trip_overflow
    return Topology(senders, receivers, shifts, edge_mask, triplets, triplet_mask, overflow)


def build_triplets(
    senders: Array,
    d2: Array,
    edge_mask: Array,
    n_atoms: int,
    cutoff: float,
    max_neighbors: int,
    max_triplets: int,
) -> tuple[Array, Array, Array]:
    """Ordered pairs (ij, ik), ij != ik, of one centre's bonds within ``cutoff``.

    senders must be sorted (edges sender-major); d2 (E,) squared lengths. Returns
    triplets (max_triplets, 2) int32 edge indices, triplet_mask (max_triplets,) and
    an overflow flag (too many triplets, or an atom with more than
    ``max_neighbors`` bonds within the cutoff).
    """
    k = max_neighbors
    in3 = edge_mask & (d2 <= cutoff**2)
    count = jax.ops.segment_sum(in3.astype(jnp.int32), senders, num_segments=n_atoms)
    first = jnp.cumsum(count) - count
    rank = jnp.cumsum(in3) - 1 - first[senders]
    row = jnp.where(in3 & (rank < k), senders, n_atoms)  # out of range: dropped
    table = (
        jnp.zeros((n_atoms, k), jnp.int32)
        .at[row, rank]
        .set(jnp.arange(senders.shape[0], dtype=jnp.int32), mode="drop")
    )
    slot = jnp.arange(k)
    held = slot[None, :] < count[:, None]  # (N, k)
    pair = held[:, :, None] & held[:, None, :] & (slot[:, None] != slot[None, :])[None]
    n_trip = jnp.sum(pair)
    (tidx,) = jnp.nonzero(pair.reshape(-1), size=max_triplets, fill_value=0)
    ti, ta, tb = jnp.unravel_index(tidx, pair.shape)
    triplets = jnp.stack([table[ti, ta], table[ti, tb]], axis=1)
    triplet_mask = jnp.arange(max_triplets) < n_trip
    overflow = (n_trip > max_triplets) | (jnp.max(count) > k)
    return triplets, triplet_mask, overflow
