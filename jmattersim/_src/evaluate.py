"""Energies, forces and stresses of many structures (:mod:`jmattersim._src.engine`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
from ase import Atoms

from . import engine
from .capacity import Capacity
from .checkpoint import Model
from .committee import Committee
from .graph import checked_graphs
from .predictions import Predictions


def evaluate(
    model: Model | Committee,
    structures: Iterable[Atoms],
    dtype=None,
    mesh: jax.sharding.Mesh | None = None,
    ladder: Sequence[Capacity] | None = None,
) -> list[Predictions]:
    """Energy, forces and stress (eV/Å³; ``stress_gpa`` in GPa) of every structure,
    in padded batches.

    Every structure is checked first ([`check_atoms`][jmattersim.checks.check_atoms]):
    an [`InvalidStructureError`][jmattersim.InvalidStructureError] names the
    first bad one by its index ('structure 3 (Fe2O3): ...'). Structures are
    packed into the engine's budgets; a process compiles at most one function
    per budget.

    Args:
        model: the [`Model`][jmattersim.Model], or a
            [`Committee`][jmattersim.train.Committee] (all members in one compiled
            call per budget: member means and standard deviations).
        structures: ASE structures (any iterable; read once).
        dtype (numpy dtype or None): float32 or float64 (default: float64 when
            ``jax_enable_x64`` is on, float32 otherwise).
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.batch.graph_mesh]).
        ladder: the budgets (default [`jmattersim.batch.LADDER`][jmattersim.batch.LADDER]).

    Returns:
        One [`Predictions`][jmattersim.Predictions] per structure, in order
        (numpy): energy float eV, forces (N, 3) eV/Å, stress (3, 3) eV/Å³ (its
        property ``stress_gpa`` in GPa), and of a committee their standard
        deviations across members (``energy_std``, ``forces_std``,
        ``stress_std`` eV/Å³, ``stress_std_gpa`` GPa).

    Raises:
        InvalidStructureError: a structure is unfit for the model.
    """
    graphs = checked_graphs(list(structures), model.config)
    return engine.run(model, graphs, dtype=dtype, mesh=mesh, ladder=ladder)
