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
from .energy import EV_PER_A3_TO_GPA
from .io import load_model
from .published import DEFAULT
from .validate import checked_graph, structure_label


class MatterSimCalculator(Calculator):
    """Energy, free energy, forces and stress of MatterSim, computed in JAX.

    model: a :class:`jmattersim.Model`, a model directory, a ``.pth`` checkpoint or a
    published name (default ``mattersim-v1.0.0-1M``). Stress is ASE's (eV/Å^3):
    upstream's GPa value times ``stress_weight`` (ASE's GPa, as upstream).
    Computes in float64 when ``jax_enable_x64`` is on, float32 otherwise.

    Each structure runs through :mod:`jmattersim.engine` in the smallest budget of
    ``ladder`` (default :data:`jmattersim.engine.LADDER`) that holds it: a process
    compiles at most one function per rung, whatever structures it is given.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: Model | str | None = None,
        compute_stress: bool = True,
        stress_weight: float = GPa,
        dtype=None,
        ladder=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if model is None:
            model = DEFAULT
        if not isinstance(model, Model):
            model = load_model(model)
        self.model = model
        self.dtype = np.dtype(dtype or default_float())
        self.compute_stress = compute_stress
        self.stress_weight = stress_weight
        self.ladder = ladder

    @classmethod
    def from_checkpoint(cls, load_path: str, **kwargs) -> MatterSimCalculator:
        return cls(load_model(load_path), **kwargs)

    def calculate(self, atoms: Atoms | None = None, properties=None,
                  system_changes=all_changes):
        super().calculate(atoms, properties or ["energy"], system_changes)
        config = self.model.config
        label = structure_label(None, self.atoms.numbers)
        graph = checked_graph(self.atoms, config, label)  # InvalidStructureError, naming it
        (out,) = engine.run(self.model, [graph], dtype=self.dtype, ladder=self.ladder)
        forces = np.asarray(out.forces, dtype=float)
        if not (np.isfinite(out.energy) and np.isfinite(forces).all()):
            raise FloatingPointError(f"{label}: the model returned a non-finite energy or "
                                     "forces (are the model's parameters finite?)")
        self.results.update(energy=out.energy, free_energy=out.energy, forces=forces)
        if self.compute_stress:
            stress_gpa = np.asarray(out.stress, dtype=float) * EV_PER_A3_TO_GPA
            self.results["stress"] = self.stress_weight * full_3x3_to_voigt_6_stress(stress_gpa)
