"""ASE calculator: a drop-in for upstream's ``MatterSimCalculator``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, predict
from .graph import batch_graphs, structure_graph
from .io import Model, load_model
from .validate import check_atoms, structure_label


@functools.partial(jax.jit, static_argnums=0)
def predict_jit(config: M3GNetConfig, params, batch):
    """:func:`jmattersim.energy.predict`, compiled once per config and padded shape."""
    return predict(config, params, batch)


def default_dtype():
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


class MatterSimCalculator(Calculator):
    """Energy, free energy, forces and stress of MatterSim, computed in JAX.

    model: a :class:`jmattersim.Model`, a model directory, a ``.pth`` checkpoint or a
    published name (default ``mattersim-v1.0.0-1M``). Stress is ASE's (eV/Å^3):
    upstream's GPa value times ``stress_weight`` (ASE's GPa, as upstream).
    Computes in float64 when ``jax_enable_x64`` is on, float32 otherwise.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: Model | str | None = None,
        compute_stress: bool = True,
        stress_weight: float = GPa,
        dtype=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if model is None:
            model = "mattersim-v1.0.0-1M"
        if not isinstance(model, Model):
            model = load_model(model)
        self.model = model
        self.dtype = dtype or default_dtype()
        self.compute_stress = compute_stress
        self.stress_weight = stress_weight
        self._params = model.astype(self.dtype).params

    @classmethod
    def from_checkpoint(cls, load_path: str, **kwargs) -> MatterSimCalculator:
        return cls(load_model(load_path), **kwargs)

    def calculate(self, atoms: Atoms | None = None, properties=None,
                  system_changes=all_changes):
        super().calculate(atoms, properties or ["energy"], system_changes)
        config = self.model.config
        label = structure_label(None, self.atoms.numbers)
        check_atoms(self.atoms, config, label)  # InvalidStructureError, naming atom and problem
        batch = batch_graphs([structure_graph(self.atoms, config)], config,
                             dtype=np.dtype(self.dtype))
        out = predict_jit(config, self._params, batch)
        n = len(self.atoms)
        energy = float(out.energy[0])
        forces = np.asarray(out.forces[:n], dtype=float)
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise FloatingPointError(f"{label}: the model returned a non-finite energy or "
                                     "forces (are the model's parameters finite?)")
        self.results.update(
            energy=energy, free_energy=energy, forces=forces
        )
        if self.compute_stress:
            stress_gpa = np.asarray(out.stress[0], dtype=float) * EV_PER_A3_TO_GPA
            self.results["stress"] = self.stress_weight * full_3x3_to_voigt_6_stress(stress_gpa)
