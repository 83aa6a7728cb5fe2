"""The one result record: energies, forces and stresses (eV/Å³), with a
committee's spread in the same record. GPa exists only as a view
(:attr:`Predictions.stress_gpa`)."""

from __future__ import annotations

from typing import NamedTuple

from ase.units import GPa
from jax.typing import ArrayLike

EV_PER_A3_TO_GPA = 1.0 / GPa  # GPa per eV/Å³ (160.2)


class Predictions(NamedTuple):
    """Energies, forces and stresses: of a padded batch (JAX arrays, from
    [`batch_properties_fn`][jmattersim.batch.batch_properties_fn], inside ``jax.jit``
    too) or of one structure (numpy, from [`evaluate`][jmattersim.evaluate]).

    A pytree; a None field is an empty subtree. In a batch, graphs after the real
    ones, and their nodes, are padding. Every stress field is in eV/Å³; the
    properties ``stress_gpa`` and ``stress_std_gpa`` give them in **GPa**
    (upstream's batch unit).

    Attributes:
        energy: (G,) eV of a batch; a float of one structure.
        forces: (N, 3) eV/Å; None without derivatives.
        stress: (G, 3, 3) of a batch, (3, 3) of one structure, **eV/Å³** (ASE's
            unit and sign, positive under tension): dE/dε / V for a strain ε
            applied as ``x @ (I + ε)``; None without derivatives.
        energy_std: of a [`Committee`][jmattersim.train.Committee] (whose member means
            the fields above hold), the population standard deviation (ddof=0)
            of the members' energies, eV; None for a single model.
        forces_std: likewise, (N, 3) eV/Å, per component; None for a single model.
        stress_std: likewise, the shape of ``stress``, eV/Å³; None for a single model.
    """

    energy: ArrayLike
    forces: ArrayLike | None
    stress: ArrayLike | None
    energy_std: ArrayLike | None = None
    forces_std: ArrayLike | None = None
    stress_std: ArrayLike | None = None

    @property
    def stress_gpa(self) -> ArrayLike | None:
        """``stress`` in **GPa** (upstream's batch unit; ASE's sign), the same
        shape; None without derivatives."""
        return _gpa(self.stress)

    @property
    def stress_std_gpa(self) -> ArrayLike | None:
        """``stress_std`` in **GPa**; None for a single model."""
        return _gpa(self.stress_std)


def _gpa(stress: ArrayLike | None) -> ArrayLike | None:
    return None if stress is None else stress * EV_PER_A3_TO_GPA
