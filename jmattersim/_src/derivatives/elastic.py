"""Exact elastic constants: second derivatives of the energy in the strain.

A strain ε deforms cell and positions as ``x @ (I + ε)`` (the stress convention of
:mod:`jmattersim._src.energy`). The clamped-ion tensor is the exact Jacobian (forward
over reverse) of the stress at the strained structure, σ(ε) = (1/V(ε)) ∂E/∂ε' of the
structure deformed by ``(I + ε)(I + ε')`` at ε' = 0, in the strain ε: the derivative
of what the calculator returns, equal to (1/V) ∂²E/∂ε² at zero stress. The
relaxed-ion tensor adds the relaxation of the positions with the strain:
``C_relaxed = C_clamped - (1/V) Λᵀ H⁺ Λ``, with Λ = ∂²E/∂r∂e the exact mixed
derivative and H the exact position Hessian, the uniform translations projected out.
The topology is the structure's host graph, held fixed while differentiating.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from ..arrays import Array, default_float
from ..checkpoint import Model
from ..checks import structure_label
from ..config import M3GNetConfig
from ..energy import EV_PER_A3_TO_GPA, batch_energy_of, forces_and_stress
from .chunks import DEFAULT_TANGENTS, REMAT, chunked
from .minimum import warn_residual

# Voigt order xx, yy, zz, yz, xz, xy: the (row, column) of each component.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
# Singular values of the (translation-free) Hessian below this fraction of the largest
# are treated as zero modes (by the float type: the Hessian's round-off).
RCOND = {np.dtype(np.float64).name: 1e-10, np.dtype(np.float32).name: 1e-5}


@dataclasses.dataclass(frozen=True, eq=False)
class ElasticTensor:
    """Elastic constants of a structure, from
    [`elastic_tensor`][jmattersim.derivatives.elastic_tensor].

    Voigt order xx, yy, zz, yz, xz, xy, with engineering shear strains
    (e₄ = 2ε_yz, ...): ``σ_a = Σ_b C[a, b] e_b``. The averages are the standard
    Voigt, Reuss and Hill ones of ``voigt_gpa`` and its inverse ``S``.

    Attributes:
        voigt_gpa: (6, 6) GPa, the relaxed-ion tensor where it was computed, else
            the clamped-ion one.
        clamped_gpa: (6, 6) GPa, the clamped-ion tensor (positions strained with
            the cell, not relaxed).
        relaxed_gpa: (6, 6) GPa, the relaxed-ion tensor (positions relaxed with the
            strain), or None when not computed.
    """

    voigt_gpa: np.ndarray
    clamped_gpa: np.ndarray
    relaxed_gpa: np.ndarray | None = None

    @property
    def compliance(self) -> np.ndarray:
        """(6, 6) 1/GPa: the inverse of ``voigt_gpa``."""
        return np.linalg.inv(self.voigt_gpa)

    @property
    def bulk_voigt_gpa(self) -> float:
        """GPa: (C11 + C22 + C33 + 2 (C12 + C13 + C23)) / 9 (both triangles averaged)."""
        c = self.voigt_gpa
        return float(c[:3, :3].sum() / 9)

    @property
    def bulk_reuss_gpa(self) -> float:
        """GPa: 1 / (S11 + S22 + S33 + 2 (S12 + S13 + S23))."""
        return float(1.0 / self.compliance[:3, :3].sum())

    @property
    def bulk_hill_gpa(self) -> float:
        """GPa: the mean of the Voigt and Reuss bulk moduli."""
        return 0.5 * (self.bulk_voigt_gpa + self.bulk_reuss_gpa)

    @property
    def shear_voigt_gpa(self) -> float:
        """GPa: (C11 + C22 + C33 - (C12 + C13 + C23) + 3 (C44 + C55 + C66)) / 15."""
        c = self.voigt_gpa
        diagonal = np.trace(c[:3, :3])
        off = 0.5 * (c[:3, :3].sum() - diagonal)
        return float((diagonal - off + 3 * np.trace(c[3:, 3:])) / 15)

    @property
    def shear_reuss_gpa(self) -> float:
        """GPa: 15 / (4 (S11 + S22 + S33) - 4 (S12 + S13 + S23) + 3 (S44 + S55 + S66))."""
        s = self.compliance
        diagonal = np.trace(s[:3, :3])
        off = 0.5 * (s[:3, :3].sum() - diagonal)
        return float(15.0 / (4 * diagonal - 4 * off + 3 * np.trace(s[3:, 3:])))

    @property
    def shear_hill_gpa(self) -> float:
        """GPa: the mean of the Voigt and Reuss shear moduli."""
        return 0.5 * (self.shear_voigt_gpa + self.shear_reuss_gpa)

    @property
    def youngs_hill_gpa(self) -> float:
        """GPa: 9 K G / (3 K + G) of the Hill bulk and shear moduli."""
        k, g = self.bulk_hill_gpa, self.shear_hill_gpa
        return 9 * k * g / (3 * k + g)

    @property
    def poisson_hill(self) -> float:
        """Poisson's ratio (3 K - 2 G) / (2 (3 K + G)) of the Hill moduli."""
        k, g = self.bulk_hill_gpa, self.shear_hill_gpa
        return (3 * k - 2 * g) / (2 * (3 * k + g))


