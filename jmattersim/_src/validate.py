"""Input checks for the public edges, and checked variants for use inside ``jit``.

A potential that returns a confident wrong number is worse than one that
crashes. The host checks below run in numpy before anything is compiled and
raise :class:`InvalidStructureError` with a message that names the structure,
the atom(s) and the problem, e.g.::

    structure 3 (Fe2O3): atoms 0 and 4 are 0.31 Å apart (< 0.5 Å)

- :func:`check_atoms` for one ASE ``Atoms`` (the calculator, :func:`jmattersim.evaluate`,
  the CLI, ``relax``);
- :func:`check_arrays` for the tensor API (``forward_batch``): atom_types (ΣN, max_z+1),
  positions (ΣN, 3), lattice (G, 3, 3), sizes (G,); optionally against an in-jit
  :class:`jmattersim.TopologyCapacity` (raises :class:`CapacityOverflowError`).

An isolated atom (no neighbour within the cutoff) is valid: its energy is the
model's energy of the atom without edges, as upstream gives it.

Inside ``jit`` nothing can raise. There the checks are ``jax.experimental.checkify``
checks: :func:`checked_energy_fn` is :func:`jmattersim.energy_fn` with checks on
its inputs, on neighbour-capacity overflow (where ``energy_fn`` silently returns NaN)
and on a finite result; :func:`checked` functionalises the checks of any function
(also one transformed by ``jax.grad``) and raises the error after the jitted call::

    energy = checked_energy_fn(config, max_edges=..., max_triplets=..., max_neighbors=...)
    forces = checked(jax.grad(energy, argnums=2))   # jitted; raises on a failed check
    f = forces(params, atom_types, positions, lattice)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from jax.experimental import checkify

from .config import M3GNetConfig

MIN_DISTANCE = 0.5  # Å: closer atoms are rejected


class InvalidStructureError(ValueError):
    """An input the model must not be evaluated on (a ``ValueError``).

    The message names the structure, the atoms and the problem, e.g.
    ``structure 3 (Fe2O3): atoms 0 and 4 are 0.31 Å apart (< 0.5 Å)``.

    Args:
        structure: the structure's label, e.g. ``structure 3 (Fe2O3)`` (may be
            empty).
        problem: what is wrong, without the label.
        atoms: the indices of the atoms concerned (may be empty).

    Attributes:
        structure: the structure's label.
        problem: the message without the label.
        atoms: the indices of the atoms concerned, a tuple (may be empty).
    """

    def __init__(self, structure: str, problem: str, atoms: Sequence[int] = ()):
        self.structure = structure
        self.problem = problem
        self.atoms = tuple(int(a) for a in atoms)
        super().__init__(f"{structure}: {problem}" if structure else problem)


class CapacityOverflowError(InvalidStructureError):
    """The structures do not fit a static neighbour capacity (a
    [`TopologyCapacity`][jmattersim.TopologyCapacity]); an
    [`InvalidStructureError`][jmattersim.InvalidStructureError] with the same
    attributes. Make a larger capacity and go on."""


def _config(config: Any) -> M3GNetConfig:
    """Accepts an :class:`M3GNetConfig` or anything with a ``.config`` (a Model)."""
    config = getattr(config, "config", config)
    if not isinstance(config, M3GNetConfig):
        raise TypeError(f"expected an M3GNetConfig or a Model, got {type(config).__name__}")
    return config


def _formula(numbers: np.ndarray) -> str:
    if len(numbers) == 0:
        return "empty"
    return Atoms(numbers=np.clip(numbers, 0, len(chemical_symbols) - 1)).get_chemical_formula()


def structure_label(index: int | None, numbers: np.ndarray, kind: str = "structure") -> str:
    """'structure 3 (Fe2O3)', or 'structure (Fe2O3)' without an index."""
    where = kind if index is None else f"{kind} {index}"
    return f"{where} ({_formula(np.asarray(numbers))})"


def _fmt(values: Sequence[int], limit: int = 5) -> str:
    values = [int(v) for v in values]
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


def _check_finite(label: str, name: str, values: np.ndarray, per_atom: bool) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        if per_atom:
            rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
            raise InvalidStructureError(
                label, f"{name} of atom(s) {_fmt(rows)} are NaN or infinite", rows
            )
        raise InvalidStructureError(label, f"{name} contains NaN or infinite values")


def check_lattice(
    cell: np.ndarray, pbc: Sequence[bool], label: str = "", min_width: float = MIN_DISTANCE
) -> None:
    """A periodic structure needs a finite, non-singular cell that is at least
    ``min_width`` thick across every periodic lattice vector (a thinner cell is
    degenerate: its lattice planes are closer than any two atoms may be)."""
    cell = np.asarray(cell, dtype=float)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        return
    _check_finite(label, "the lattice", cell, per_atom=False)
    volume = abs(float(np.linalg.det(cell)))
    lengths = np.linalg.norm(cell, axis=1)
    if volume <= 1e-12 * max(float(np.prod(lengths)), 1e-300):
        rank = np.linalg.matrix_rank(cell, tol=1e-8 * max(lengths.max(), 1e-300))
        raise InvalidStructureError(
            label,
            f"the lattice is singular (rank {rank}, volume {volume:.3g} Å^3); a "
            f"periodic structure (pbc={tuple(bool(p) for p in pbc)}) needs three independent "
            "lattice vectors (give non-periodic directions a vacuum-padded vector, e.g. "
            "atoms.center(vacuum=...))",
        )
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    widths = volume / areas
    for k in np.flatnonzero(pbc & (widths < min_width)):
        raise InvalidStructureError(
            label,
            f"the lattice is degenerate: the cell is {widths[k]:.3g} Å thick across "
            f"lattice vector {k} (< {min_width} Å); use a reduced cell "
            "(ase.build.niggli_reduce)",
        )


def check_distances(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool],
    label: str = "",
    min_distance: float = MIN_DISTANCE,
) -> None:
    """No two atoms (periodic images included) closer than ``min_distance``."""
    from .graph import neighbor_list

    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        cell = np.eye(3)
    _refuse_close_pairs(*neighbor_list(positions, cell, pbc, min_distance), label, min_distance)


def check_graph_distances(graph: Any, label: str = "", min_distance: float = MIN_DISTANCE) -> None:
    """:func:`check_distances` from a built :class:`jmattersim._src.graph.StructureGraph`
    (its cutoff is far beyond ``min_distance``): no second neighbour search."""
    close = graph.distances < min_distance
    _refuse_close_pairs(
        graph.topology.senders[close],
        graph.topology.receivers[close],
        graph.topology.shifts[close],
        graph.distances[close],
        label,
        min_distance,
    )


def _refuse_close_pairs(
    i: np.ndarray, j: np.ndarray, shifts: np.ndarray, d: np.ndarray, label: str, min_distance: float
) -> None:
    if len(i) == 0:
        return
    k = int(np.argmin(d))
    a, b, dist = int(i[k]), int(j[k]), float(d[k])
    if a == b:
        raise InvalidStructureError(
            label,
            f"atom {a} is {dist:.3g} Å from its own periodic image "
            f"{tuple(int(s) for s in shifts[k])} (< {min_distance} Å)",
            (a,),
        )
    a, b = min(a, b), max(a, b)
    image = "" if not shifts[k].any() else " (periodic images)"
    raise InvalidStructureError(
        label, f"atoms {a} and {b} are {dist:.3g} Å apart{image} (< {min_distance} Å)", (a, b)
    )


def check_numbers(numbers: np.ndarray, max_z: int, label: str = "") -> None:
    """Atomic numbers must lie in 1..max_z."""
    numbers = np.asarray(numbers)
    bad = np.flatnonzero((numbers < 1) | (numbers > max_z))
    if bad.size:
        z = int(numbers[bad[0]])
        name = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else "?"
        raise InvalidStructureError(
            label,
            f"atom(s) {_fmt(bad)} have atomic number {z} ({name}); the model knows 1..{max_z}",
            bad,
        )


def check_atoms(
    atoms: Atoms,
    config: M3GNetConfig | Any,
    label: str | int | None = None,
    min_distance: float = MIN_DISTANCE,
    distances: bool = True,
) -> None:
    """Raises [`InvalidStructureError`][jmattersim.InvalidStructureError] unless
    ``atoms`` is fit for the model.

    Checks: an ASE ``Atoms`` with at least one atom; atomic numbers in
    1..max_z; finite floating-point positions; for a periodic structure, a
    finite, non-singular, non-degenerate cell; no two atoms (images included)
    closer than ``min_distance``. An atom with no neighbour within the cutoff is
    fine.

    Args:
        atoms: the structure.
        config: an [`M3GNetConfig`][jmattersim.M3GNetConfig] or a
            [`Model`][jmattersim.Model].
        label: the structure's name in messages; an int is an index
            ('structure 3 (Fe2O3)'); default 'structure (Fe2O3)'.
        min_distance: Å, the closest two atoms may be.
        distances: check the distances (False: skip that check, e.g. when a
            neighbour list is built anyway).

    Raises:
        InvalidStructureError: the structure is unfit, naming the atoms and
            the problem.
    """
    config = _config(config)
    if not isinstance(atoms, Atoms):
        name = label if isinstance(label, str) else f"structure {label or ''}".strip()
        raise InvalidStructureError(name, f"expected an ase.Atoms, got {type(atoms).__name__}")
    numbers = np.asarray(atoms.numbers)
    if isinstance(label, str):
        name = label
    else:
        name = structure_label(label, numbers)
    if len(atoms) == 0:
        raise InvalidStructureError(name, "the structure is empty (no atoms)")
    check_numbers(numbers, config.max_z, name)
    positions = np.asarray(atoms.positions)
    if not np.issubdtype(positions.dtype, np.floating):
        raise InvalidStructureError(
            name, f"positions must be floating point, got {positions.dtype}"
        )
    _check_finite(name, "positions", positions, per_atom=True)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=float)
    check_lattice(cell, pbc, name, min_width=min_distance)
    if distances:
        check_distances(positions, cell, pbc, name, min_distance)


def checked_graph(
    atoms: Atoms,
    config: M3GNetConfig | Any,
    label: str | int | None = None,
    min_distance: float = MIN_DISTANCE,
):
    """:func:`check_atoms`, then the structure's graph
    (:func:`jmattersim._src.graph.structure_graph`), the distance check made on it."""
    from .graph import structure_graph

    config = _config(config)
    check_atoms(atoms, config, label, min_distance, distances=False)
    graph = structure_graph(atoms, config)
    name = label if isinstance(label, str) else structure_label(label, atoms.numbers)
    check_graph_distances(graph, name, min_distance)
    return graph


def check_structures(
    structures: Sequence[Atoms], config: M3GNetConfig | Any, kind: str = "structure"
) -> None:
    """:func:`check_atoms` on each, labelled '<kind> <index> (<formula>)'."""
    for k, atoms in enumerate(structures):
        check_atoms(atoms, config, _label(k, atoms, kind))


def checked_graphs(
    structures: Sequence[Atoms], config: M3GNetConfig | Any, kind: str = "structure"
) -> list:
    """:func:`checked_graph` of each, labelled '<kind> <index> (<formula>)'."""
    return [
        checked_graph(atoms, config, _label(k, atoms, kind)) for k, atoms in enumerate(structures)
    ]


def _label(index: int, atoms: Any, kind: str) -> str:
    if isinstance(atoms, Atoms):
        return structure_label(index, atoms.numbers, kind)
    return f"{kind} {index}"


def _host_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"check_arrays runs on the host, but {name} is traced (inside jit); "
            "use jmattersim.checked_energy_fn there"
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
    [`checked_energy_fn`][jmattersim.checked_energy_fn].

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
        capacity: a [`TopologyCapacity`][jmattersim.TopologyCapacity]; if
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
    lattice) fits ``capacity`` (a :class:`jmattersim.TopologyCapacity`; counts over
    the whole batch), counted on the host with the sets the in-jit topology builds."""
    from .geometry import candidate_pairs
    from .graph import neighbor_list, triplet_indices

    total_atoms = sum(len(pos) for _, pos, _ in structures)
    max_pairs = capacity.pairs(total_atoms)
    edges = trips = pairs = 0
    for label, pos, cell in structures:
        s, _, _, d = neighbor_list(pos, cell, (True, True, True), config.cutoff)
        bonds3 = np.bincount(s[d <= config.threebody_cutoff], minlength=len(pos))
        worst = int(np.argmax(bonds3))
        if bonds3[worst] > capacity.max_neighbors:
            raise CapacityOverflowError(
                label,
                f"neighbour capacity overflow: atom {worst} has {bonds3[worst]} "
                f"neighbours within the three-body cutoff ({config.threebody_cutoff} Å), "
                f"max_neighbors is {capacity.max_neighbors}",
                (worst,),
            )
        edges += len(s)
        trips += len(triplet_indices(s, d, config.threebody_cutoff))
        pairs += candidate_pairs(len(pos), cell, (True, True, True), config.cutoff)
        for what, total, cap in (
            ("edges", edges, capacity.max_edges),
            ("triplets", trips, capacity.max_triplets),
            ("pairs", pairs, max_pairs),
        ):
            if total > cap:
                raise CapacityOverflowError(
                    label,
                    f"neighbour capacity overflow: the batch has {total} {what} up to "
                    f"and including this structure, max_{what} is {cap}",
                )


