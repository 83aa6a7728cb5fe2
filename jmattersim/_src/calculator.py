"""ASE calculator: a drop-in for upstream's ``MatterSimCalculator``."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from . import engine
from .arrays import default_float
from .checkpoint import Model
from .checks import structure_label
from .committee import Committee
from .graph import checked_graph
from .io import load_model_or_committee
from .predictions import EV_PER_A3_TO_GPA
from .published import DEFAULT


class MatterSimCalculator(Calculator):
    """ASE calculator: energy, free energy, forces and stress of MatterSim, in JAX.

    A drop-in for upstream's ``MatterSimCalculator``. Results: ``energy`` and
    ``free_energy`` eV; ``forces`` (N, 3) eV/Å; ``stress`` (6,) Voigt, eV/Å³
    (ASE's unit and sign), upstream's GPa value times ``stress_weight``. Forces
    and stress come from automatic differentiation.

    Given a [`Committee`][jmattersim.train.Committee], the results are the member
    means, plus their population standard deviations (ddof=0) ``energy_std``
    eV, ``forces_std`` (N, 3) eV/Å and ``stress_std`` (6,) Voigt in the unit of
    ``stress``; all members run in one compiled call.

    Each structure runs through the evaluation engine in the smallest budget of
    ``ladder`` that holds it: a process compiles at most one function per rung,
    whatever structures it is given. Every structure is checked first: an
    [`InvalidStructureError`][jmattersim.InvalidStructureError] names the problem.

    Args:
        model: a [`Model`][jmattersim.Model] or
            [`Committee`][jmattersim.train.Committee], a model or committee directory,
            a ``.pth`` checkpoint or a published name (default
            ``mattersim-v1.0.0-1M``).
        compute_stress: also compute the stress.
        stress_weight: factor from GPa to the reported stress (default
            ``ase.units.GPa``: eV/Å³).
        dtype (numpy dtype or None): float32 or float64 (default: float64 when
            ``jax_enable_x64`` is on, float32 otherwise).
        ladder (sequence of Capacity or None): the budgets (default
            [`jmattersim.batch.LADDER`][jmattersim.batch.LADDER]).
        **kwargs (Any): passed to ASE's ``Calculator``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    committee_properties = ["energy_std", "forces_std", "stress_std"]

    def __init__(
        self,
        model: Model | Committee | str | None = None,
        compute_stress: bool = True,
        stress_weight: float = GPa,
        dtype=None,
        ladder=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if model is None:
            model = DEFAULT
        if not isinstance(model, (Model, Committee)):
            model = load_model_or_committee(model)
        self.model = model
        if isinstance(model, Committee):  # an instance list: the class's stays as it is
            self.implemented_properties = [*self.implemented_properties, *self.committee_properties]
        self.dtype = np.dtype(dtype or default_float())
        self.compute_stress = compute_stress
        self.stress_weight = stress_weight
        self.ladder = ladder

    @classmethod
    def from_checkpoint(cls, load_path: str, **kwargs) -> MatterSimCalculator:
        """A calculator of the model at ``load_path`` (as upstream's constructor).

        Args:
            load_path: a model or committee directory, a ``.pth`` checkpoint or a
                published name.
            **kwargs (Any): the constructor's other arguments.

        Returns:
            The calculator.
        """
        return cls(load_model_or_committee(load_path), **kwargs)

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes):
        """Computes every implemented property of ``atoms`` into ``self.results``
        (ASE's calculator protocol; call ``atoms.get_forces()`` etc. instead).

        Args:
            atoms: the structure (default: the attached one).
            properties (list of str or None): requested properties (all are
                computed together).
            system_changes (list of str): what changed since the last call (ASE's).

        Raises:
            InvalidStructureError: the structure is unfit for the model.
            FloatingPointError: the model returned a non-finite energy or forces.
        """
        super().calculate(atoms, properties or ["energy"], system_changes)
        config = self.model.config
        label = structure_label(None, self.atoms.numbers)
        graph = checked_graph(self.atoms, config, label)  # InvalidStructureError, naming it
        (out,) = engine.run(self.model, [graph], dtype=self.dtype, ladder=self.ladder)
        forces = np.asarray(out.forces, dtype=float)
        if not (np.isfinite(out.energy) and np.isfinite(forces).all()):
            raise FloatingPointError(
                f"{label}: the model returned a non-finite energy or "
                "forces (are the model's parameters finite?)"
            )
        self.results.update(energy=out.energy, free_energy=out.energy, forces=forces)
        if self.compute_stress:
            self.results["stress"] = self._voigt(out.stress)
        if out.energy_std is not None:
            self.results.update(
                energy_std=out.energy_std, forces_std=np.asarray(out.forces_std, dtype=float)
            )
            if self.compute_stress:
                self.results["stress_std"] = self._voigt(out.stress_std)

    def _voigt(self, stress: np.ndarray) -> np.ndarray:
        """(3, 3) eV/Å³ as (6,) Voigt in the calculator's unit: upstream's GPa value
        times ``stress_weight`` (eV/Å³ with the default ``ase.units.GPa``)."""
        per_ev_a3 = EV_PER_A3_TO_GPA * self.stress_weight  # the unit's value of 1 eV/Å³
        return per_ev_a3 * full_3x3_to_voigt_6_stress(np.asarray(stress, dtype=float))
