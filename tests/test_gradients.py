"""Gradients of the pure energy against finite differences (float64), second
derivatives of a force-and-stress loss, continuity across both cutoffs, and the
rematerialised model's gradients.

The finite-difference checks test the derivative machinery (every code path of the
1M model: radial and spherical bases, three-body gather/scatter, gated MLPs,
strain), so they run on the stored small genuine-format model (2 blocks, 16 units),
whose derivative programs compile about a quarter faster; the continuity and remat
checks keep the 1M architecture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import jmattersim
from jmattersim._src.batch_energy import batch_energy_fn, batch_properties_fn
from jmattersim._src.energy import energy_fn
from jmattersim._src.neighbors import capacity_for

from conftest import arrays, padded, small_cell, triclinic

# ---------------------------------------------------------------- 1. gradients


def directional_fd(f, x, v, h):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def check_gradient(f, args: tuple, rng, h: float = 1e-5, label: str = "", checked=None):
    """grad . v against central differences along random directions, for each of the
    first ``checked`` arguments (default all; the rest may be pytrees). One compiled
    program gives both the gradients and the differences' values; returns the
    gradients of all arguments."""
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))
    _, grads = value_and_grad(*args)
    for k in range(len(args) if checked is None else checked):
        x, g = args[k], grads[k]
        v = jnp.asarray(rng.standard_normal(x.shape))
        along = lambda t, k=k: value_and_grad(*[t if i == k else a for i, a in enumerate(args)])[0]  # noqa: E731
        fd = directional_fd(along, x, v, h)
        exact = jnp.vdot(g, v)
        assert np.isfinite(exact) and abs(exact) > 1e-3, (label, k, exact)
        rel = abs(exact - fd) / abs(exact)
        assert rel <= 1e-6, f"{label} argument {k}: grad.v {exact:.12g} vs FD {fd:.12g} ({rel:.1e})"
    return grads


@pytest.mark.parametrize("make", [small_cell, triclinic], ids=["cell_below_cutoff", "triclinic"])
def test_energy_gradients_match_finite_differences(small_model64, make):
    rng = np.random.default_rng(0)
    atoms = make()
    with jax.enable_x64(True):
        cap = capacity_for([atoms], small_model64.config, headroom=1.5)
        f = energy_fn(small_model64.config, cap)
        e = lambda at, pos, lat: f(small_model64.params, at, pos, lat)  # noqa: E731
        check_gradient(
            e, arrays(atoms, small_model64.config, jnp.float64), rng, label=make.__name__
        )


def test_padded_batch_gradients_match_finite_differences(small_model64):
    rng = np.random.default_rng(1)
    structures = [small_cell(), triclinic()]
    config = small_model64.config
    with jax.enable_x64(True):
        cap = capacity_for(structures, config, headroom=1.5, batch_size=2)
        g = padded(structures, config, jnp.float64, n_node=8, n_graph=4)
        energies = batch_energy_fn(config, cap)
        weights = jnp.array([1.0, 0.7, 0.0, 0.0])  # padding graphs weigh nothing

        def f(at, pos, lat):
            graph = g._replace(
                nodes={"atom_types": at, "positions": pos}, globals={**g.globals, "lattice": lat}
            )
            return jnp.sum(weights * energies(small_model64.params, graph))

        check_gradient(
            f,
            (g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"]),
            rng,
            label="padded batch",
        )


def test_force_and_stress_loss_differentiates_again(small_model64):
    """A loss on forces and stresses (create_graph in torch): its gradient in
    atom types, positions and lattice against finite differences of the loss."""
    rng = np.random.default_rng(2)
    structures = [small_cell(), triclinic()]
    config = small_model64.config
    with jax.enable_x64(True):
        cap = capacity_for(structures, config, headroom=1.5, batch_size=2)
        g = padded(structures, config, jnp.float64, n_node=8, n_graph=3)
        props = batch_properties_fn(config, cap)

        def loss(at, pos, lat, params):
            graph = g._replace(
                nodes={"atom_types": at, "positions": pos}, globals={**g.globals, "lattice": lat}
            )
            out = props(params, graph)
            mask = jnp.arange(8)[:, None] < 5
            return jnp.sum(jnp.where(mask, out.forces, 0) ** 2) + jnp.sum(out.stress[:2] ** 2)

        args = (g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])
        grads = check_gradient(
            loss, (*args, small_model64.params), rng, label="force/stress loss", checked=3
        )
        leaves = jax.tree_util.tree_leaves(grads[3]["params"])
        assert all(np.isfinite(x).all() for x in leaves)
        assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0


# ----------------------------------------------------------------- 4. continuity


def crossing(model, make, moving: int, cutoff: float, delta: float = 1e-4):
    """Energies and forces with atom ``moving`` just inside and just outside
    ``cutoff`` (make(d) puts it at distance d along +x from its partner), and
    the force on it 0.5 Å inside."""
    inside, outside, deep = make(cutoff - delta), make(cutoff + delta), make(cutoff - 0.5)
    cap = capacity_for([inside, outside, deep], model.config, headroom=2.0)
    f = jax.jit(jax.value_and_grad(energy_fn(model.config, cap), argnums=2))
    (e_in, g_in), (e_out, g_out), (_, g_deep) = [
        f(model.params, *arrays(a, model.config)) for a in (inside, outside, deep)
    ]
    # a smooth energy changes by the work of the mean force over the 2 delta step
    expected = 0.5 * float(g_in[moving, 0] + g_out[moving, 0]) * 2 * delta
    return float(e_out - e_in), expected, float(e_in), (-g_in, -g_out, -g_deep)


def dimer_in_box(d: float) -> Atoms:
    return Atoms("SiO", positions=[[1, 1, 1], [1 + d, 1, 1]], cell=np.eye(3) * 12, pbc=True)


def trimer_in_box(d: float) -> Atoms:
    """O at the origin, Si bonded at 2 Å along y, a second Si at d along x."""
    return Atoms(
        "OSiSi", positions=[[3, 3, 3], [3, 5, 3], [3 + d, 3, 3]], cell=np.eye(3) * 12, pbc=True
    )


@pytest.mark.parametrize("which", ["two_body_5A", "three_body_4A"])
def test_energy_and_forces_are_continuous_across_cutoffs(model, which):
    """Across each cutoff the energy changes by the work of the force (no jump
    beyond float32 rounding, about 2e-5 eV here) and the forces do not jump."""
    config = model.config
    make, moving, cutoff = {
        "two_body_5A": (dimer_in_box, 1, config.cutoff),
        "three_body_4A": (trimer_in_box, 2, config.threebody_cutoff),
    }[which]
    assert (
        abs(np.linalg.norm(make(cutoff).positions[moving] - make(cutoff).positions[0]) - cutoff)
        < 1e-12
    )
    de, expected, e, (f_in, f_out, f_deep) = crossing(model, make, moving, cutoff)
    noise = 8 * np.finfo(np.float32).eps * abs(e)
    assert abs(de - expected) <= noise, (de, expected, noise)
    np.testing.assert_allclose(f_in, f_out, atol=1e-4)
    assert np.abs(f_deep[moving]).max() > 1e-3  # the moving atom does interact


def test_energy_of_a_scaled_lattice_is_a_fresh_calculation(model):
    """The topology follows the lattice: scaled by 1.5 (positions with it) the
    energy equals a fresh host-graph calculation; shrunk beyond the capacity it
    is NaN, never a number from a stale topology."""
    atoms = bulk("NaCl", "rocksalt", 5.64)
    atoms.rattle(0.05, seed=2)
    cap = capacity_for([atoms], model.config, headroom=1.25)
    f = jax.jit(energy_fn(model.config, cap))
    bigger = atoms.copy()
    bigger.set_cell(atoms.cell * 1.5, scale_atoms=True)
    calc = jmattersim.MatterSimCalculator(model)
    for a in (atoms, bigger):
        e = float(f(model.params, *arrays(a, model.config)))
        np.testing.assert_allclose(e, calc.get_potential_energy(a), rtol=1e-6, atol=1e-5)
    smaller = atoms.copy()
    smaller.set_cell(atoms.cell * 0.7, scale_atoms=True)
    assert np.isnan(float(f(model.params, *arrays(smaller, model.config))))


def test_remat_option_gives_the_same_energy_and_gradients(model):
    si = small_cell()
    cap = capacity_for([si], model.config)
    args = (model.params, *arrays(si, model.config))
    plain = jax.jit(jax.value_and_grad(energy_fn(model.config, cap), argnums=(1, 2, 3)))(*args)
    remat = jax.jit(
        jax.value_and_grad(energy_fn(model.config, cap, remat=True), argnums=(1, 2, 3))
    )(*args)
    for a, b in zip(
        jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
