"""A pure relaxation of one structure, differentiable by the implicit function
theorem: :func:`relax_fn`.

The structure is moved by ``z = (w, c)``: the displacements of atoms 1..N-1
(atom 0 moves by minus their sum, so no translation is a variable) and the six
components of a symmetric strain (so no rotation is), scaled by the atom count as
ASE's cell filters scale the cell::

    positions = (x0 + u(w)) (1 + e(c)),   lattice = L0 (1 + e(c)),   e = sym(c) / N

and optimistix's BFGS minimises the enthalpy ``H(z) = E + P V``, the topology
rebuilt within the capacity at every evaluation. At the minimum ``dH/dz = 0``, so
by the implicit function theorem ``dz*/dθ = -(d²H/dz²)⁻¹ d²H/dz dθ`` for θ the
parameters, the atom types and the pressure. A ``custom_vjp`` solves
``(d²H/dz²) λ = z̄`` by lineax's conjugate gradients on exact Hessian-vector
products, never differentiating through the optimiser's steps, and returns NaN
where that solve fails or finds the Hessian not positive definite (``λ·z̄ <= 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
) -> Callable[..., Relaxed]:
    """A pure relaxation of one periodic structure, the counterpart of
    [`energy_fn`][jmattersim.energy_fn]: ``jax.jit``, ``jax.grad`` and ``jax.vmap``
    apply.

    Gradients of anything computed from the result flow to ``params``,
    ``atom_types`` and ``pressure_gpa`` by the implicit function theorem (one
    linear solve with the Hessian of the enthalpy in positions and strain, by
    conjugate gradients on exact Hessian-vector products). Gradients in the
    starting ``positions`` and ``lattice`` are zero: the minimum does not depend on
    where the search started.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`Capacity`][jmattersim.Capacity] holding the structure as it
            relaxes (e.g. [`capacity_for`][jmattersim.capacity_for] with headroom).
        cell: relax the cell too (else positions only, the pressure unused).
        fmax: eV/Å, ``converged`` when the largest residual is at most this.
        max_steps: optimiser steps at most.
        soft_normalize: as [`energy_fn`][jmattersim.energy_fn]'s.
        tolerance: the optimiser's stopping tolerance (relative and absolute, on the
            steps and the enthalpy's changes) and the gradient's conjugate-gradient
            tolerance; default 1e-10 in float64, 1e-6 (optimiser) and 1e-4 (solve)
            in float32.

    Returns:
        ``relaxed(params, atom_types, positions, lattice, pressure_gpa=0.0) ->``
        :class:`Relaxed`, with atom_types (N, max_z + 1) one-hot or any
        distribution, positions (N, 3) Å, lattice (3, 3) Å (rows), pressure_gpa ()
        GPa, the external hydrostatic pressure.

    A gradient is only meaningful where ``converged``. It is NaN where the linear
    solve fails or meets a Hessian that is not positive definite (a saddle, a flat
    direction); a saddle the solve does not meet goes undetected (see the guide).
    """
    import lineax as lx  # imported here: equinox takes a while to import
    import optimistix as optx

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
        return e + p * jnp.abs(jnp.linalg.det(lat))  # NaN past the capacity: a line
        # search steps back from it

    def minimise(args):
        x0 = args[3]
        tol = tolerance or _tolerance(x0.dtype)
        z0 = (jnp.zeros((x0.shape[0] - 1, 3), x0.dtype), jnp.zeros(6 if cell else 0, x0.dtype))
        solution = optx.minimise(
            enthalpy,
            optx.BFGS(rtol=tol, atol=tol),
            z0,
            jax.lax.stop_gradient(args),
            max_steps=max_steps,
            throw=False,
        )
        return solution.value, solution.stats["num_steps"]

    @jax.custom_vjp
    def minimum(args):
        return minimise(args)

    def minimum_fwd(args):
        z, steps = minimise(args)
        return (z, steps), (z, args)

    def minimum_bwd(saved, cotangents):
        z, args = saved
        return (_implicit_cotangent(enthalpy, z, args, cotangents[0], tolerance, lx),)

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
        e, overflow = energy_and_overflow(params, atom_types, r, lat)
        h = e + pressure * jnp.abs(jnp.linalg.det(lat))
        residual = _residual(
            energy_and_overflow, enthalpy, jax.lax.stop_gradient((z, r, lat, args))
        )
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
    return 1e-10 if dtype == jnp.float64 else 1e-6


def _implicit_cotangent(enthalpy, z, args, z_bar, tolerance, lx):
    """The implicit function theorem's cotangent of ``args`` given that of the
    minimum ``z``: ``-(d²H/dz dargs)ᵀ λ`` with ``(d²H/dz²) λ = z̄``, solved by lineax's
    conjugate gradients on Hessian-vector products. NaN where the solve fails or
    meets a Hessian that is not positive definite (``λ·z̄ <= 0``)."""
    flat_bar, unravel = ravel_pytree(z_bar)
    tol = tolerance or (1e-10 if flat_bar.dtype == jnp.float64 else 1e-4)

    def gradient(z_, args_):
        return jax.grad(enthalpy)(z_, args_)

    def hvp(v):
        return ravel_pytree(jax.jvp(lambda z_: gradient(z_, args), (z,), (unravel(v),))[1])[0]

    operator = lx.FunctionLinearOperator(
        hvp,
        jax.ShapeDtypeStruct(flat_bar.shape, flat_bar.dtype),
        tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    solution = lx.linear_solve(operator, flat_bar, lx.CG(rtol=tol, atol=tol), throw=False)
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


def _residual(energy_and_overflow, enthalpy, state) -> Array:
    """The largest residual: the largest force on an atom (eV/Å) and the cell's
    generalised force (eV; the strain is ``sym(c) / N``, so ``dH/dc`` is the
    virial plus ``P V``, over N, as ASE's cell filters weigh it)."""
    z, r, lattice, args = state
    params, types = args[:2]
    forces = -jax.grad(lambda x: energy_and_overflow(params, types, x, lattice)[0])(r)
    _, gc = jax.grad(enthalpy)(z, args)
    return jnp.maximum(jnp.linalg.norm(forces, axis=1).max(), jnp.abs(gc).max(initial=0.0))


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
