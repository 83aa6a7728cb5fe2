"""Labelled structures for training: energies, forces and stresses, checked.

A training file is anything ASE reads whose frames carry ``energy`` and ``forces``
(and ``stress`` where stresses are trained), e.g. extxyz as written by
``jmattersim predict`` or the MPtrj exports. Units are ASE's: eV, eV/Å, eV/Å³;
stresses are kept in GPa, the unit of upstream's training loss. A frame without a
needed label, with a label of the wrong shape, non-finite, or declared in other
units (``energy_unit``, ``forces_unit``, ``stress_unit`` in its info) stops the
run with an error naming the frame and the problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import GPa

from .checks import InvalidStructureError, structure_label
from .config import M3GNetConfig
from .graph import StructureGraph, checked_graph

# Unit spellings accepted in a frame's info (anything else is refused: no silent mixing).
UNITS = {
    "energy": {"ev"},
    "forces": {"ev/a", "ev/å", "ev/ang", "ev/angstrom"},
    "stress": {"ev/a^3", "ev/å^3", "ev/a3", "ev/å3", "ev/ang^3", "ev/angstrom^3"},
}


class InvalidLabelError(InvalidStructureError):
    """A training frame lacks a label, or carries one of the wrong shape or unit."""


@dataclasses.dataclass(frozen=True)
class LabelledFrame:
    """One training structure: its graph and labels.

    Attributes:
        graph: the host graph (:mod:`jmattersim._src.graph`).
        energy: total energy, eV.
        forces: (N, 3) eV/Å, or None when forces are not trained.
        stress_gpa: (3, 3) GPa (ASE's sign), or None when stresses are not trained.
        label: how errors name it, e.g. "training frame 3 (Fe2O3) of train.xyz".
    """

    graph: StructureGraph
    energy: float
    forces: np.ndarray | None
    stress_gpa: np.ndarray | None
    label: str = ""

    @property
    def n_atoms(self) -> int:
        return self.graph.n_node


def _results(atoms: Atoms) -> dict:
    return dict(atoms.calc.results) if atoms.calc is not None else {}


def _check_units(atoms: Atoms, label: str, needed: Sequence[str]) -> None:
    for name in needed:
        unit = atoms.info.get(f"{name}_unit")
        if unit is not None and str(unit).strip().lower() not in UNITS[name]:
            want = {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3"}[name]
            raise InvalidLabelError(
                label,
                f"{name} is in '{unit}', expected {want} (ASE's units); convert "
                "the labels before training (mixed units are never guessed)",
            )


def labelled_frame(
    atoms: Atoms,
    config: M3GNetConfig,
    label: str,
    forces: bool = True,
    stress: bool = False,
) -> LabelledFrame:
    """Checks one frame's structure and labels; its graph and labels in training units.

    Args:
        atoms: the frame, with its labels in ``atoms.calc`` (as ASE reads them).
        config: the model's config (cutoffs, elements).
        label: how errors name the frame, e.g. "frame 3 (Fe2O3) of train.xyz".
        forces: forces are needed.
        stress: stresses are needed.

    Raises:
        InvalidLabelError: a needed label is missing, mis-shaped, non-finite or in
            other units.
        InvalidStructureError: the structure is unfit for the model.
    """
    results = _results(atoms)
    needed = ["energy"] + ["forces"] * forces + ["stress"] * stress
    _check_units(atoms, label, needed)
    for name in needed:
        if name not in results:
            hint = f" ({name} is in the frame's info, not read as a label)" * (name in atoms.info)
            raise InvalidLabelError(label, f"no {name} label{hint}")
    energy = np.asarray(results["energy"], dtype=float)
    if energy.size != 1 or not np.isfinite(energy).all():
        raise InvalidLabelError(label, f"energy must be one finite number, got {energy!r}")
    f = None
    if forces:
        f = np.asarray(results["forces"], dtype=float)
        if f.shape != (len(atoms), 3):
            raise InvalidLabelError(
                label, f"forces have shape {f.shape}, expected ({len(atoms)}, 3)"
            )
        if not np.isfinite(f).all():
            raise InvalidLabelError(label, "forces hold NaN or infinite values")
    s = None
    if stress:
        s = np.asarray(results["stress"], dtype=float)
        if s.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            s = voigt_6_to_full_3x3_stress(s)
        if s.shape != (3, 3):
            raise InvalidLabelError(
                label, f"stress has shape {s.shape}, expected (3, 3) or Voigt (6,), eV/A^3"
            )
        if not np.isfinite(s).all():
            raise InvalidLabelError(label, "stress holds NaN or infinite values")
        s = s / GPa
    graph = checked_graph(atoms, config, label)
    return LabelledFrame(graph, float(energy.reshape(())), f, s, label)


def read_frames(
    source: str | os.PathLike | Sequence[Atoms],
    config: M3GNetConfig,
    forces: bool = True,
    stress: bool = False,
    kind: str = "frame",
) -> list[LabelledFrame]:
    """Every frame of a file (any format ASE reads) or a list of structures, checked.

    Errors name the frame by its index and formula, and the file.
    """
    import ase.io

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"training data not found: {path}")
        frames = ase.io.read(path, index=":")
        where = f" of {path.name}"
    else:
        frames, where = list(source), ""
    if not frames:
        raise ValueError(f"no structures in {source if where else 'the data'}")
    return [
        labelled_frame(
            atoms, config, f"{structure_label(k, atoms.numbers, kind)}{where}", forces, stress
        )
        for k, atoms in enumerate(frames)
    ]
