"""MatterSim on jax-md: neighbour lists with integer image shifts, exact for every cell.

Conventions (jax-md's): positions ``R`` (N, 3) are *fractional* coordinates and
``box`` (3, 3) maps them to Cartesian Å as ``box @ r``, so ``box = atoms.cell.T``
and ``R = atoms.get_scaled_positions()``; ``space.periodic_general(box,
fractional_coordinates=True)`` is the matching space. Gradients with respect to
``R`` are Cartesian (jax-md's ``space.transform`` custom JVP), so ``-grad(energy_fn)``
is the force in eV/Å and the integrators' momenta are Cartesian (amu Å / time unit,
time unit = Å sqrt(amu/eV) = ``1 / ase.units.fs`` fs).

MatterSim's edge (i, j, n) has vector ``r_i - (r_j + n @ cell)`` = ``box @ (R_i - R_j - n)``.
Two ways to list them, chosen from the cell at each allocation:

- ``"cell_list"``: every perpendicular width of the cell exceeds ``2 (cutoff + skin)``
  and the cell is periodic in all three directions. The minimum image is then the
  only image within reach, and jax-md's ``partition.neighbor_list`` (fractional cell
  list, ``Dense`` format, O(N)) finds the pairs; the image of each pair is
  ``n = round(R_i - R_j)``. jax-md's fractional cell list wants an upper-triangular
  box, so it sees the triangular factor of ``box = Q U`` (same distances).
- ``"images"``: otherwise (short cells, needles, slabs with ``pbc`` False along an
  axis): every pair of atoms is tried against every lattice image in a static range
  ``|n_k| <= ceil((cutoff + skin) / width_k)`` (periodic axes only). O(N^2 M).

The list holds every pair within ``cutoff + skin`` and, with their own capacity, the
triplets of bonds within ``threebody_cutoff + skin``; :func:`mattersim_neighbor_list`'s
energy keeps the edges within the cutoffs at the positions it is given, so a list
stays valid until some atom has moved ``skin / 2``. Capacities are static; too small a
capacity (or a box deformed beyond what the list assumed) sets ``did_buffer_overflow``,
and the caller re-allocates (see :func:`jmattersim.md`).
"""

from __future__ import annotations

import dataclasses as pydc
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import dataclasses, partition, space

from .arrays import Array, default_float
from .checkpoint import Model
from .energy import Predictions, energies, forces_and_stress
from .neighbors import build_triplets
from .topology import Topology


