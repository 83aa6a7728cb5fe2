"""relax_fn: a pure relaxation (ASE's BFGS, compiled, on positions and strain) against
ASE's BFGS with FrechetCellFilter on our calculator, and its implicit gradients
against central finite differences of the relaxation itself (float64, the small
model).

The structure: lonsdaleite (hexagonal diamond) Si, four atoms, from a = 3.84 Å,
c = 1.63 a, rattled (seed 1). Its internal coordinates are free, and the small
model's minimum from there is a triclinic cell (angles 98.6°, 81.4°, 127.5°), 7 %
smaller in volume: a strict minimum (the Cholesky factorisation of its Hessian
in the gradient succeeds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from ase.units import GPa

import jmattersim
from jmattersim import relax_fn


def _silicon():
    atoms = bulk("SiSi", "wurtzite", a=3.84, c=3.84 * 1.63)
    atoms.rattle(0.02, seed=1)
    return atoms


FMAX = 1e-8  # eV/Å: the finite differences need the minimum to about 1e-10


_COMPILED: dict = {}


def _compiled(model):
    """``(volume(params, t, p, s, positions, lattice) -> (volume per atom, Relaxed),
    its gradient in all but params), volume`` with the first jitted once for the
    file's tests: t mixes germanium into atom 1's type, p is the pressure (GPa), s
    moves the parameters along a seeded random direction (1 % of each leaf's mean
    magnitude)."""
    atoms = _silicon()
    capacity = jmattersim.capacity_for([atoms], model.config, headroom=3)
    relaxed = relax_fn(model.config, capacity, fmax=FMAX)
    species = model.config.num_species
    silicon = jax.nn.one_hot(atoms.numbers, species, dtype=jnp.float64)
    germanium = jax.nn.one_hot(32, species, dtype=jnp.float64)
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    direction = jax.tree.unflatten(
        tree,
        [
            jax.random.normal(k, x.shape, x.dtype) * 1e-2 * jnp.abs(x).mean()
            for k, x in zip(keys, leaves, strict=True)
        ],
    )

    def volume(params, t, pressure, s, positions, lattice):
        params = jax.tree.map(lambda x, d: x + s * d, params, direction)
        types = silicon.at[1].set((1 - t) * silicon[1] + t * germanium)
        out = relaxed(params, types, positions, lattice, pressure)
        return jnp.abs(jnp.linalg.det(out.lattice)) / len(atoms), out

    if id(model) not in _COMPILED:  # one compile serves values and gradients
        both = jax.value_and_grad(volume, argnums=(1, 2, 3, 4, 5), has_aux=True)
        _COMPILED[id(model)] = jax.jit(both), volume
    return _COMPILED[id(model)]


def _at(model, t=0.0, pressure=0.0, s=0.0, atoms=None, params=None):
    """((volume per atom, Relaxed), gradients) of the shared compiled function."""
    atoms = atoms or _silicon()
    both, _ = _compiled(model)
    params = model.params if params is None else params
    return both(params, t, pressure, s, atoms.positions, atoms.cell.array)


@pytest.mark.slow
@pytest.mark.parametrize("pressure", [0.0, 0.05])
def test_relaxed_meets_ase_bfgs_with_the_frechet_cell_filter(small_model64, pressure):
    """The same minimum as ASE's BFGS on FrechetCellFilter(scalar_pressure=...) from
    the same start, at 0 and 0.05 GPa (the small model's bulk modulus is 1.4 GPa)."""
    with jax.enable_x64(True):
        (_, out), _ = _at(small_model64, pressure=pressure)
        ref = _silicon()
        ref.calc = jmattersim.MatterSimCalculator(small_model64)
        cell_filter = FrechetCellFilter(ref, scalar_pressure=pressure * GPa)
        assert BFGS(cell_filter, logfile=None).run(fmax=1e-7, steps=2000)
    volume = abs(np.linalg.det(out.lattice))
    print(
        f"\n{pressure} GPa: relaxed in {int(out.steps)} steps, max residual "
        f"{float(out.max_force):.1e}; volume {volume:.6f} vs ASE's {ref.get_volume():.6f} Å³"
    )
    assert bool(out.converged) and not bool(out.overflow)
    assert float(out.max_force) <= FMAX
    assert abs(volume / ref.get_volume() - 1) < 1e-4
    assert abs(float(out.energy) - ref.get_potential_energy()) < 1e-6
    expected = float(out.energy) + pressure * GPa * volume
    assert float(out.enthalpy) == pytest.approx(expected, abs=1e-12)
    assert ref.get_volume() < 0.95 * _silicon().get_volume()  # it did relax
    angles = ref.cell.cellpar()[3:]
    assert np.abs(angles - [90, 90, 120]).max() > 5  # to a triclinic cell


@pytest.mark.slow
def test_relaxed_gradients_equal_finite_differences(small_model64):
    """d(volume per atom)/d(germanium fraction on atom 1, pressure, parameters along
    a direction) by the implicit function theorem against central differences of
    the relaxation; zero in the starting positions and lattice."""
    with jax.enable_x64(True):
        _, grads = _at(small_model64)
        for i, h in enumerate((1e-3, 2e-3, 1e-2)):
            up, down = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
            up[i], down[i] = h, -h
            fd = (_at(small_model64, *up)[0][0] - _at(small_model64, *down)[0][0]) / (2 * h)
            print(f"\nargument {i}: implicit {float(grads[i]):.8f}, central difference {fd:.8f}")
            assert float(grads[i]) == pytest.approx(float(fd), rel=1e-3)
            assert abs(float(grads[i])) > 1e-3  # a derivative that is there
        np.testing.assert_array_equal(grads[3], 0.0)
        np.testing.assert_array_equal(grads[4], 0.0)


@pytest.mark.slow
def test_relaxed_vmaps_over_compositions(small_model64):
    """jax.vmap over germanium fractions gives each one's own relaxation."""
    atoms = _silicon()
    with jax.enable_x64(True):
        _, volume = _compiled(small_model64)
        fractions = jnp.array([0.0, 0.05])
        in_axes = (None, 0, None, None, None, None)
        batched, out = jax.jit(jax.vmap(volume, in_axes=in_axes))(
            small_model64.params, fractions, 0.0, 0.0, atoms.positions, atoms.cell.array
        )
        alone = [float(_at(small_model64, float(t))[0][0]) for t in fractions]
    assert bool(out.converged.all())
    np.testing.assert_allclose(np.asarray(batched), alone, rtol=1e-7)
    assert abs(alone[1] - alone[0]) > 1e-3  # two different minima


@pytest.mark.slow
def test_bulk_modulus_equals_the_relaxed_ion_reuss_modulus(small_model64):
    """-V/(dV*/dP) at zero pressure, at the strict minimum relax_fn finds, against
    elastic_tensor's relaxed-ion Reuss bulk modulus there (exact second derivatives,
    the relaxation of the ions by the Hessian). bulk_modulus_gpa's formula: the
    fast test below."""
    atoms = _silicon()
    with jax.enable_x64(True):
        (v, out), grads = _at(small_model64)
        modulus = -float(v) / float(grads[1])
        minimum = atoms.copy()
        minimum.positions, minimum.cell = np.asarray(out.positions), np.asarray(out.lattice)
        reuss = jmattersim.derivatives.elastic_tensor(small_model64, minimum).bulk_reuss_gpa
    print(f"\nbulk modulus {modulus:.6f} GPa; relaxed-ion Reuss {reuss:.6f} GPa")
    assert modulus == pytest.approx(reuss, rel=1e-3)
    assert modulus > 0


@pytest.mark.fast
def test_bulk_modulus_gpa_of_a_known_equation_of_state():
    """A relaxed function whose cell follows V(P) = V0 (1 - P/B0) has -V/(dV/dP) =
    B0 (1 - P/B0) at P: bulk_modulus_gpa recovers it."""
    lattice0 = jnp.array([[0.0, 2.7, 2.7], [2.7, 0.0, 2.7], [2.7, 2.7, 0.0]])

    def relaxed(params, atom_types, positions, lattice, pressure_gpa):
        scale = (1 - pressure_gpa / params) ** (1 / 3)
        return jmattersim.Relaxed(positions, lattice0 * scale, *[jnp.zeros(())] * 6)

    for pressure in (0.0, 3.0):
        b = jmattersim.derivatives.bulk_modulus_gpa(relaxed, 90.0, None, None, None, pressure)
        assert float(b) == pytest.approx(90.0 - pressure, rel=1e-5)


@pytest.mark.slow
def test_relaxed_signals_overflow_and_non_convergence(small_model64):
    """A start squeezed past the capacity: overflow, NaN, not converged (the shared
    function); three steps: not converged, a finite residual above fmax."""
    atoms = _silicon()
    config = small_model64.config
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell.array * 0.6, scale_atoms=True)
    with jax.enable_x64(True):
        (_, full), _ = _at(small_model64, atoms=squeezed)
        types = jax.nn.one_hot(atoms.numbers, config.num_species, dtype=jnp.float64)
        args = (small_model64.params, types, atoms.positions, atoms.cell.array)
        capacity = jmattersim.capacity_for([atoms], config, headroom=3)
        short = jax.jit(relax_fn(config, capacity, max_steps=3))(*args)
    assert int(short.steps) == 3 and not bool(short.converged)
    assert float(short.max_force) > 1e-3 and np.isfinite(float(short.energy))
    assert bool(full.overflow) and not bool(full.converged)
    assert np.isnan(float(full.energy)) and np.isnan(np.asarray(full.positions)).all()


