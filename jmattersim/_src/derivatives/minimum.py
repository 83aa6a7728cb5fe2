"""Derivatives at a minimum: a warning where the structure is not at one.

Force constants and elastic constants are defined at a stationary point. At a
structure with residual forces (or, for elastic constants, residual stress) they
are still the exact derivatives there, but not the harmonic properties of the
material: say so, naming the largest residual.
"""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms

from ..checks import structure_label

# eV/Å: above this residual force the structure is not treated as relaxed.
FMAX_AT_MINIMUM = 0.01
# GPa: above this residual stress component the cell is not treated as relaxed.
SMAX_AT_MINIMUM = 0.1


class NotAtMinimumWarning(UserWarning):
    """Derivatives asked for at a structure with residual forces or stress."""


def warn_residual(
    atoms: Atoms,
    forces: np.ndarray,
    stress_gpa: np.ndarray | None = None,
    *,
    what: str,
    fmax: float = FMAX_AT_MINIMUM,
    smax: float = SMAX_AT_MINIMUM,
    stacklevel: int = 3,
) -> tuple[float, float]:
    """Warns (:class:`NotAtMinimumWarning`) given the residual ``forces`` (N, 3) eV/Å
    and, if given, ``stress_gpa`` (3, 3) GPa of ``atoms``.

    Returns:
        (largest force norm eV/Å, largest |stress component| GPa).
    """
    norms = np.linalg.norm(np.asarray(forces, dtype=float), axis=1)
    worst = int(np.argmax(norms)) if len(norms) else 0
    force = float(norms[worst]) if len(norms) else 0.0
    stress = 0.0 if stress_gpa is None else float(np.abs(stress_gpa).max())
    label = structure_label(None, atoms.numbers)
    problems = []
    if force > fmax:
        problems.append(
            f"the largest residual force is {force:.3g} eV/Å on atom {worst} "
            f"({atoms.get_chemical_symbols()[worst]}), above {fmax} eV/Å"
        )
    if stress > smax:
        problems.append(
            f"the largest residual stress component is {stress:.3g} GPa, above {smax} GPa"
        )
    if problems:
        warnings.warn(
            f"{label}: {what} at a structure that is not at a minimum: "
            + "; ".join(problems)
            + ". The derivatives are exact at this geometry but are not its harmonic "
            "properties; relax it first (jmattersim.relax, or relax=True).",
            NotAtMinimumWarning,
            stacklevel=stacklevel,
        )
    return force, stress
