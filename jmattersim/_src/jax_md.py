"""MatterSim on jax-md: the energy over a neighbour list, in jax-md's conventions.

Positions ``R`` (N, 3) are *fractional* coordinates and ``box`` (3, 3) maps them to
Cartesian Å as ``box @ r``, so ``box = atoms.cell.T`` and ``R =
atoms.get_scaled_positions()``; ``space.periodic_general(box,
fractional_coordinates=True)`` is the matching space. Gradients with respect to
``R`` are Cartesian (jax-md's ``space.transform`` custom JVP), so ``-grad(energy_fn)``
is the force in eV/Å and the integrators' momenta are Cartesian (amu Å / time unit,
time unit = Å sqrt(amu/eV) = ``1 / ase.units.fs`` fs). The neighbour lists
themselves (cell list or image search, capacities, overflow) are in
:mod:`jmattersim._src.jax_md_lists`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import space

from .arrays import Array, default_float
from .checkpoint import Model
from .energy import Predictions, energies, forces_and_stress
from .jax_md_lists import MatterSimNeighborList, NeighborFns, neighbor_fns, unwrapped


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
            compact=nbrs.model_capacity,
        )

    return energy_of, lattice, real_graph


def neighbor_energy(
    model: Model,
    atom_types: Array,
    position: Array,
    box: Array,
    nbrs: MatterSimNeighborList,
    perturbation: Array | float | None = None,
    n_real: Array | None = None,
    soft_normalize: bool = True,
    remat: bool = False,
) -> Array:
    """Total energy (eV) of one structure from a :class:`MatterSimNeighborList`.

    atom_types (N, max_z+1); position (N, 3) fractional; box (3, 3) columns are
    lattice vectors; perturbation (3, 3) or a scalar (isotropic), optional, jax-md's:
    Cartesian vectors become ``perturbation @ v``. n_real: atoms after the first
    n_real are padding (ignored).
    remat: recompute each interaction block in the backward pass (same numbers, less
    memory, about 1.5x the time of a step on CPU).
    """
    energy_of, lattice, _ = _cartesian_energy(
        model, atom_types, box, nbrs, n_real, soft_normalize, remat
    )
    # Cartesian; d/dR is Cartesian (custom JVP)
    real = space.transform(box, unwrapped(position, nbrs.reference_position))
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
    remat: bool = False,
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
    real = space.transform(box, unwrapped(position, nbrs.reference_position))
    return forces_and_stress(energy_of, real, lattice, real_graph)


# ---------------------------------------------------------------------------------------------
# The jax-md interface


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
    remat: bool = False,
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
        dr_threshold: the skin, Å: pairs within cutoff + skin are listed, and
            ``update`` rebuilds the list only once an atom has moved skin / 2 (or
            the box has changed). The energy gathers the pairs and triplets
            within the cutoffs at its positions before the model runs, so the
            skin costs the list's distances, not model work.
        capacity_multiplier: headroom of every capacity.
        method: "images", "cell_list" or None (chosen from the cell at each
            allocation).
        soft_normalize: per-element scale and shift as ``atom_types @ scale``.
        remat: recompute each interaction block in the backward pass
            (``jax.checkpoint``): the same forces with less memory, for cells
            too large otherwise; about 1.5x the time of a step on CPU.
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
    species = jnp.asarray(species)
    atom_types = one_hot(species, config.num_species, dtype)
    box0 = jnp.asarray(box, dtype)
    neighbor_fn = neighbor_fns(
        box0,
        species.shape[0],
        (config.cutoff, config.threebody_cutoff),
        tuple(bool(p) for p in pbc),
        dr_threshold,
        capacity_multiplier,
        method,
        dtype,
    )

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

    return neighbor_fn, energy_fn


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