@pydc.dataclass(frozen=True)
class NeighborListCapacity:
    """Static sizes of a MatterSim neighbour list, set by ``allocate``.

    Attributes:
        method: "images" or "cell_list".
        max_edges: pairs within cutoff + skin ("images" method; the cell list
            has jax-md's own capacity).
        max_neighbors: bonds per atom within threebody_cutoff + skin (allocated
            for the busiest atom's bonds within ``SHELL_MARGIN`` more).
        max_triplets: ordered pairs of bonds of one atom.
        images: largest |n_k| tried per lattice vector ("images" method).
    """

    method: str
    max_edges: int
    max_neighbors: int
    max_triplets: int
    images: tuple[int, int, int] = (0, 0, 0)


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
        capacity: its [`NeighborListCapacity`][jmattersim.jax_md.NeighborListCapacity].
        update_fn: the function ``update`` calls.
    """

    topology: Topology
    reference_position: Array
    inner: Any
    capacity: NeighborListCapacity = dataclasses.static_field()
    update_fn: Callable = dataclasses.static_field()

    def update(self, position: Array, **kwargs) -> MatterSimNeighborList:
        """The list rebuilt at ``position`` within its capacity (jittable).

        Args:
            position: (N, 3) fractional positions.
            **kwargs (Array): ``box=`` (3, 3) Å for a changed box (NPT).

        Returns:
            The new list; check its ``did_buffer_overflow``.
        """
        return self.update_fn(position, self, **kwargs)

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
# Geometry helpers


def perpendicular_widths(box: Array, xp=np) -> Array:
    """(3,) distances between opposite faces of the cell spanned by the columns of ``box``."""
    a, b, c = box[:, 0], box[:, 1], box[:, 2]
    volume = xp.abs(xp.dot(a, xp.cross(b, c)))
    areas = xp.stack(
        [
            xp.linalg.norm(xp.cross(b, c)),
            xp.linalg.norm(xp.cross(c, a)),
            xp.linalg.norm(xp.cross(a, b)),
        ]
    )
    return volume / areas


def image_range(box: Array, cutoff: float, pbc: Sequence[bool], xp=np) -> Array:
    """(3,) largest |n_k| that can hold a pair within ``cutoff`` (0 on open axes)."""
    needed = xp.ceil(cutoff / perpendicular_widths(box, xp)).astype(int)
    return xp.where(xp.asarray(pbc), needed, 0)


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


def _image_table(images: Sequence[int]) -> np.ndarray:
    ranges = [range(-int(k), int(k) + 1) for k in images]
    return np.array(list(itertools.product(*ranges)), dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Pure, jittable building blocks


def image_edges(
    position: Array,
    box: Array,
    cutoff: float,
    pbc: Sequence[bool],
    images: Sequence[int],
    max_edges: int,
    node_mask: Array | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Every (i, j, n) with |box @ (R_i - R_j - n)| < cutoff, no self pair at n = 0.

    position (N, 3) fractional; box (3, 3); images: static |n_k| range per axis.
    Returns senders, receivers (max_edges,) int32 (sender-major), shifts (max_edges, 3)
    float, edge_mask, squared lengths (max_edges,) Å^2 and overflow () bool.
    """
    n = position.shape[0]
    dtype = position.dtype
    if node_mask is None:
        node_mask = jnp.ones(n, bool)
    position = jax.lax.stop_gradient(position)
    box = jax.lax.stop_gradient(box)
    periodic = jnp.asarray(pbc)
    wrap = jnp.where(periodic, jnp.floor(position), 0.0)
    frac = position - wrap
    table = _image_table(images)
    zero = int(np.flatnonzero((table == 0).all(axis=1))[0])
    diff = frac[:, None, None, :] - frac[None, :, None, :] - jnp.asarray(table, dtype)[None, None]
    vec = jnp.einsum("abmk,jk->abmj", diff, box)  # (N, N, M, 3) Cartesian
    d2 = jnp.sum(vec * vec, axis=-1)
    same = jnp.eye(n, dtype=bool)[:, :, None] & (jnp.arange(len(table)) == zero)[None, None]
    within = node_mask[:, None, None] & node_mask[None, :, None] & ~same & (d2 < cutoff**2)
    flat = within.reshape(-1)
    count = jnp.sum(flat)
    (idx,) = jnp.nonzero(flat, size=max_edges, fill_value=0)
    mask = jnp.arange(max_edges) < count
    a, b, m = jnp.unravel_index(idx, within.shape)
    shifts = jnp.asarray(table, dtype)[m] + wrap[a] - wrap[b]
    shifts = jnp.where(mask[:, None], shifts, 0.0)
    needed = image_range(box, cutoff, pbc, xp=jnp)
    overflow = (count > max_edges) | jnp.any(needed > jnp.asarray(images))
    return (
        a.astype(jnp.int32),
        b.astype(jnp.int32),
        shifts,
        mask,
        jnp.where(mask, d2.reshape(-1)[idx], jnp.inf),
        overflow,
    )


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


def _cartesian_energy(
    model: Model,
    atom_types: Array,
    box: Array,
    nbrs: MatterSimNeighborList,
    n_real: Array | None,
    soft_normalize: bool,
    remat: bool,
) -> tuple[Callable[[Array, Array | None], Array], Array, Array]:
    """``energy_of(positions (N, 3) Cartesian Å, strain (G, 3, 3) or None) -> (G,)`` eV
    over the list, with the lattices (G, 3, 3) and real-graph mask (G,) it uses
    (one graph, or two when the atoms after ``n_real`` are padding)."""
    n = atom_types.shape[0]
    lattice = box.T[None]
    n_node = jnp.array([n]) if n_real is None else jnp.stack([n_real, n - n_real])
    if n_real is not None:
        lattice = jnp.concatenate([lattice, jnp.eye(3, dtype=box.dtype)[None]])
    real_graph = jnp.arange(lattice.shape[0]) == 0

    def energy_of(positions: Array, strain: Array | None = None) -> Array:
        return energies(
            model.config,
            model.params,
            atom_types,
            positions,
            lattice,
            n_node,
            nbrs.topology,
            strain,
            soft_normalize,
            remat,
            within_cutoffs=True,
        )

    return energy_of, lattice, real_graph