def _strain_matrix(e: Array) -> Array:
    """(3, 3) symmetric strain of Voigt ``e`` (6,), engineering shears."""
    xx, yy, zz, yz, xz, xy = (e[k] for k in range(6))
    return jnp.array(
        [[xx, xy / 2, xz / 2], [xy / 2, yy, yz / 2], [xz / 2, yz / 2, zz]], dtype=e.dtype
    )


def _jvps(config: M3GNetConfig, n_real: int):
    """f(params, batch, x (n_real, 3), dx (T, n_real, 3), de (T, 6)) ->
    ((dE/dx (n_real, 3) eV/Å, σ (3, 3) eV/Å³, V Å³), ((T, n_real, 3), (T, 6))): at
    positions x and strain 0, the energy's gradient in the positions, the stress and
    the volume (the jvp's primal: the residual forces and stress come free); and along
    each tangent (dx, de), the derivative of that gradient (eV/Å per unit) and of the
    stress at the strained structure (Voigt, eV/Å³ per unit)."""

    def jvps(params, batch, x, dx, de):
        energy_of = batch_energy_of(config, params, batch, remat=REMAT, smooth_angles=True)
        g = batch.graph
        padded, lattices = g.nodes["positions"], g.globals["lattice"]
        real = jraph.get_graph_padding_mask(g)
        volume = jnp.abs(jnp.linalg.det(lattices[0]))
        unit = jnp.eye(3, dtype=x.dtype)

        def first(r, e):
            """(∂E/∂r (n_real, 3), σ (3, 3)) at reference positions r and strain e (6,)."""
            eps = _strain_matrix(e)
            strained = real[:, None, None] * eps  # the structure's graph; padding stays

            def energy(positions, outer):
                # (I + eps)(I + outer): the strained structure, strained again
                return energy_of(positions, strained + outer + strained @ outer)

            out = forces_and_stress(
                energy, padded.at[:n_real].set(r), lattices @ (unit + strained), real
            )
            return -out.forces[:n_real], out.stress[0]

        e0 = jnp.zeros(6, x.dtype)
        (grad, stress), (d_grad, d_stress) = jax.vmap(
            lambda u, v: jax.jvp(first, (x, e0), (u, v)), out_axes=(None, 0)
        )(dx, de)
        d_voigt = jnp.stack([d_stress[:, i, j] for i, j in VOIGT], axis=1)
        return (grad, stress, volume), (d_grad, d_voigt)

    return jvps


