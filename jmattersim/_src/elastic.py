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

from .arrays import Array, default_float
from .checkpoint import Model
from .checks import structure_label
from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, batch_energy_of, forces_and_stress
from .graph import checked_graph
from .hessian import DEFAULT_TANGENTS, REMAT, compiled_with_memory, fitting_call, memory_budget
from .minimum import warn_if_not_at_minimum
from .padding import counts_of, pad, tight_budget
from .runtime import release_memory

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
    """f(params, batch, x (n_real, 3), dx (T, n_real, 3), de (T, 6)) -> (T, n_real, 3),
    (T, 6), V: along each tangent (dx, de), the derivative of the energy's gradient in
    the positions (eV/Å per unit) and of the stress at the strained structure (eV/Å³
    per unit), at positions x and strain 0; and the volume Å³."""

    def jvps(params, batch, x, dx, de):
        energy_of = batch_energy_of(config, params, batch, remat=REMAT, smooth_angles=True)
        g = batch.graph
        padded, lattices = g.nodes["positions"], g.globals["lattice"]
        real = jraph.get_graph_padding_mask(g)
        volume = jnp.abs(jnp.linalg.det(lattices[0]))
        unit = jnp.eye(3, dtype=x.dtype)

        def first(r, e):
            """(∂E/∂r (n_real, 3), σ (6,)) at reference positions r and strain e (6,)."""
            eps = _strain_matrix(e)
            strained = real[:, None, None] * eps  # the structure's graph; padding stays

            def energy(positions, outer):
                # (I + eps)(I + outer): the strained structure, strained again
                return energy_of(positions, strained + outer + strained @ outer)

            out = forces_and_stress(
                energy, padded.at[:n_real].set(r), lattices @ (unit + strained), real
            )
            return -out.forces[:n_real], jnp.stack([out.stress[0, i, j] for i, j in VOIGT])

        e0 = jnp.zeros(6, x.dtype)
        d_grad, d_stress = jax.vmap(lambda u, v: jax.jvp(first, (x, e0), (u, v))[1])(dx, de)
        return d_grad, d_stress, volume

    return jvps


def _compiled(config: M3GNetConfig, args: tuple, rows: int):
    """The compiled call for ``rows`` tangents and the bytes it needs (XLA's memory
    analysis; 0 where the backend has none), compiled ahead of time, once."""
    x = args[2]
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    abstract = (
        *abstract,
        jax.ShapeDtypeStruct((rows, *x.shape), x.dtype),
        jax.ShapeDtypeStruct((rows, 6), x.dtype),
    )
    return compiled_with_memory(config, _jvps, abstract)


def _first_guess(config: M3GNetConfig, graph, needed: int, dtype) -> int:
    """Tangents per call from the graph's size (the Hessian's estimate, about 5 stored
    values per edge or triplet, unit and tangent): at most ``needed`` and
    DEFAULT_TANGENTS + 6."""
    per_row = 5 * (graph.n_edge + graph.n_triplet) * config.units * np.dtype(dtype).itemsize
    cap = min(needed, DEFAULT_TANGENTS + 6)
    return int(np.clip(memory_budget() // max(per_row, 1), 1, cap))


def _derivatives(model: Model, graph, dtype, relaxed_ions: bool):
    """(C (6, 6) eV/Å³, Λ (3N, 6) eV/Å, H (3N, 3N) eV/Å² or None, V Å³): the exact
    second derivatives, in chunks of tangents (the six strains, then the 3N position
    directions where H is needed, or where they come free in the same call)."""
    config = model.config
    n = graph.n_node
    batch = pad([graph], tight_budget(counts_of(graph)), config, dtype)
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    args = (model.astype(dtype).params, batch, jnp.asarray(graph.positions, dtype))
    total = 3 * n + 6
    rows = _first_guess(config, graph, total, dtype)
    if not relaxed_ions and rows < total:
        total = 6  # the Hessian is not needed and would take more calls
        rows = min(rows, total)
    rows, fn = fitting_call(lambda size: _compiled(config, args, size), rows)
    basis = np.eye(total, 3 * n + 6, dtype=dtype)  # row k: unit tangent k (strains first)
    d_grad = np.empty((total, 3 * n), dtype)
    d_stress = np.empty((total, 6), dtype)
    for start in range(0, total, rows):
        part = basis[start : start + rows]
        part = np.pad(part, ((0, rows - len(part)), (0, 0)))
        dx = jnp.asarray(part[:, 6:].reshape(rows, n, 3))
        grad, stress, volume = fn(*args, dx, jnp.asarray(part[:, :6]))
        release_memory()
        stop = min(start + rows, total)
        d_grad[start:stop] = np.asarray(grad).reshape(rows, 3 * n)[: stop - start]
        d_stress[start:stop] = np.asarray(stress)[: stop - start]
    c = d_stress[:6].T  # C[a, b] = dσ_a / de_b
    mixed = d_grad[:6].T  # Λ[i, b] = ∂²E / ∂r_i ∂e_b
    hess = d_grad[6:] if total > 6 else None
    return c, mixed, hess, float(volume)


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
    geometry but are not its elastic constants.

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
    warn_if_not_at_minimum(model, atoms, what="elastic constants", check_stress=True, dtype=dtype)
    graph = checked_graph(atoms, model.config)
    c, mixed, hess, volume = _derivatives(model, graph, dtype, relaxed_ions)
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
