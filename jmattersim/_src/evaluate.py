"""Energies, forces and stresses of many structures (:mod:`jmattersim._src.engine`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from ase import Atoms

from . import engine
from .checkpoint import Model
from .energy import EV_PER_A3_TO_GPA
from .padding import BatchBudget
from .validate import checked_graphs


@dataclasses.dataclass(frozen=True)
class Result:
    """One structure's energy, forces and stress, from [`evaluate`][jmattersim.evaluate].

    Attributes:
        energy: eV.
        forces: (N, 3) eV/Å.
        stress_gpa: (3, 3) **GPa** (the unit of upstream's batch API; ASE's
            sign, positive under tension). Multiply by ``ase.units.GPa`` for
            ASE's eV/Å³.
    """

    energy: float
    forces: np.ndarray
    stress_gpa: np.ndarray


def evaluate(
    model: Model,
    structures: Iterable[Atoms],
    dtype=None,
    mesh: jax.sharding.Mesh | None = None,
    ladder: Sequence[BatchBudget] | None = None,
) -> list[Result]:
    """Energy, forces and stress (GPa) of every structure, in padded batches.

    Every structure is checked first ([`check_atoms`][jmattersim.check_atoms]):
    an [`InvalidStructureError`][jmattersim.InvalidStructureError] names the
    first bad one by its index ('structure 3 (Fe2O3): ...'). Structures are
    packed into the engine's budgets; a process compiles at most one function
    per budget.

    Args:
        model: the [`Model`][jmattersim.Model].
        structures: ASE structures (any iterable; read once).
        dtype (numpy dtype or None): float32 or float64 (default: float64 when
            ``jax_enable_x64`` is on, float32 otherwise).
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.graph_mesh]).
        ladder: the budgets (default [`jmattersim.LADDER`][jmattersim.LADDER]).

    Returns:
        One [`Result`][jmattersim.Result] per structure, in order: energy eV,
        forces (N, 3) eV/Å, stress_gpa (3, 3) GPa.

    Raises:
        InvalidStructureError: a structure is unfit for the model.
    """
    graphs = checked_graphs(list(structures), model.config)
    return [
        Result(out.energy, out.forces, out.stress * EV_PER_A3_TO_GPA)
        for out in engine.run(model, graphs, dtype=dtype, mesh=mesh, ladder=ladder)
    ]
