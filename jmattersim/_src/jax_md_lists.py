"""MatterSim's topology as jax-md neighbour lists, exact for every cell.

Conventions (jax-md's): positions ``R`` (N, 3) are *fractional* coordinates and
``box`` (3, 3) maps them to Cartesian Å as ``box @ r``, so ``box = atoms.cell.T``
(columns are lattice vectors, the transpose of :mod:`jmattersim._src.geometry`'s
rows). MatterSim's edge (i, j, n) has vector ``r_i - (r_j + n @ cell)`` =
``box @ (R_i - R_j - n)``. Two ways to list them, chosen from the cell at each
allocation:

- ``"cell_list"``: every perpendicular width of the cell exceeds ``2 (cutoff + skin)``
  and the cell is periodic in all three directions. The minimum image is then the
  only image within reach, and jax-md's ``partition.neighbor_list`` (fractional cell
  list, ``Dense`` format, O(N)) finds the pairs; the image of each pair is
  ``n = round(R_i - R_j)``. jax-md's fractional cell list wants an upper-triangular
  box, so it sees the triangular factor of ``box = Q U`` (same distances).
- ``"images"``: otherwise (short cells, needles, slabs with ``pbc`` False along an
  axis): every pair of atoms is tried against every lattice image within reach,
  ``|n_k| <= ceil((cutoff + skin) / width_k)`` (periodic axes only), by the in-jit
  search of :func:`jmattersim._src.neighbors.find_edges` on one structure. O(N^2 M).

The list holds every pair within ``cutoff + skin`` and, with their own capacity, the
triplets of bonds within ``threebody_cutoff + skin``; the energy keeps the edges
within the cutoffs at the positions it is given, so a list stays valid until some
atom has moved ``skin / 2``. Capacities are static; too small a capacity (or a box
deformed beyond what the list assumed) sets ``did_buffer_overflow``, and the caller
re-allocates (see :func:`jmattersim.md`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import dataclasses, partition, space

from . import geometry
from .arrays import Array
from .capacity import Capacity
from .capacity import model_capacity as within_capacity
from .neighbors import build_triplets, find_edges
from .topology import Topology

SHELL_MARGIN = 0.5  # Å beyond threebody cutoff + skin, for sizing the per-atom slots


@dataclasses.dataclass
class MatterSimNeighborList:
    """MatterSim's topology, as a jax-md style neighbour list (a pytree).

    Made by ``neighbor_fn.allocate(R)`` of
    [`mattersim_neighbor_list`][jmattersim.jax_md.mattersim_neighbor_list];
    ``nbrs.update(R)`` rebuilds it within its capacity (jittable).

    Attributes:
        topology: its :class:`~jmattersim._src.topology.Topology` (edges within
            cutoff + skin, image shifts n as integer-valued floats, with edge
            vector ``box @ (R_i - R_j - n)``, triplets, masks); its ``overflow``
            is sticky: True once a capacity overflowed.
        reference_position: (N, 3) fractional positions it was built at.
        inner: jax-md's ``NeighborList`` ("cell_list" method) or None.
        capacity: its [`Capacity`][jmattersim.Capacity]: edges within cutoff +
            skin (the "images" method; the cell list has jax-md's own capacity),
            triplets, neighbors (bonds per atom within threebody_cutoff + skin,
            allocated for the busiest atom's bonds within ``SHELL_MARGIN`` more)
            and images (largest |n_k| tried per lattice vector).
        update_fn: the function ``update`` calls.
        reference_box: (3, 3) Å, the box it was built in (None: rebuild at the
            next update).
        model_capacity: the [`Capacity`][jmattersim.Capacity] (edges, triplets)
            of the edges and triplets within the cutoffs themselves, which the
            energy gathers from the list before the model runs (None: the model
            runs on every listed pair, those beyond the cutoffs masked).
    """

    topology: Topology
    reference_position: Array
    inner: Any
    capacity: Capacity = dataclasses.static_field()
    update_fn: Callable = dataclasses.static_field()
    reference_box: Array | None = None
    model_capacity: Capacity | None = dataclasses.static_field(default=None)

    def update(self, position: Array, **kwargs) -> MatterSimNeighborList:
        """The list at ``position`` (jittable): rebuilt within its capacity once an
        atom has moved half the skin or the box has changed, else kept; the
        counts within the cutoffs checked against ``model_capacity`` either way.

        Args:
            position: (N, 3) fractional positions.
            **kwargs (Array): ``box=`` (3, 3) Å for a changed box (NPT).

        Returns:
            The new list; check its ``did_buffer_overflow``.
        """
        return self.update_fn(position, self, **kwargs)

    @property
    def method(self) -> str:
        """ "cell_list" (jax-md's cell list underneath) or "images"."""
        return "images" if self.inner is None else "cell_list"

    @property
    def did_buffer_overflow(self) -> Array:
        """() bool: a capacity overflowed (re-allocate), as jax-md's lists."""
        return self.topology.overflow


@dataclasses.dataclass
class NeighborFns:
    """The two neighbour-list functions, as jax-md's ``NeighborListFns``.

    Unpacks as ``allocate, update = neighbor_fn``.

    Attributes:
        allocate: ``allocate(R, box=None, extra_capacity=0,
            capacity_multiplier=...) -> MatterSimNeighborList``: sizes and builds a
            list on the host (not jittable).
        update: ``update(R, nbrs, box=None) -> MatterSimNeighborList``: rebuilds
            it within its capacity (jittable).
    """

    allocate: Callable = dataclasses.static_field()
    update: Callable = dataclasses.static_field()

    def __iter__(self):
        return iter((self.allocate, self.update))


# ---------------------------------------------------------------------------------------------
# Cell geometry in jax-md's convention: columns of ``box`` are the lattice vectors


def perpendicular_widths(box: Array, xp=np) -> Array:
    """(3,) Å between opposite faces of the cell spanned by the columns of ``box``
    (3, 3) Å: :func:`jmattersim._src.geometry.widths` of ``box.T``."""
    return geometry.widths(box.T, xp)


def image_range(box: Array, cutoff: float, pbc: Sequence[bool], xp=np) -> Array:
    """(3,) int, the largest |n_k| that can hold a pair within ``cutoff`` Å (0 on open
    axes) of the cell spanned by the columns of ``box``: ``geometry.image_range`` of
    ``box.T``."""
    return geometry.image_range(box.T, cutoff, pbc, xp)


def upper_triangular(box: Array) -> Array:
    """U with box = Q U, Q orthogonal and diag(U) > 0: the same metric, the box
    shape jax-md's fractional cell list requires."""
    _, u = jnp.linalg.qr(box)
    sign = jnp.where(jnp.diag(u) < 0, -1.0, 1.0).astype(u.dtype)
    return sign[:, None] * u


def choose_method(box: np.ndarray, cutoff: float, pbc: Sequence[bool]) -> str:
    """ "cell_list" when the minimum image is exact (all widths > 2 cutoff, all
    periodic), "images" otherwise."""
    ok = all(pbc) and bool(np.all(perpendicular_widths(np.asarray(box)) > 2 * cutoff))
    return "cell_list" if ok else "images"


# ---------------------------------------------------------------------------------------------
# Pure, jittable edge builders


def image_edges(
    position: Array,
    box: Array,
    cutoff: float,
    pbc: Sequence[bool],
    images: Sequence[int],
    max_edges: int,
    node_mask: Array | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Every (i, j, n) with |box @ (R_i - R_j - n)| < cutoff, no self pair at n = 0:
    :func:`jmattersim._src.neighbors.find_edges` on one structure.

    position (N, 3) fractional; box (3, 3) Å; pbc (3,) bool; images: static |n_k|
    per axis, which sizes the N² prod(2 images + 1) candidate slots; node_mask (N,),
    real atoms first. Returns senders, receivers (max_edges,) int32 (sender-major),
    shifts (max_edges, 3) float, edge_mask, squared lengths (max_edges,) Å² (inf
    where masked) and overflow () bool.
    """
    cell = box.T[None]  # (1, 3, 3) rows
    s, r, shifts, mask, d2, overflow = find_edges(
        position @ box.T,
        cell,
        jnp.array([position.shape[0]]),
        node_mask,
        jnp.asarray(pbc, bool)[None],
        cutoff,
        max_edges,
        images=tuple(images),
        frac=position,
    )
    return s.astype(jnp.int32), r.astype(jnp.int32), shifts, mask, d2, overflow


def cell_list_edges(
    position: Array, box: Array, idx: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """Edges from a jax-md ``Dense`` neighbour index (N, K) (fill value N), minimum image.

    Returns senders, receivers (N K,) int32, shifts (N K, 3) = round(R_i - R_j),
    edge_mask and squared lengths (Å^2, inf where masked).
    """
    n, k = idx.shape
    position = jax.lax.stop_gradient(position)
    senders = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    receivers = idx.reshape(-1).astype(jnp.int32)
    mask = receivers < n
    receivers = jnp.where(mask, receivers, 0)
    diff = position[senders] - position[receivers]
    shifts = jnp.where(mask[:, None], jnp.floor(diff + 0.5), 0.0)
    vec = (diff - shifts) @ jax.lax.stop_gradient(box).T
    d2 = jnp.where(mask, jnp.sum(vec * vec, axis=-1), jnp.inf)
    return senders, receivers, shifts, mask, d2


def max_displacement(position: Array, reference: Array, box: Array, pbc: Sequence[bool]) -> Array:
    """() Å, the largest distance an atom has moved from ``reference`` (both (N, 3)
    fractional, the nearest image along periodic axes) in ``box``."""
    d = position - reference
    d = jnp.where(jnp.asarray(pbc), d - jnp.round(d), d)
    return jnp.sqrt(jnp.max(jnp.sum((d @ box.T) ** 2, axis=-1), initial=0.0))


def unwrapped(position: Array, reference: Array) -> Array:
    """(N, 3) fractional positions continued from ``reference`` (the list's): an atom
    that jax-md's shift has wrapped through the cell since the list was built moves
    back by whole cells, so the list's image shifts hold (atoms move less than half
    a cell between rebuilds)."""
    return position - jax.lax.stop_gradient(jnp.round(position - reference))


def within_counts(
    topology: Topology, position: Array, box: Array, cutoffs: tuple[float, float]
) -> tuple[Array, Array]:
    """The edges of a list's ``topology`` within the cutoff at ``position`` (N, 3)
    fractional in ``box``, and the triplets of its bonds within the three-body
    cutoff (ordered pairs of one atom's bonds): () int each."""
    s, r = topology.senders, topology.receivers
    vec = (position[s] - position[r] - topology.shifts) @ box.T
    d2 = jnp.where(topology.edge_mask, jnp.sum(vec * vec, axis=-1), jnp.inf)
    bonds = jax.ops.segment_sum((d2 <= cutoffs[1] ** 2).astype(jnp.int32), s, position.shape[0])
    return jnp.sum(d2 < cutoffs[0] ** 2), jnp.sum(bonds * (bonds - 1))


def _exceeds(counts: tuple[Array, Array], capacity: Capacity) -> Array:
    return (counts[0] > capacity.edges) | (counts[1] > capacity.triplets)


def _as_int32(idx: Array) -> Array:
    """jax-md's candidate indices in int32: under x64 its cell list yields int64, which
    it then scatters into an int32 list (a FutureWarning now, an error in later JAX)."""
    return idx.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# allocate and update


def neighbor_fns(
    box: Array,
    n_atoms: int,
    cutoffs: tuple[float, float],
    pbc: tuple[bool, bool, bool],
    dr_threshold: float,
    capacity_multiplier: float,
    method: str | None,
    dtype,
) -> NeighborFns:
    """The list's ``allocate`` and ``update`` (see
    [`mattersim_neighbor_list`][jmattersim.jax_md.mattersim_neighbor_list]).

    Args:
        box: (3, 3) Å, the default box (columns are lattice vectors).
        n_atoms: N.
        cutoffs: (cutoff, threebody_cutoff) Å, the model's.
        pbc: periodic axes.
        dr_threshold: the skin, Å.
        capacity_multiplier: default headroom of every capacity.
        method: "images", "cell_list" or None (chosen at each allocation).
        dtype (numpy dtype): float dtype of positions and boxes.

    Returns:
        The [`NeighborFns`][jmattersim.jax_md.NeighborFns].
    """
    box0 = jnp.asarray(box, dtype)
    r2, r3 = (c + dr_threshold for c in cutoffs)

    def inner_fns(b, capacity_multiplier):
        displacement, _ = space.periodic_general(upper_triangular(b), fractional_coordinates=True)
        return partition.neighbor_list(
            displacement,
            upper_triangular(b),
            r2,
            dr_threshold=dr_threshold,
            capacity_multiplier=capacity_multiplier,
            fractional_coordinates=True,
            format=partition.NeighborListFormat.Dense,
            custom_mask_function=_as_int32,
        )

    def build(position, nbrs_inner, capacity, b):
        """Edges and triplets at ``position``, for a given capacity (jittable)."""
        if nbrs_inner is not None:
            # rebuild jax-md's list now: its own skin check, against its own reference,
            # could round the other way and keep a list this one no longer covers
            far = nbrs_inner.set(reference_position=position + 0.5)
            nbrs_inner = far.update(position, box=upper_triangular(b))
            s, r, shifts, mask, d2 = cell_list_edges(position, b, nbrs_inner.idx)
            widths = perpendicular_widths(b, jnp)
            over = (
                nbrs_inner.did_buffer_overflow.astype(bool)
                | nbrs_inner.cell_size_too_small.astype(bool)
                | jnp.any(widths <= 2 * r2)
            )
        else:
            s, r, shifts, mask, d2, over = image_edges(
                position, b, r2, pbc, capacity.images, capacity.edges
            )
        trip, tmask, tover = build_triplets(
            s, d2, mask, n_atoms, r3, capacity.neighbors, capacity.triplets
        )
        return s, r, shifts, mask, trip, tmask, over | tover, nbrs_inner

    def rebuilt(position, nbrs, b):
        s, r, shifts, mask, trip, tmask, over, inner = build(position, nbrs.inner, nbrs.capacity, b)
        topology = Topology(s, r, shifts, mask, trip, tmask, nbrs.did_buffer_overflow | over)
        return topology, position, b, inner

    def kept(position, nbrs):
        return nbrs.topology, nbrs.reference_position, nbrs.reference_box, nbrs.inner

    def update(
        position: Array, nbrs: MatterSimNeighborList, box: Array | None = None, **unused
    ) -> MatterSimNeighborList:
        b = box0 if box is None else jnp.asarray(box, dtype)
        if nbrs.reference_box is None:
            topology, reference, reference_box, inner = rebuilt(position, nbrs, b)
        else:
            stale = jnp.any(b != nbrs.reference_box) | (
                max_displacement(position, nbrs.reference_position, b, pbc) > dr_threshold / 2
            )
            topology, reference, reference_box, inner = jax.lax.cond(
                stale, lambda: rebuilt(position, nbrs, b), lambda: kept(position, nbrs)
            )
        if nbrs.model_capacity is not None:
            counts = within_counts(topology, unwrapped(position, reference), b, cutoffs)
            over = _exceeds(counts, nbrs.model_capacity)
            topology = topology._replace(overflow=topology.overflow | over)
        return MatterSimNeighborList(
            topology, reference, inner, nbrs.capacity, update, reference_box, nbrs.model_capacity
        )

    update_jit = jax.jit(update)

    def allocate(
        position: Array,
        box: Array | None = None,
        extra_capacity: int = 0,
        capacity_multiplier: float = capacity_multiplier,
        **unused,
    ) -> MatterSimNeighborList:
        """A list sized for ``position`` with ``capacity_multiplier`` headroom (host)."""
        position = jnp.asarray(position, dtype)
        b = box0 if box is None else jnp.asarray(box, dtype)
        m = method or choose_method(np.asarray(b), r2, pbc)
        if m == "cell_list" and not all(pbc):
            raise ValueError("the cell-list method needs pbc along all three axes")
        inner = None
        if m == "cell_list":
            inner = inner_fns(b, capacity_multiplier).allocate(
                position, box=upper_triangular(b), extra_capacity=extra_capacity
            )
            # jax-md keeps the cell size as an array in a static field; make it hashable
            inner = dataclasses.replace(inner, cell_size=float(inner.cell_size))
            images, max_edges = (0, 0, 0), 0
            s, r, shifts, mask, d2 = cell_list_edges(position, b, inner.idx)
        else:
            images = tuple(int(k) for k in image_range(np.asarray(b), r2, pbc))
            big = n_atoms * n_atoms * math.prod(2 * k + 1 for k in images)
            s, r, shifts, mask, d2, _ = image_edges(position, b, r2, pbc, images, big)
            max_edges = math.ceil(int(mask.sum()) * capacity_multiplier) + 1 + extra_capacity
        in3 = np.asarray(mask & (d2 <= r3**2))
        per_atom = np.bincount(np.asarray(s)[in3], minlength=n_atoms)
        # The per-atom slots are sized by the busiest atom, an extreme that thermal
        # motion moves most: a crystal's next shell (Si: 12 atoms 0.25 Å beyond
        # 4 Å + skin) enters at 300 K. They are sized with the bonds within
        # SHELL_MARGIN more, which costs little (N x slots^2 booleans); the
        # triplet and edge totals, sums that fluctuate little, keep the multiplier.
        shell = np.asarray(mask & (d2 <= (r3 + SHELL_MARGIN) ** 2))
        busiest = np.bincount(np.asarray(s)[shell], minlength=n_atoms).max(initial=0)
        triplets = int((per_atom * (per_atom - 1)).sum())
        capacity = Capacity(
            edges=max_edges,
            triplets=math.ceil(triplets * capacity_multiplier) + 1,
            neighbors=math.ceil(busiest * capacity_multiplier) + 1,
            images=images,
        )
        listed = Topology(s, r, shifts, mask, None, None, None)
        n_edge, n_trip = (int(c) for c in within_counts(listed, position, b, cutoffs))
        model_capacity = within_capacity(n_edge, n_trip, capacity_multiplier)
        nothing = Topology(None, None, None, None, None, None, jnp.asarray(False))
        empty = MatterSimNeighborList(
            nothing, position, inner, capacity, update, None, model_capacity
        )
        return update_jit(position, empty, box=b)

    return NeighborFns(allocate, update)
