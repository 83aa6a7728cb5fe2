"""Checked variants for use inside ``jit``, beside the energy functions.

Inside ``jit`` nothing can raise. There the checks of :mod:`jmattersim._src.checks`
are ``jax.experimental.checkify`` checks: :func:`checked_energy_fn` is
:func:`jmattersim.energy_fn` with checks on its inputs, on neighbour-capacity
overflow (where ``energy_fn`` silently returns NaN) and on a finite result;
:func:`checked` functionalises the checks of any function (also one transformed
by ``jax.grad``) and raises the error after the jitted call::

    energy = checked_energy_fn(config, edges=..., triplets=..., neighbors=...)
    forces = checked(jax.grad(energy, argnums=2))   # jitted; raises on a failed check
    f = forces(params, atom_types, positions, lattice)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from .capacity import Capacity
from .checks import CapacityOverflowError, InvalidStructureError
from .config import M3GNetConfig
from .energy import unmasked_energy_fn, with_overflow_nan


def _in_jit_checks(atom_types: jnp.ndarray, positions: jnp.ndarray, lattice: jnp.ndarray) -> None:
    """checkify checks of one structure's inputs (see :func:`jmattersim.checks.check_arrays`)."""
    bad_pos = ~jnp.all(jnp.isfinite(positions), axis=-1)
    checkify.check(
        ~jnp.any(bad_pos),
        "invalid input: positions of atom {i} are NaN or infinite",
        i=jnp.argmax(bad_pos),
    )
    checkify.check(
        jnp.all(jnp.isfinite(lattice)), "invalid input: the lattice contains NaN or infinite values"
    )
    volume = jnp.abs(jnp.linalg.det(lattice))
    checkify.check(
        volume > 1e-12 * jnp.prod(jnp.linalg.norm(lattice, axis=-1)),
        "invalid input: the lattice is singular (volume {v} Å^3)",
        v=volume,
    )
    types_bad = ~jnp.all(jnp.isfinite(atom_types), axis=-1) | jnp.any(atom_types < 0, axis=-1)
    checkify.check(
        ~jnp.any(types_bad),
        "invalid input: atom_types row of atom {i} is negative, NaN or infinite",
        i=jnp.argmax(types_bad),
    )
    empty = jnp.sum(atom_types, axis=-1) <= 0
    checkify.check(
        ~jnp.any(empty),
        "invalid input: atom_types row of atom {i} sums to zero",
        i=jnp.argmax(empty),
    )


def checked_energy_fn(
    config: M3GNetConfig,
    capacity: Any = None,
    *,
    soft_normalize: bool = True,
    **capacities: Any,
) -> Callable:
    """[`energy_fn`][jmattersim.energy_fn] with ``checkify`` checks inside.

    Checks finite inputs, a non-singular lattice, valid atom_types rows, no
    neighbour-capacity overflow (which ``energy_fn`` turns into NaN) and a
    finite energy. Transform the result freely (``grad``, ``vmap``), then run it
    through [`checked`][jmattersim.checks.checked] (or ``checkify.checkify``): an
    unfunctionalised check cannot run under ``jit``.

    Args:
        config: the model's [`M3GNetConfig`][jmattersim.M3GNetConfig].
        capacity: a [`Capacity`][jmattersim.Capacity].
        soft_normalize: as for ``energy_fn``.
        **capacities: the fields of a ``Capacity`` instead of
            ``capacity``.

    Returns:
        ``energy(params, atom_types, positions, lattice) -> ()`` eV, as
        ``energy_fn``'s: atom_types (N, max_z + 1), positions (N, 3) Å,
        lattice (3, 3) Å rows.
    """
    capacity = capacity or Capacity(**capacities)
    energy_and_overflow = unmasked_energy_fn(config, capacity, soft_normalize)

    def energy(
        params: Any, atom_types: jnp.ndarray, positions: jnp.ndarray, lattice: jnp.ndarray
    ) -> jnp.ndarray:
        _in_jit_checks(atom_types, positions, lattice)
        e, overflow = energy_and_overflow(params, atom_types, positions, lattice)
        checkify.check(
            ~overflow,
            f"neighbour capacity overflow: the structure does not fit "
            f"{capacity} (size it with jmattersim.capacity_for)",
        )
        e = with_overflow_nan(e, overflow)  # energy_fn's value
        checkify.check(jnp.isfinite(e), "the energy is not finite")
        return e

    return energy


def checked(fn: Callable, jit: bool = True) -> Callable:
    """``fn`` with its ``checkify`` checks functionalised: raises after the call.

    Example: ``forces = checked(jax.grad(checked_energy_fn(config, capacity),
    argnums=2))``.

    Args:
        fn: a function containing ``checkify`` checks, e.g. from
            [`checked_energy_fn`][jmattersim.checks.checked_energy_fn], possibly
            transformed (``jax.grad``, ``jax.vmap``).
        jit: compile it with ``jax.jit``.

    Returns:
        A function with ``fn``'s arguments and value that raises
        [`CapacityOverflowError`][jmattersim.CapacityOverflowError] for an
        overflow and [`InvalidStructureError`][jmattersim.InvalidStructureError]
        for any other failed check.
    """
    run = checkify.checkify(fn, errors=checkify.user_checks)
    if jit:
        run = jax.jit(run)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        err, out = run(*args, **kwargs)
        message = err.get()
        if message is not None:
            first = message.splitlines()[0].removesuffix(" (`check` failed)")
            cls = CapacityOverflowError if "capacity overflow" in first else InvalidStructureError
            raise cls("", first)
        return out

    return wrapper
