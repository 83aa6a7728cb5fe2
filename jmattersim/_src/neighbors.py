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
image range suffices; shifts are reported for the positions as given. One
structure with a static image range (the jax-md lists) lays the same candidates
out as an (N, N, M) block instead, with no per-candidate integer division.

Too small a capacity sets ``overflow``; the energy functions then return NaN
rather than a wrong number, and the Python drivers re-allocate and retry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .arrays import Array
from .capacity import Capacity, bucket
from .config import M3GNetConfig
from .geometry import candidate_pairs, image_range
from .graph import neighbors_in_threebody, structure_graph
from .topology import Topology


def capacity_for(
    structures: Sequence[Atoms],
    config: M3GNetConfig,
    headroom: float = 1.25,
    batch_size: int | None = None,
    bucketed: bool = False,
    skin: float = 0.0,
) -> Capacity:
    """A capacity that holds each of ``structures``, measured on the host.

    Args:
        structures: ASE structures the capacity must hold.
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        headroom: factor on every measured count (room for atoms to move).
        batch_size: hold any ``batch_size`` of the structures together (for the
            batch functions); default one at a time.
        bucketed: round every count up to a ladder of sizes (fewer compilations).
        skin: Å added to both cutoffs (a list that stays valid until an atom
            has moved ``skin / 2``).

    Returns:
        A [`Capacity`][jmattersim.Capacity] for topologies built under ``jit``
        (edges, triplets, neighbors and pairs set).
    """
    graphs = [structure_graph(a, config, skin) for a in structures]
    per = batch_size or 1
    top = lambda values: sum(sorted(values, reverse=True)[:per])  # noqa: E731
    pairs = [candidate_pairs(g.n_node, g.cell, g.pbc, config.cutoff + skin) for g in graphs]
    k3 = max(neighbors_in_threebody(g) for g in graphs)
    round_ = (lambda n: bucket(n - 1)) if bucketed else (lambda n: n)  # noqa: E731
    return Capacity(
        edges=round_(math.ceil(top(g.n_edge for g in graphs) * headroom) + 1),
        triplets=round_(math.ceil(top(g.n_triplet for g in graphs) * headroom) + 1),
        neighbors=round_(math.ceil(k3 * headroom) + 1),
        pairs=round_(top(pairs)),
    )


