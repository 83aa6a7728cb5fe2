"""A pure relaxation of one structure, differentiable by the implicit function
theorem: :func:`relax_fn`.

The structure is moved by ``z = (w, c)``: the displacements of atoms 1..N-1
(atom 0 moves by minus their sum, so no translation is a variable) and the six
components of a symmetric strain (so no rotation is), scaled by the atom count as
ASE's cell filters scale the cell::

    positions = (x0 + u(w)) (1 + e(c)),   lattice = L0 (1 + e(c)),   e = sym(c) / N

and ASE's BFGS (forces only, no line search), compiled, minimises the enthalpy
``H(z) = E + P V`` until the largest residual is at most ``fmax``, the topology
rebuilt within the capacity at every evaluation. At the minimum ``dH/dz = 0``, so
by the implicit function theorem ``dz*/dθ = -(d²H/dz²)⁻¹ d²H/dz dθ`` for θ the
parameters, the atom types and the pressure. A ``custom_vjp`` solves
``(d²H/dz²) λ = z̄`` with lineax on exact Hessian-vector products (Cholesky of the
Hessian for small cells, conjugate gradients for large ones), never
differentiating through the optimiser's steps, and returns NaN where the Hessian
is not positive definite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.units import GPa
from jax.flatten_util import ravel_pytree

from .capacity import Capacity
from .config import M3GNetConfig
from .energy import unmasked_energy_fn, with_overflow_nan

Array = jax.Array


class Relaxed(NamedTuple):
    """A relaxed structure (:func:`relax_fn`).

    Attributes:
        positions: (N, 3) Å, Cartesian; atom 0's start fixes the translation and the
            starting cell's orientation the rotation.
        lattice: (3, 3) Å, rows are lattice vectors.
        energy: () eV.
        enthalpy: () eV, ``energy + P V``.
        max_force: () eV/Å, the largest residual: atoms' forces and the cell's
            generalised force (``|(virial + P V) / N|``, as ASE's cell filters weigh it).
        steps: () int, optimiser steps taken.
        converged: () bool, ``max_force <= fmax`` at a finite energy.
        overflow: () bool, the structure outgrew the capacity (then every number is
            NaN).
    """

    positions: Array
    lattice: Array
    energy: Array
    enthalpy: Array
    max_force: Array
    steps: Array
    converged: Array
    overflow: Array


def relax_fn(
    config: M3GNetConfig,
    capacity: Capacity,
    *,
    cell: bool = True,
    fmax: float = 1e-3,
    max_steps: int = 500,
    soft_normalize: bool = True,
    tolerance: float | None = None,
    dense_hessian_atoms: int = 16,
) -> Callable[..., Relaxed]:
    """A pure relaxation of one periodic structure, the counterpart of
    [`energy_fn`][jmattersim.energy_fn]: ``jax.jit``, ``jax.grad`` and ``jax.vmap``
    apply.

    Gradients of anything computed from the result flow to ``params``,
    ``atom_types`` and ``pressure_gpa`` by the implicit function theorem (one
    linear solve with the Hessian of the enthalpy in positions and strain, on
    exact Hessian-vector products). Gradients in the
    starting ``positions`` and ``lattice`` are zero: the minimum does not depend on
    where the search started.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`Capacity`][jmattersim.Capacity] holding the structure as it
            relaxes (e.g. [`capacity_for`][jmattersim.capacity_for] with headroom).
        cell: relax the cell too (else positions only, the pressure unused).
        fmax: eV/Å, stop (``converged``) once the largest residual is at most this,
            as ASE's optimisers do. A gradient is as accurate as the minimum: the
            error of ``dz*/dθ`` scales with ``fmax`` over the Hessian's smallest
            eigenvalue, so tighten it (1e-6 in float64, say) for derivatives.
        max_steps: optimiser steps at most.
        soft_normalize: as [`energy_fn`][jmattersim.energy_fn]'s.
        tolerance: the gradient's conjugate-gradient tolerance (relative and
            absolute); default 1e-10 in float64, 1e-4 in float32.
        dense_hessian_atoms: up to this many atoms the gradient's solve builds the
            Hessian at once (3N + 3 Hessian-vector products, batched) and factorises
            it by Cholesky, which fails at every saddle; above, conjugate gradients.

    Returns:
        ``relaxed(params, atom_types, positions, lattice, pressure_gpa=0.0) ->``
        :class:`Relaxed`, with atom_types (N, max_z + 1) one-hot or any
        distribution, positions (N, 3) Å, lattice (3, 3) Å (rows), pressure_gpa ()
        GPa, the external hydrostatic pressure.

    A gradient is only meaningful where ``converged``. It is NaN where the
    Hessian is not positive definite (a saddle, a flat direction): always up to
    ``dense_hessian_atoms``; above, where conjugate gradients fail or meet it (see
    the guide).
    """
    import lineax as lx  # imported here: equinox takes a while to import

    energy_and_overflow = unmasked_energy_fn(config, capacity, soft_normalize)

    def structure(z, x0, l0):
        w, c = z
        u = jnp.concatenate([-w.sum(0, keepdims=True), w])
        deform = jnp.eye(3, dtype=x0.dtype) + _symmetric(c) / x0.shape[0]
        return (x0 + u) @ deform, l0 @ deform

    def enthalpy(z, args):
        params, types, p, x0, l0 = args
        r, lat = structure(z, x0, l0)
        e = with_overflow_nan(*energy_and_overflow(params, types, r, lat))
        return e + p * jnp.abs(jnp.linalg.det(lat))

    def gradient_and_residual(z, args):
        """(dH/dz, the largest residual (eV/Å), energy, overflow) in one reverse pass."""
        params, types, p, x0, l0 = args
        r, lat = structure(z, x0, l0)
        (e, overflow), (de_dr, de_dlat) = _energy_and_gradients(
            energy_and_overflow, params, types, r, lat
        )
        g, residual = _gradient_and_residual(structure, z, x0, l0, p, de_dr, de_dlat)
        return g, residual, e, overflow

    def minimise(args):
        args = jax.lax.stop_gradient(args)
        x0 = args[3]
        z0 = (jnp.zeros((x0.shape[0] - 1, 3), x0.dtype), jnp.zeros(6 if cell else 0, x0.dtype))
        flat0, unravel = ravel_pytree(z0)

        def evaluate(flat):
            g, residual, e, overflow = gradient_and_residual(unravel(flat), args)
            stop = (residual <= fmax) | ~jnp.isfinite(e) | overflow
            return ravel_pytree(g)[0], stop

        z, steps = _ase_bfgs(evaluate, flat0, max_steps)
        return unravel(z), steps

    @jax.custom_vjp
    def minimum(args):
        return minimise(args)

    def minimum_fwd(args):
        z, steps = minimise(args)
        return (z, steps), (z, args)

    def minimum_bwd(saved, cotangents):
        z, args = saved
        dense = 3 * (dense_hessian_atoms - 1) + (6 if cell else 0)
        return (_implicit_cotangent(enthalpy, z, args, cotangents[0], tolerance, lx, dense),)

    minimum.defvjp(minimum_fwd, minimum_bwd)

    def relaxed(
        params: Any, atom_types: Array, positions: Array, lattice: Array, pressure_gpa=0.0
    ) -> Relaxed:
        x0 = jax.lax.stop_gradient(jnp.asarray(positions))
        l0 = jax.lax.stop_gradient(jnp.asarray(lattice, x0.dtype))
        pressure = jnp.asarray(pressure_gpa, x0.dtype) * GPa if cell else jnp.zeros((), x0.dtype)
        args = (params, atom_types, pressure, x0, l0)
        z, steps = minimum(args)
        r, lat = structure(z, x0, l0)
        _, residual, e, overflow = gradient_and_residual(z, args)  # e differentiable
        h = e + pressure * jnp.abs(jnp.linalg.det(lat))
        nan = jnp.where(overflow, jnp.nan, 0.0)
        return Relaxed(
            positions=r + nan,
            lattice=lat + nan,
            energy=e + nan,
            enthalpy=h + nan,
            max_force=residual + nan,
            steps=steps,
            converged=(residual <= fmax) & jnp.isfinite(e) & ~overflow,
            overflow=overflow,
        )

    return relaxed


def _tolerance(dtype) -> float:
    """The default tolerance of the gradient's conjugate-gradient solve: float32
    cannot resolve it below about 1e-4."""
    return 1e-10 if dtype == jnp.float64 else 1e-4


def _implicit_cotangent(enthalpy, z, args, z_bar, tolerance, lx, dense_size: int = 0):
    """The implicit function theorem's cotangent of ``args`` given that of the
    minimum ``z``: ``-(d²H/dz dargs)ᵀ λ`` with ``(d²H/dz²) λ = z̄``, solved with
    lineax on Hessian-vector products: by Cholesky of the Hessian built at once
    where ``z`` has at most ``dense_size`` components, else by conjugate gradients.
    NaN where the solve fails or meets a Hessian that is not positive definite
    (Cholesky: always; conjugate gradients: where ``λ·z̄ <= 0``)."""
    flat_bar, unravel = ravel_pytree(z_bar)
    tol = tolerance or _tolerance(flat_bar.dtype)

    def gradient(z_, args_):
        return jax.grad(enthalpy)(z_, args_)

    def hvp(v):
        return ravel_pytree(jax.jvp(lambda z_: gradient(z_, args), (z,), (unravel(v),))[1])[0]

    operator = lx.FunctionLinearOperator(
        hvp,
        jax.ShapeDtypeStruct(flat_bar.shape, flat_bar.dtype),
        tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    if flat_bar.shape[0] <= dense_size:  # n Hessian-vector products at once; Cholesky
        # fails (NaN) on any Hessian that is not positive definite
        operator, solver = lx.materialise(operator), lx.Cholesky()
    else:
        solver = lx.CG(rtol=tol, atol=tol)
    solution = lx.linear_solve(operator, flat_bar, solver, throw=False)
    lam = solution.value
    zero = ~jnp.any(flat_bar != 0)
    fine = (solution.result == lx.RESULTS.successful) & ((lam @ flat_bar > 0) | zero)
    lam = jnp.where(fine, lam, jnp.nan)
    _, pullback = jax.vjp(lambda args_: gradient(z, args_), args)
    (args_bar,) = pullback(jax.tree.map(jnp.negative, unravel(lam)))
    return args_bar


def _symmetric(c: Array) -> Array:
    """(3, 3) symmetric strain from its six components (xx, yy, zz, yz, xz, xy);
    zero without them."""
    if c.shape[0] == 0:
        return jnp.zeros((3, 3), c.dtype)
    xx, yy, zz, yz, xz, xy = c
    return jnp.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _energy_and_gradients(energy_and_overflow, params, types, r, lattice):
    """((energy, overflow), (dE/dr, dE/dlattice)) in one reverse pass; the energy
    differentiable as usual, its gradients for the residual only."""

    def energy(r_, lattice_):
        return energy_and_overflow(params, types, r_, lattice_)

    (e, overflow), pullback = jax.vjp(energy, r, lattice)
    grads = pullback((jnp.ones_like(e), np.zeros((), jax.dtypes.float0)))
    return (e, overflow), jax.lax.stop_gradient(grads)


def _gradient_and_residual(structure, z, x0, l0, pressure, de_dr, de_dlat):
    """``(dH/dz, the largest residual)`` from the energy's gradients at ``z``: the
    largest force on an atom (eV/Å) and the cell's generalised force (eV; the strain
    is ``sym(c) / N``, so ``dH/dc`` is the virial plus ``P V``, over N, as ASE's cell
    filters weigh it)."""
    z = jax.lax.stop_gradient(z)
    pressure = jax.lax.stop_gradient(pressure)
    _, pullback = jax.vjp(lambda z_: structure(z_, x0, l0), z)
    ((gw, gc),) = pullback((de_dr, de_dlat))
    volume = lambda z_: jnp.abs(jnp.linalg.det(structure(z_, x0, l0)[1]))  # noqa: E731
    gc = gc + pressure * jax.grad(volume)(z)[1]
    forces = jnp.linalg.norm(de_dr, axis=1).max()
    return (gw, gc), jnp.maximum(forces, jnp.abs(gc).max(initial=0.0))


def _ase_bfgs(evaluate, z0: Array, max_steps: int, maxstep: float = 0.2, alpha: float = 70.0):
    """ASE's ``BFGS`` (no line search; forces only, so float32 noise in the energy
    cannot stall it) in a ``lax.while_loop``: the Hessian starts at ``alpha`` (eV/Å²)
    times the identity, each step is ``V (Vᵀ f / |ω|)`` over its eigenpairs, scaled
    so that no row of three moves more than ``maxstep``, and the update is ASE's
    (skipped after a step under 1e-7, or where a curvature is exactly zero).

    Args:
        evaluate: ``flat z -> (dH/dz, stop)``.
        z0: (n,) the start.

    Returns:
        ``(z, steps)``: where it stopped and the steps taken.
    """
    n = z0.shape[0]
    g0, stop0 = evaluate(z0)

    def going(carry):
        *_, steps, stop = carry
        return ~stop & (steps < max_steps)

    def step(carry):
        z, g, z_prev, g_prev, hessian, steps, _ = carry
        dz, dg = z - z_prev, g - g_prev
        a, hdz = dz @ dg, hessian @ dz
        b = dz @ hdz
        update = (jnp.abs(dz).max(initial=0.0) >= 1e-7) & (a != 0) & (b != 0)
        hessian = jnp.where(
            update,
            hessian
            + jnp.outer(dg, dg) / jnp.where(update, a, 1)
            - jnp.outer(hdz, hdz) / jnp.where(update, b, 1),
            hessian,
        )
        omega, v = jnp.linalg.eigh(hessian)
        delta = v @ ((v.T @ -g) / jnp.abs(omega))
        longest = jnp.linalg.norm(_rows_of_three(delta), axis=1).max(initial=0.0)
        delta = delta * jnp.minimum(1.0, maxstep / jnp.maximum(longest, 1e-30))
        g_new, stop = evaluate(z + delta)
        return z + delta, g_new, z, g, hessian, steps + 1, stop

    hessian0 = alpha * jnp.eye(n, dtype=z0.dtype)
    carry = (z0, g0, z0, g0, hessian0, jnp.zeros((), jnp.int32), stop0)
    z, *_, steps, _ = jax.lax.while_loop(going, step, carry)
    return z, steps


def _rows_of_three(flat: Array) -> Array:
    """(ceil(n / 3), 3): ``flat`` zero-padded, the rows ASE's ``maxstep`` bounds."""
    pad = (-flat.shape[0]) % 3
    return jnp.concatenate([flat, jnp.zeros(pad, flat.dtype)]).reshape(-1, 3)


def bulk_modulus_gpa(
    relaxed: Callable[..., Relaxed],
    params: Any,
    atom_types: Array,
    positions: Array,
    lattice: Array,
    pressure_gpa=0.0,
) -> Array:
    """GPa: the bulk modulus ``-V dP/dV`` of the relaxed structure, from the implicit
    derivative of its volume in the pressure (the relaxed-ion Reuss bulk modulus,
    atoms and cell relaxed).

    Args:
        relaxed: a function from [`relax_fn`][jmattersim.relax_fn] (``cell=True``).
        params, atom_types, positions, lattice, pressure_gpa: its arguments.

    Returns:
        () GPa; differentiable again (it is a function of the same inputs).
    """

    def volume(p):
        out = relaxed(params, atom_types, positions, lattice, p)
        return jnp.abs(jnp.linalg.det(out.lattice))

    p = jnp.asarray(pressure_gpa, jnp.result_type(float))
    v, dv_dp = jax.value_and_grad(volume)(p)
    return -v / dv_dp