# ---------------------------------------------------------------- inside jit


def _in_jit_checks(atom_types: jnp.ndarray, positions: jnp.ndarray, lattice: jnp.ndarray) -> None:
    """checkify checks of one structure's inputs (see :func:`check_arrays`)."""
    bad_pos = ~jnp.all(jnp.isfinite(positions), axis=-1)
    checkify.check(
        ~jnp.any(bad_pos),
        "invalid input: positions of atom {i} are NaN or infinite",
        i=jnp.argmax(bad_pos),
    )
    checkify.check(
        jnp.all(jnp.isfinite(lattice)), "invalid input: the lattice contains NaN or infinite values"
    )
    volume = jnp.abs(jnp.linalg.det(lattice))
    checkify.check(
        volume > 1e-12 * jnp.prod(jnp.linalg.norm(lattice, axis=-1)),
        "invalid input: the lattice is singular (volume {v} Å^3)",
        v=volume,
    )
    types_bad = ~jnp.all(jnp.isfinite(atom_types), axis=-1) | jnp.any(atom_types < 0, axis=-1)
    checkify.check(
        ~jnp.any(types_bad),
        "invalid input: atom_types row of atom {i} is negative, NaN or infinite",
        i=jnp.argmax(types_bad),
    )
    empty = jnp.sum(atom_types, axis=-1) <= 0
    checkify.check(
        ~jnp.any(empty),
        "invalid input: atom_types row of atom {i} sums to zero",
        i=jnp.argmax(empty),
    )