def neighbor_energy(
    model: Model,
    atom_types: Array,
    position: Array,
    box: Array,
    nbrs: MatterSimNeighborList,
    perturbation: Array | None = None,
    n_real: Array | None = None,
    soft_normalize: bool = True,
    remat: bool = True,
) -> Array:
    """Total energy (eV) of one structure from a :class:`MatterSimNeighborList`.

    atom_types (N, max_z+1); position (N, 3) fractional; box (3, 3) columns are
    lattice vectors; perturbation (3, 3) optional, jax-md's: Cartesian vectors become
    ``perturbation @ v``. n_real: atoms after the first n_real are padding (ignored).
    remat: recompute each interaction block in the backward pass (same numbers; on
    CPU it is also faster for large cells, which are bound by memory traffic).
    """
    energy_of, lattice, _ = _cartesian_energy(
        model, atom_types, box, nbrs, n_real, soft_normalize, remat
    )
    real = space.transform(box, position)  # Cartesian; d/dR is Cartesian (custom JVP)
    strain = None
    if perturbation is not None:  # scalar (isotropic, as jax-md's NPT) or (3, 3)
        eye = jnp.eye(3, dtype=real.dtype)
        p = jnp.asarray(perturbation, real.dtype)
        deform = ((p * eye if p.ndim == 0 else p) - eye).T
        strain = jnp.zeros_like(lattice).at[0].set(deform)
    return energy_of(real, strain)[0]


def neighbor_properties(
    model: Model,
    atom_types: Array,
    position: Array,
    box: Array,
    nbrs: MatterSimNeighborList,
    soft_normalize: bool = True,
    remat: bool = True,
) -> Predictions:
    """Energy, Cartesian forces and stress of one structure from one reverse pass
    (:func:`jmattersim._src.energy.forces_and_stress`), arguments as
    :func:`neighbor_energy`'s.

    Returns:
        Predictions with energy (1,) eV, forces (N, 3) eV/Å, stress (1, 3, 3) eV/Å³.
    """
    energy_of, lattice, real_graph = _cartesian_energy(
        model, atom_types, box, nbrs, None, soft_normalize, remat
    )
    return forces_and_stress(energy_of, space.transform(box, position), lattice, real_graph)


# ---------------------------------------------------------------------------------------------
# The jax-md interface


def _as_int32(idx: Array) -> Array:
    """jax-md's candidate indices in int32: under x64 its cell list yields int64, which
    it then scatters into an int32 list (a FutureWarning now, an error in later JAX)."""
    return idx.astype(jnp.int32)


def one_hot(species: Array, num_species: int, dtype) -> Array:
    """Atom types of atomic numbers, as the model takes them.

    Args:
        species: (N,) atomic numbers.
        num_species: width, ``config.num_species`` (max_z + 1).
        dtype (numpy dtype): float dtype of the result.

    Returns:
        (N, num_species) one-hot rows.
    """
    return jax.nn.one_hot(jnp.asarray(species), num_species, dtype=dtype)


SHELL_MARGIN = 0.5  # Å beyond threebody cutoff + skin, for sizing the per-atom slots


