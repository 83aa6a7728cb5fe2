"""Input checks for the public edges, on the host, before anything is compiled.

A potential that returns a confident wrong number is worse than one that
crashes. The checks below run in numpy before anything is compiled and
raise :class:`InvalidStructureError` with a message that names the structure,
the atom(s) and the problem, e.g.::

    structure 3 (Fe2O3): atoms 0 and 4 are 0.31 Å apart (< 0.5 Å)

- :func:`check_atoms` for one ASE ``Atoms`` (the calculator, :func:`jmattersim.evaluate`,
  the CLI, ``relax``);
- :func:`jmattersim._src.array_checks.check_arrays` for the tensor API
  (``forward_batch``).

An isolated atom (no neighbour within the cutoff) is valid: its energy is the
model's energy of the atom without edges, as upstream gives it.

Inside ``jit`` nothing can raise: there the checks are ``checkify`` checks
(:mod:`jmattersim._src.checked`). Structures become checked graphs in
:func:`jmattersim._src.graph.checked_graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .config import M3GNetConfig
from .host_neighbors import neighbor_list

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
    [`Capacity`][jmattersim.Capacity]); an
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
