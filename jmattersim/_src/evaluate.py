"""Energies, forces and stresses of many structures (:mod:`jmattersim._src.engine`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from ase import Atoms

from . import engine
from .checkpoint import Model
from .committee import Committee
from .energy import EV_PER_A3_TO_GPA
from .graph import checked_graphs
from .padding import BatchBudget


@dataclasses.dataclass(frozen=True)
class Result:
    """One structure's energy, forces and stress, from [`evaluate`][jmattersim.evaluate].

    Attributes:
        energy: eV.
        forces: (N, 3) eV/Å.
        stress_gpa: (3, 3) **GPa** (the unit of upstream's batch API; ASE's
            sign, positive under tension). Multiply by ``ase.units.GPa`` for
            ASE's eV/Å³.
        energy_std: of a [`Committee`][jmattersim.Committee] (whose member means
            the fields above hold), the population standard deviation (ddof=0)
            of the members' energies, eV; None for a single model.
        forces_std: likewise, (N, 3) eV/Å, per component; None for a single model.
        stress_std_gpa: likewise, (3, 3) GPa; None for a single model.
    """

    energy: float
    forces: np.ndarray
    stress_gpa: np.ndarray
    energy_std: float | None = None
    forces_std: np.ndarray | None = None
    stress_std_gpa: np.ndarray | None = None


def evaluate(
    model: Model | Committee,
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
        model: the [`Model`][jmattersim.Model], or a
            [`Committee`][jmattersim.Committee] (all members in one compiled
            call per budget: member means and standard deviations).
        structures: ASE structures (any iterable; read once).
        dtype (numpy dtype or None): float32 or float64 (default: float64 when
            ``jax_enable_x64`` is on, float32 otherwise).
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.graph_mesh]).
        ladder: the budgets (default [`jmattersim.LADDER`][jmattersim.LADDER]).

    Returns:
        One [`Result`][jmattersim.Result] per structure, in order: energy eV,
        forces (N, 3) eV/Å, stress_gpa (3, 3) GPa (and of a committee their
        standard deviations across members).

    Raises:
        InvalidStructureError: a structure is unfit for the model.
    """
    graphs = checked_graphs(list(structures), model.config)
    return [
        _result(out) for out in engine.run(model, graphs, dtype=dtype, mesh=mesh, ladder=ladder)
    ]


def _result(out: engine.Evaluation) -> Result:
    spread = out.energy_std is not None
    return Result(
        out.energy,
        out.forces,
        out.stress * EV_PER_A3_TO_GPA,
        out.energy_std,
        out.forces_std,
        out.stress_std * EV_PER_A3_TO_GPA if spread else None,
    )
