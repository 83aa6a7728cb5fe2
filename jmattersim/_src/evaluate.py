"""Energies, forces and stresses of many structures (:mod:`jmattersim.engine`)."""

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
    """One structure's energy (eV), forces (N, 3) in eV/Å and stress (3, 3) in GPa
    (the unit of upstream's batch API; ASE's sign: positive under tension). Multiply
    by ``ase.units.GPa`` for ASE's eV/Å³."""

    energy: float
    forces: np.ndarray
    stress_gpa: np.ndarray


def evaluate(model: Model, structures: Iterable[Atoms], dtype=None,
             mesh: jax.sharding.Mesh | None = None,
             ladder: Sequence[BatchBudget] | None = None) -> list[Result]:
    """Energy, forces and stress (GPa) of every structure, in padded batches.

    Every structure is checked first (:func:`jmattersim.validate.check_atoms`): an
    :class:`~jmattersim.validate.InvalidStructureError` names the first bad one by
    its index ('structure 3 (Fe2O3): ...'). Structures are packed into the
    engine's budgets (``ladder``, default :data:`jmattersim.engine.LADDER`); ``mesh``
    spreads the batches over several devices.
    """
    graphs = checked_graphs(list(structures), model.config)
    return [Result(out.energy, out.forces, out.stress * EV_PER_A3_TO_GPA)
            for out in engine.run(model, graphs, dtype=dtype, mesh=mesh, ladder=ladder)]