def topology(
    positions: Array,
    lattice: Array,
    n_node: Array,
    config: M3GNetConfig,
    capacity: Capacity,
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
    n_atoms = positions.shape[0]
    senders, receivers, shifts, edge_mask, d2, overflow = find_edges(
        positions,
        lattice,
        n_node,
        node_mask,
        pbc,
        config.cutoff,
        capacity.edges,
        max_pairs=capacity.pair_slots(n_atoms),
    )
    triplets, triplet_mask, trip_overflow = build_triplets(
        senders,
        d2,
        edge_mask,
        n_atoms,
        config.threebody_cutoff,
        capacity.neighbors,
        capacity.triplets,
    )
    return Topology(
        senders, receivers, shifts, edge_mask, triplets, triplet_mask, overflow | trip_overflow
    )


def find_edges(
    positions: Array,
    lattice: Array,
    n_node: Array,
    node_mask: Array | None,
    pbc: Array | None,
    cutoff: float,
    max_edges: int,
    *,
    max_pairs: int | None = None,
    images: tuple[int, int, int] | None = None,
    frac: Array | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Every edge (i, j, n) within ``cutoff`` of a batch of graphs, under jit.

    Arguments as :func:`topology`'s (node_mask None: all real; pbc None: all
    periodic); ``max_edges`` edge slots. The candidates are packed (``max_pairs``
    slots, ``sum_g n_g^2 M_g``; the module's docstring), or, for one structure
    (G = 1, real atoms first), every pair against every image with ``|n_k| <=
    images[k]`` (static; N² prod(2 images + 1) slots, laid out without integer
    division). ``frac`` (N, 3): the fractional coordinates of ``positions``, where
    the caller has them (spares inverting the lattices).

    Returns senders, receivers (max_edges,) int (sender-major, then receiver, then
    image), shifts (max_edges, 3) float, edge_mask (max_edges,), squared lengths
    (max_edges,) Å² (inf where masked) and overflow () bool (too many candidates or
    edges, or a cell that needs more than ``images``).
    """
    n_graph, n_atoms = lattice.shape[0], positions.shape[0]
    if node_mask is None:
        node_mask = jnp.ones(n_atoms, bool)
    pbc = jnp.ones((n_graph, 3), bool) if pbc is None else jnp.asarray(pbc, bool)
    dtype = positions.dtype
    positions, lattice, frac = jax.lax.stop_gradient((positions, lattice, frac))

    # wrap into the cell along periodic directions: the image range then suffices
    node_graph = jnp.repeat(jnp.arange(n_graph), n_node, total_repeat_length=n_atoms)
    if frac is None:
        frac = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(lattice)[node_graph])
    wrap = jnp.where(pbc[node_graph], jnp.floor(frac), 0.0)
    wrapped = positions - jnp.einsum("ni,nij->nj", wrap, lattice[node_graph])
    k = image_range(lattice, cutoff, pbc, xp=jnp)  # (G, 3)

    if images is None:
        n_real = jax.ops.segment_sum(node_mask.astype(jnp.int32), node_graph, n_graph)
        g, i, j, image, valid, overflow = _packed(n_node, n_real, k, max_pairs)
    else:
        g, i, j, image, valid, overflow = _every_image(node_mask, k, images)
    i, j = jnp.where(valid, i, 0), jnp.where(valid, j, 0)
    vec = wrapped[i] - (wrapped[j] + jnp.einsum("pi,pij->pj", image.astype(dtype), lattice[g]))
    d2 = jnp.sum(vec * vec, axis=-1)
    self_pair = (i == j) & jnp.all(image == 0, axis=1)
    within = valid & ~self_pair & (d2 < cutoff**2)

    n_edges = jnp.sum(within)
    (idx,) = jnp.nonzero(within, size=max_edges, fill_value=0)
    edge_mask = jnp.arange(max_edges) < n_edges
    senders, receivers = i[idx], j[idx]
    shifts = image[idx].astype(dtype) + wrap[senders] - wrap[receivers]
    shifts = jnp.where(edge_mask[:, None], shifts, 0)
    d2 = jnp.where(edge_mask, d2[idx], jnp.inf)
    return senders, receivers, shifts, edge_mask, d2, overflow | (n_edges > max_edges)


def _packed(n_node: Array, n_real: Array, k: Array, max_pairs: int) -> tuple[Array, ...]:
    """Candidates of graphs with n_real (G,) real atoms (first of their n_node) and
    image ranges k (G, 3), packed on one axis of ``max_pairs`` slots: graph, i, j
    (P,), image (P, 3), valid (P,) and overflow () (more candidates than slots)."""
    n_graph = k.shape[0]
    node_start = jnp.cumsum(n_node) - n_node
    width = 2 * k + 1
    n_images = jnp.prod(width, axis=1)
    count = n_real * n_real * n_images  # candidates per graph
    end = jnp.cumsum(count)
    p = jnp.arange(max_pairs)
    g = jnp.minimum(jnp.searchsorted(end, p, side="right"), n_graph - 1)
    q = p - (end - count)[g]
    n_g = jnp.maximum(n_real[g], 1)
    # candidate q of its graph = (pair t, image m); t = (i, j); m = (n_0, n_1, n_2)
    t = _div(q, n_images[g])
    m = q - t * n_images[g]
    a = _div(t, n_g)
    i, j = node_start[g] + a, node_start[g] + t - a * n_g
    w = width[g]
    n0 = _div(m, w[:, 1] * w[:, 2])
    rest = m - n0 * w[:, 1] * w[:, 2]
    n1 = _div(rest, w[:, 2])
    image = jnp.stack([n0, n1, rest - n1 * w[:, 2]], axis=1) - k[g]
    return g, i, j, image, p < end[-1], end[-1] > max_pairs


def _every_image(node_mask: Array, k: Array, images: Sequence[int]) -> tuple[Array, ...]:
    """Candidates of one structure: every pair (i, j) of its N atoms against every
    image with ``|n_k| <= images[k]`` (static), in the packed order: graph, i, j
    (P,), image (P, 3), valid (P,) (real atoms) and overflow () (the cell, image
    range k (1, 3), needs more images)."""
    table = np.array(list(itertools.product(*(range(-int(x), int(x) + 1) for x in images))))
    shape = (node_mask.shape[0], node_mask.shape[0], len(table))
    i = jax.lax.broadcasted_iota(jnp.int32, shape, 0).reshape(-1)
    j = jax.lax.broadcasted_iota(jnp.int32, shape, 1).reshape(-1)
    image = jnp.broadcast_to(jnp.asarray(table, jnp.int32), (*shape, 3)).reshape(-1, 3)
    valid = jnp.broadcast_to(node_mask[:, None, None] & node_mask[None, :, None], shape)
    overflow = jnp.any(k[0] > jnp.asarray(images))
    return jnp.zeros_like(i), i, j, image, valid.reshape(-1), overflow


def _div(a: Array, b: Array) -> Array:
    """``a // b`` for ``a >= 0``, ``b > 0`` (same shapes): one truncating division,
    where jnp's ``//`` costs two (its remainder fixes negative quotients)."""
    dtype = jnp.result_type(a, b)
    return jax.lax.div(a.astype(dtype), b.astype(dtype))


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