def _derivatives(model: Model, atoms: Atoms, dtype, relaxed_ions: bool):
    """(C (6, 6) eV/Å³, Λ (3N, 6) eV/Å, H (3N, 3N) eV/Å² or None, V Å³, residual
    forces (N, 3) eV/Å, residual stress (3, 3) eV/Å³): the exact second derivatives,
    in chunks of tangents (the six strains, then the 3N position directions where H
    is needed, or where they come free in the same call), and the first ones."""
    n = len(atoms)

    def basis(start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit tangents ``[start, stop)`` of (e (6,), x (N, 3)), strains first, padded:
        (size, N, 3) and (size, 6)."""
        rows = np.zeros((size, 3 * n + 6), dtype)
        k = np.arange(stop - start)
        rows[k, start + k] = 1.0
        return rows[:, 6:].reshape(size, n, 3), rows[:, :6]

    (grad, stress, volume), (d_grad, d_stress) = chunked(
        model,
        atoms,
        _jvps,
        3 * n + 6,
        basis,
        cap=DEFAULT_TANGENTS + 6,
        needed=None if relaxed_ions else 6,
        dtype=dtype,
    )
    d_grad = d_grad.reshape(len(d_grad), 3 * n)
    c = d_stress[:6].T  # C[a, b] = dσ_a / de_b
    mixed = d_grad[:6].T  # Λ[i, b] = ∂²E / ∂r_i ∂e_b
    hess = d_grad[6:] if len(d_grad) > 6 else None
    return c, mixed, hess, float(volume), -grad, stress


def _relaxation(hess: np.ndarray, mixed: np.ndarray, dtype) -> np.ndarray:
    """Λᵀ H⁺ Λ (6, 6) eV: ``hess`` (3N, 3N) eV/Å², ``mixed`` Λ (3N, 6) eV/Å;
    the three uniform translations projected out before the pseudo-inverse."""
    n3 = hess.shape[0]
    translations = np.tile(np.eye(3), (n3 // 3, 1)) / np.sqrt(n3 // 3)  # (3N, 3) orthonormal
    # an orthonormal basis of the complement of the translations
    q = np.linalg.svd(np.eye(n3) - translations @ translations.T)[0][:, : n3 - 3]
    if q.shape[1] == 0:
        return np.zeros((6, 6))
    reduced = q.T @ hess @ q
    lam = q.T @ mixed
    return lam.T @ np.linalg.pinv(reduced, rcond=RCOND[np.dtype(dtype).name]) @ lam


def elastic_tensor(
    model: Model, atoms: Atoms, *, relaxed_ions: bool = True, dtype=None
) -> ElasticTensor:
    """The exact elastic tensor of a periodic structure, by automatic differentiation.

    The clamped-ion tensor is the exact derivative of the stress (ASE's sign, as the
    calculator returns it) at the strained structure in the strain, cell and
    positions deformed as ``x @ (I + ε)``: finite differences of the calculator's
    stress converge to it. The relaxed-ion tensor lets the positions relax with the
    strain: ``C_clamped - (1/V) Λᵀ H⁺ Λ``, with Λ = ∂²E/∂r∂e (3N, 6) and H the
    position Hessian (3N, 3N), both exact, the uniform translations projected out.
    The neighbour topology is held fixed. Warns (``NotAtMinimumWarning``) where the
    structure has residual forces or stress: the derivatives are then exact at that
    geometry but are not its elastic constants. The residuals are the gradient and
    stress that the derivatives' own call computes (its primal): no second pass.

    Args:
        model: a [`Model`][jmattersim.Model].
        atoms: the structure (ASE ``Atoms``), periodic in all three directions;
            ideally relaxed (positions and cell).
        relaxed_ions: also compute the relaxed-ion tensor (needs the (3N, 3N)
            Hessian: 3N more tangents, in the same compiled call for small cells,
            in chunks bounded in memory as for [`hessian`][jmattersim.derivatives.hessian]),
            and report it as ``voigt_gpa``.
        dtype (numpy dtype or None): float64 when ``jax_enable_x64`` is on, float32
            otherwise (default).

    Returns:
        An [`ElasticTensor`][jmattersim.derivatives.ElasticTensor]: (6, 6) tensors in GPa,
        Voigt order xx, yy, zz, yz, xz, xy with engineering shear strains.

    Raises:
        ValueError: the structure is not periodic in all three directions.
        InvalidStructureError: bad input, naming the structure and the problem.
    """
    label = structure_label(None, atoms.numbers)
    if not np.asarray(atoms.pbc, dtype=bool).all():
        raise ValueError(
            f"{label}: elastic constants need a structure periodic in all three "
            f"directions, got pbc={tuple(bool(p) for p in atoms.pbc)}"
        )
    dtype = np.dtype(dtype or default_float())
    c, mixed, hess, volume, forces, stress = _derivatives(model, atoms, dtype, relaxed_ions)
    warn_residual(atoms, forces, stress * EV_PER_A3_TO_GPA, what="elastic constants")
    clamped = c * EV_PER_A3_TO_GPA
    relaxed = None
    if relaxed_ions:
        correction = _relaxation(hess.astype(np.float64), mixed.astype(np.float64), dtype)
        relaxed = (clamped - correction / volume * EV_PER_A3_TO_GPA).astype(dtype)
    return ElasticTensor(
        voigt_gpa=relaxed if relaxed is not None else clamped,
        clamped_gpa=clamped,
        relaxed_gpa=relaxed,
    )
