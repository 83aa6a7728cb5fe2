"""Host checks of the tensor API's arrays (``forward_batch``), before anything is compiled.

:func:`check_arrays` takes atom_types (ΣN, max_z+1), positions (ΣN, 3), lattice
(G, 3, 3), sizes (G,); optionally against an in-jit
:class:`jmattersim.Capacity` (raises :class:`CapacityOverflowError`).
Messages name the structure, the atom(s) and the problem, as those of
:mod:`jmattersim._src.checks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .checks import (
    MIN_DISTANCE,
    CapacityOverflowError,
    InvalidStructureError,
    _check_finite,
    _config,
    _fmt,
    check_distances,
    check_lattice,
    structure_label,
)
from .config import M3GNetConfig
from .geometry import candidate_pairs
from .host_neighbors import neighbor_list, triplet_indices


def _host_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"check_arrays runs on the host, but {name} is traced (inside jit); "
            "use jmattersim.checks.checked_energy_fn there"
        )
    return np.asarray(value)


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise InvalidStructureError("", problem)


def check_arrays(
    atom_types: Any,
    positions: Any,
    lattice: Any,
    sizes: Any,
    config: M3GNetConfig | Any,
    *,
    labels: Sequence[str] | None = None,
    capacity: Any = None,
    min_distance: float = MIN_DISTANCE,
) -> None:
    """Raises [`InvalidStructureError`][jmattersim.InvalidStructureError] unless
    the batch is fit for the model.

    Every value must be finite, every lattice non-singular and non-degenerate
    (every structure is periodic), and no two atoms (images included) closer
    than ``min_distance``. Host-only (numpy): inside ``jit`` use
    [`checked_energy_fn`][jmattersim.checks.checked_energy_fn].

    Args:
        atom_types: (ΣN, max_z + 1) one-hot or soft distributions over elements:
            no negative entry, no weight on element 0, no row summing to zero.
        positions: (ΣN, 3) Å, floating point.
        lattice: (G, 3, 3) Å, rows are lattice vectors.
        sizes: (G,) integer atoms per structure, each >= 1, summing to ΣN.
        config: an [`M3GNetConfig`][jmattersim.M3GNetConfig] or a
            [`Model`][jmattersim.Model].
        labels: names of the G structures (default 'structure g (formula)', the
            formula from each row's likeliest element).
        capacity: a [`Capacity`][jmattersim.Capacity]; if
            given, the whole batch must fit it.
        min_distance: Å, the closest two atoms may be.

    Raises:
        InvalidStructureError: the batch is unfit, naming the structure, the
            atoms and the problem.
        CapacityOverflowError: the batch does not fit ``capacity``.
    """
    config = _config(config)
    atom_types = _host_array("atom_types", atom_types)
    positions = _host_array("positions", positions)
    lattice = _host_array("lattice", lattice)
    sizes = _host_array("sizes", sizes)
    width = config.num_species
    _require(
        atom_types.ndim == 2 and atom_types.shape[1] == width,
        f"atom_types must have shape (atoms, {width}) (max_z + 1 = {width} columns), "
        f"got {atom_types.shape}",
    )
    _require(
        positions.ndim == 2 and positions.shape[1] == 3,
        f"positions must have shape (atoms, 3), got {positions.shape}",
    )
    _require(
        lattice.ndim == 3 and lattice.shape[1:] == (3, 3),
        f"lattice must have shape (structures, 3, 3), got {lattice.shape}",
    )
    _require(sizes.ndim == 1, f"sizes must have shape (structures,), got {sizes.shape}")
    for name, value in (("atom_types", atom_types), ("positions", positions), ("lattice", lattice)):
        kinds = (np.floating, np.integer) if name == "atom_types" else (np.floating,)
        ok = any(np.issubdtype(value.dtype, k) for k in kinds) and value.dtype != bool
        _require(
            ok,
            f"{name} must be {'real numbers' if len(kinds) > 1 else 'floating point'}"
            f", got dtype {value.dtype}",
        )
    _require(
        np.issubdtype(sizes.dtype, np.integer), f"sizes must be integers, got dtype {sizes.dtype}"
    )
    _require(
        len(sizes) == len(lattice),
        f"sizes has {len(sizes)} structures but lattice has {len(lattice)}",
    )
    _require(
        len(atom_types) == len(positions),
        f"atom_types has {len(atom_types)} atoms but positions has {len(positions)}",
    )
    _require(
        int(sizes.sum()) == len(positions),
        f"sizes sum to {int(sizes.sum())} but there are {len(positions)} atoms",
    )
    if labels is not None:
        _require(len(labels) == len(sizes), f"{len(labels)} labels for {len(sizes)} structures")
    starts = np.cumsum(sizes) - sizes
    hard = np.argmax(atom_types, axis=1) if len(atom_types) else np.zeros(0, int)
    graphs = []
    for g, (start, n) in enumerate(zip(starts, sizes, strict=True)):
        sl = slice(int(start), int(start + n))
        label = labels[g] if labels is not None else structure_label(g, hard[sl])
        if n < 1:
            raise InvalidStructureError(label, f"the structure is empty (sizes[{g}] = {n})")
        types = atom_types[sl].astype(float)
        _check_finite(label, "atom_types", types, per_atom=True)
        neg = np.flatnonzero((types < 0).any(axis=1))
        if neg.size:
            raise InvalidStructureError(
                label, f"atom_types rows of atom(s) {_fmt(neg)} have negative entries", neg
            )
        zero = np.flatnonzero(types.sum(axis=1) <= 0)
        if zero.size:
            raise InvalidStructureError(
                label, f"atom_types rows of atom(s) {_fmt(zero)} sum to zero (no element)", zero
            )
        ghost = np.flatnonzero(types[:, 0] > 0)
        if ghost.size:
            raise InvalidStructureError(
                label,
                f"atom_types rows of atom(s) {_fmt(ghost)} put weight on element 0, "
                f"which is no element (columns are atomic numbers 0..{config.max_z})",
                ghost,
            )
        pos = positions[sl].astype(float)
        _check_finite(label, "positions", pos, per_atom=True)
        check_lattice(lattice[g], (True, True, True), label, min_width=min_distance)
        check_distances(pos, lattice[g], (True, True, True), label, min_distance)
        graphs.append((label, pos, lattice[g].astype(float)))
    if capacity is not None:
        check_capacity(graphs, config, capacity)


def check_capacity(
    structures: Sequence[tuple[str, np.ndarray, np.ndarray]], config: M3GNetConfig, capacity: Any
) -> None:
    """Raises :class:`CapacityOverflowError` unless the batch of (label, positions,
    lattice) fits ``capacity`` (a :class:`jmattersim.Capacity`; counts over
    the whole batch), counted on the host with the sets the in-jit topology builds."""
    total_atoms = sum(len(pos) for _, pos, _ in structures)
    max_pairs = capacity.pair_slots(total_atoms)
    edges = trips = pairs = 0
    for label, pos, cell in structures:
        s, _, _, d = neighbor_list(pos, cell, (True, True, True), config.cutoff)
        bonds3 = np.bincount(s[d <= config.threebody_cutoff], minlength=len(pos))
        worst = int(np.argmax(bonds3))
        if bonds3[worst] > capacity.neighbors:
            raise CapacityOverflowError(
                label,
                f"neighbour capacity overflow: atom {worst} has {bonds3[worst]} "
                f"neighbours within the three-body cutoff ({config.threebody_cutoff} Å), "
                f"capacity.neighbors is {capacity.neighbors}",
                (worst,),
            )
        edges += len(s)
        trips += len(triplet_indices(s, d, config.threebody_cutoff))
        pairs += candidate_pairs(len(pos), cell, (True, True, True), config.cutoff)
        for what, total, cap in (
            ("edges", edges, capacity.edges),
            ("triplets", trips, capacity.triplets),
            ("pairs", pairs, max_pairs),
        ):
            if total > cap:
                raise CapacityOverflowError(
                    label,
                    f"neighbour capacity overflow: the batch has {total} {what} up to "
                    f"and including this structure, capacity.{what} is {cap}",
                )