def mattersim_neighbor_list(
    model: Model,
    box: Array,
    species: Array,
    *,
    pbc: Sequence[bool] = (True, True, True),
    dr_threshold: float = 0.25,
    capacity_multiplier: float = 1.25,
    method: str | None = None,
    soft_normalize: bool = True,
    remat: bool = True,
    dtype=None,
) -> tuple[NeighborFns, Callable[..., Array]]:
    """MatterSim's neighbour list and energy in jax-md's conventions.

    The list is exact for every cell: jax-md's O(N) cell list when every
    perpendicular width exceeds 2 × (cutoff + skin) and all directions are
    periodic, image enumeration otherwise. The energy takes jax-md's
    ``perturbation``, so ``quantity.stress``, ``quantity.pressure`` and
    ``simulate.npt_nose_hoover`` work.

    Args:
        model: the [`Model`][jmattersim.Model].
        box: (3, 3) Å, ``atoms.cell.T`` (columns are lattice vectors).
        species: (N,) atomic numbers.
        pbc: periodic axes (open axes need the "images" method).
        dr_threshold: the skin, Å: pairs within cutoff + skin are listed, and the
            list holds until an atom moves skin / 2. The model runs on every
            listed pair (those beyond the cutoff masked), so a thin skin is
            cheaper, and a list updated every step needs little.
        capacity_multiplier: headroom of every capacity.
        method: "images", "cell_list" or None (chosen from the cell at each
            allocation).
        soft_normalize: per-element scale and shift as ``atom_types @ scale``.
        remat: recompute each interaction block in the backward pass
            (``jax.checkpoint``): the same forces with a fraction of the memory;
            on CPU it keeps the cost per atom flat up to 8000 atoms.
        dtype (numpy dtype or None): float64 under x64, float32 otherwise.

    Returns:
        ``(neighbor_fn, energy_fn)``. ``neighbor_fn`` is a
        [`NeighborFns`][jmattersim.jax_md.NeighborFns]:
        ``nbrs = neighbor_fn.allocate(R)``, then ``nbrs = nbrs.update(R)`` (or
        ``neighbor_fn.update(R, nbrs, box=box)`` for a changing box); check
        ``nbrs.did_buffer_overflow`` and re-allocate, as with jax-md's lists.
        ``energy_fn(R, neighbor=nbrs, box=None, perturbation=None) -> ()`` eV,
        for ``R`` (N, 3) fractional; ``-grad`` in ``R`` is the Cartesian force,
        eV/Å.
    """
    dtype = dtype or default_float()
    config = model.config
    model = model.astype(dtype)
    pbc = tuple(bool(p) for p in pbc)
    box0 = jnp.asarray(box, dtype)
    species = jnp.asarray(species)
    atom_types = one_hot(species, config.num_species, dtype)
    n_atoms = species.shape[0]
    r2 = config.cutoff + dr_threshold
    r3 = config.threebody_cutoff + dr_threshold

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
        if capacity.method == "cell_list":
            nbrs_inner = nbrs_inner.update(position, box=upper_triangular(b))
            s, r, shifts, mask, d2 = cell_list_edges(position, b, nbrs_inner.idx)
            widths = perpendicular_widths(b, jnp)
            over = (
                nbrs_inner.did_buffer_overflow.astype(bool)
                | nbrs_inner.cell_size_too_small.astype(bool)
                | jnp.any(widths <= 2 * r2)
            )
        else:
            s, r, shifts, mask, d2, over = image_edges(
                position, b, r2, pbc, capacity.images, capacity.max_edges
            )
        trip, tmask, tover = build_triplets(
            s, d2, mask, n_atoms, r3, capacity.max_neighbors, capacity.max_triplets
        )
        return s, r, shifts, mask, trip, tmask, over | tover, nbrs_inner

    def update(
        position: Array, nbrs: MatterSimNeighborList, box: Array | None = None, **unused
    ) -> MatterSimNeighborList:
        b = box0 if box is None else jnp.asarray(box, dtype)
        s, r, shifts, mask, trip, tmask, over, inner = build(position, nbrs.inner, nbrs.capacity, b)
        topology = Topology(s, r, shifts, mask, trip, tmask, nbrs.did_buffer_overflow | over)
        return MatterSimNeighborList(topology, position, inner, nbrs.capacity, update)

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
        capacity = NeighborListCapacity(
            method=m,
            max_edges=max_edges,
            max_neighbors=math.ceil(busiest * capacity_multiplier) + 1,
            max_triplets=math.ceil(int((per_atom * (per_atom - 1)).sum()) * capacity_multiplier)
            + 1,
            images=images,
        )
        nothing = Topology(None, None, None, None, None, None, jnp.asarray(False))
        empty = MatterSimNeighborList(nothing, position, inner, capacity, update)
        return update_jit(position, empty, box=b)

    def energy_fn(
        position: Array,
        neighbor: MatterSimNeighborList,
        box: Array | None = None,
        perturbation: Array | None = None,
        **unused,
    ) -> Array:
        b = box0 if box is None else box
        return neighbor_energy(
            model,
            atom_types,
            position,
            b,
            neighbor,
            perturbation,
            soft_normalize=soft_normalize,
            remat=remat,
        )

    return NeighborFns(allocate, update), energy_fn


def atoms_to_jax_md(atoms, dtype=None) -> tuple[Array, Array, Array]:
    """An ASE structure in jax-md's conventions.

    Args:
        atoms (ase.Atoms): the ASE structure.
        dtype (numpy dtype or None): float dtype (default: float64 under x64,
            float32 otherwise).

    Returns:
        ``(R, box, species)``: R (N, 3) fractional positions; box (3, 3) Å,
        ``atoms.cell.T`` (columns are lattice vectors); species (N,) int32
        atomic numbers.
    """
    dtype = dtype or default_float()
    cell = np.asarray(atoms.cell.array, float)
    frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, float).T).T
    return (
        jnp.asarray(frac, dtype),
        jnp.asarray(cell.T, dtype),
        jnp.asarray(atoms.numbers, jnp.int32),
    )