def checked_energy_fn(
    config: M3GNetConfig,
    capacity: Any = None,
    *,
    soft_normalize: bool = True,
    **capacities: Any,
) -> Callable:
    """[`energy_fn`][jmattersim.energy_fn] with ``checkify`` checks inside.

    Checks finite inputs, a non-singular lattice, valid atom_types rows, no
    neighbour-capacity overflow (which ``energy_fn`` turns into NaN) and a
    finite energy. Transform the result freely (``grad``, ``vmap``), then run it
    through [`checked`][jmattersim.checked] (or ``checkify.checkify``): an
    unfunctionalised check cannot run under ``jit``.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`TopologyCapacity`][jmattersim.TopologyCapacity].
        soft_normalize: as for ``energy_fn``.
        **capacities: the fields of a ``TopologyCapacity`` instead of
            ``capacity``.

    Returns:
        ``energy(params, atom_types, positions, lattice) -> ()`` eV, as
        ``energy_fn``'s: atom_types (N, max_z + 1), positions (N, 3) Å,
        lattice (3, 3) Å rows.
    """
    from .energy import energy_fn
    from .neighbors import TopologyCapacity, topology

    base = energy_fn(config, capacity, soft_normalize=soft_normalize, **capacities)
    capacity = capacity or TopologyCapacity(**capacities)

    def energy(
        params: Any, atom_types: jnp.ndarray, positions: jnp.ndarray, lattice: jnp.ndarray
    ) -> jnp.ndarray:
        _in_jit_checks(atom_types, positions, lattice)
        n_node = jnp.array([positions.shape[0]])
        # the same topology energy_fn builds (XLA computes it once)
        overflow = topology(positions, lattice[None], n_node, config, capacity).overflow
        checkify.check(
            ~overflow,
            f"neighbour capacity overflow: the structure does not fit "
            f"{capacity} (size it with jmattersim.capacity_for)",
        )
        e = base(params, atom_types, positions, lattice)
        checkify.check(jnp.isfinite(e), "the energy is not finite")
        return e

    return energy


def checked(fn: Callable, jit: bool = True) -> Callable:
    """``fn`` with its ``checkify`` checks functionalised: raises after the call.

    Example: ``forces = checked(jax.grad(checked_energy_fn(config, capacity),
    argnums=2))``.

    Args:
        fn: a function containing ``checkify`` checks, e.g. from
            [`checked_energy_fn`][jmattersim.checked_energy_fn], possibly
            transformed (``jax.grad``, ``jax.vmap``).
        jit: compile it with ``jax.jit``.

    Returns:
        A function with ``fn``'s arguments and value that raises
        [`CapacityOverflowError`][jmattersim.CapacityOverflowError] for an
        overflow and [`InvalidStructureError`][jmattersim.InvalidStructureError]
        for any other failed check.
    """
    run = checkify.checkify(fn, errors=checkify.user_checks)
    if jit:
        run = jax.jit(run)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        err, out = run(*args, **kwargs)
        message = err.get()
        if message is not None:
            first = message.splitlines()[0].removesuffix(" (`check` failed)")
            cls = CapacityOverflowError if "capacity overflow" in first else InvalidStructureError
            raise cls("", first)
        return out

    return wrapper