@pytest.mark.slow
def test_relaxed_gradient_is_nan_at_a_maximum(small_model64):
    """The model with its per-element scale and shift negated has energy -E, so
    the minimum relax_fn found is a stationary point whose Hessian is negative
    definite: started there, it stops at once (converged: the forces vanish), and
    every gradient is NaN (the Cholesky factorisation fails), not a number."""
    with jax.enable_x64(True):
        (_, minimum), _ = _at(small_model64)
        start = _silicon()
        start.positions, start.cell = np.asarray(minimum.positions), np.asarray(minimum.lattice)
        params = jax.tree.map(lambda x: x, small_model64.params)
        normalizer = params["params"]["normalizer"]
        normalizer["scale"], normalizer["shift"] = -normalizer["scale"], -normalizer["shift"]
        (_, there), grads = _at(small_model64, atoms=start, params=params)
    assert int(there.steps) == 0 and bool(there.converged)
    assert float(there.energy) == pytest.approx(-float(minimum.energy), rel=1e-12)
    assert np.isnan(float(grads[0])) and np.isnan(float(grads[1]))


def _cotangent(enthalpy, z, args, z_bar, dense_size=0):
    import lineax as lx

    from jmattersim._src.relaxed import _implicit_cotangent

    return _implicit_cotangent(enthalpy, z, args, z_bar, None, lx, dense_size)


@pytest.mark.fast
def test_implicit_cotangent_of_a_quadratic_and_nan_at_a_saddle():
    """H(z, θ) = ½ zᵀAz − θ·z has its minimum at z* = A⁻¹θ, so θ̄ = A⁻¹ z̄ (A symmetric
    positive definite), by conjugate gradients and by Cholesky. With an indefinite
    A the cotangent is NaN, not a number: by Cholesky always, by conjugate
    gradients where the solve meets the negative direction (not for z̄ = (1, 0.1,
    0) at diag(2, -1, 1), where λ·z̄ > 0 hides it)."""
    a = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], np.float32)
    theta = jnp.array([0.3, -0.2, 0.1], jnp.float32)

    def enthalpy(z, args):
        (matrix, t) = args
        return 0.5 * z @ matrix @ z - t @ z

    z_bar = jnp.array([1.0, 2.0, -1.0], jnp.float32)
    z = jnp.asarray(np.linalg.solve(a, np.asarray(theta)))
    for dense_size in (0, 3):
        _, theta_bar = _cotangent(enthalpy, z, (jnp.asarray(a), theta), z_bar, dense_size)
        np.testing.assert_allclose(theta_bar, np.linalg.solve(a, np.asarray(z_bar)), rtol=1e-5)
    saddle = jnp.asarray(np.diag([1.0, -1.0, 2.0]).astype(np.float32))
    for dense_size in (0, 3):
        _, theta_bar = _cotangent(
            enthalpy, z, (saddle, theta), jnp.array([0.0, 1.0, 0.0]), dense_size
        )
        assert np.isnan(np.asarray(theta_bar)).all()
    hidden = jnp.asarray(np.diag([2.0, -1.0, 1.0]).astype(np.float32))
    z_bar = jnp.array([1.0, 0.1, 0.0], jnp.float32)
    _, by_cg = _cotangent(enthalpy, z, (hidden, theta), z_bar)
    _, by_cholesky = _cotangent(enthalpy, z, (hidden, theta), z_bar, 3)
    assert np.isfinite(np.asarray(by_cg)).all()  # the limit of the necessary test
    assert np.isnan(np.asarray(by_cholesky)).all()
