"""Molecular dynamics on the jax-md neighbour list: energy conservation, thermostat,
overflow and re-allocation, NPT and jax-md's FIRE.

Energy conservation runs the 1M architecture (converted random-weights fixture).
The thermostat, overflow, NPT and FIRE tests check the integration machinery,
not model numbers, and use a small architecture (2 blocks, 16 units, max_l =
max_n = 2) with upstream-style random weights, about 10x cheaper per step; its Si
has a binding curve with a minimum near a = 5.5 Å.
"""

from __future__ import annotations

import warnings

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from jax_md import minimize, space

import jmattersim
from jmattersim import md
from jmattersim.jax_md import atoms_to_jax_md, mattersim_neighbor_list


def si64():
    return bulk("Si", "diamond", 5.43, cubic=True).repeat(2)


def si8():
    """The cubic cell of diamond Si (5.43 Å wide, below the 5 Å cutoff plus two
    skins: the minimum-image list sees several images of each atom)."""
    return bulk("Si", "diamond", 5.43, cubic=True)


@pytest.mark.long  # a minute: CI checks the same integrator against ASE's velocity Verlet
def test_nve_conserves_energy_1m(converted, tmp_path):
    """64 Si atoms, 300 K, 1 fs, float32, 1M architecture: total energy stays within
    1e-4 eV/atom; the trajectory holds a frame per chunk; the last frame's energy and
    forces are the calculator's."""
    model = jmattersim.load_model(converted["1M"])
    traj = tmp_path / "nve.extxyz"
    final, log = md(
        model,
        si64(),
        100,
        dt=1.0,
        ensemble="nve",
        temperature=300.0,
        chunk=50,
        log_every=10,
        trajectory=str(traj),
        progress=False,
    )
    e = log["conserved"] / 64
    # drift: the systematic change (first vs last fifth), not velocity Verlet's bounded
    # oscillation (max - min, printed)
    fifth = max(len(e) // 5, 2)
    drift = abs(e[-fifth:].mean() - e[:fifth].mean())
    assert drift < 1e-4, (drift, np.ptp(e))
    assert log["temperature"][-1] > 50  # it moved
    # the per-atom slots hold the next shell (12 atoms 0.25 Å beyond 4 Å + skin in a
    # perfect crystal): no redo and recompile (one, before SHELL_MARGIN)
    assert int(log["reallocations"]) == 0
    frames = ase.io.read(traj, ":")
    assert len(frames) == 3
    ref = final.copy()
    ref.calc = jmattersim.MatterSimCalculator(model)
    assert abs(ref.get_potential_energy() - final.get_potential_energy()) / 64 < 1e-5
    np.testing.assert_allclose(final.get_forces(), ref.get_forces(), atol=1e-4)
    print(
        f"\nNVE 1M float32, 64 Si, 100 fs: drift {drift:.1e} eV/atom, max-min E_tot "
        f"{np.ptp(e):.1e} eV/atom"
    )


def test_overflow_detected_reallocated_and_redone(small_model):
    """A list allocated without headroom overflows as the crystal heats; the loop
    re-allocates, redoes the chunk and ends where a run with ample capacity ends."""
    with jax.enable_x64(True):
        tight_final, tight = md(
            small_model,
            si8(),
            100,
            ensemble="nve",
            temperature=900.0,
            chunk=50,
            progress=False,
            capacity_multiplier=1.0,
        )
        ample_final, ample = md(
            small_model,
            si8(),
            100,
            ensemble="nve",
            temperature=900.0,
            chunk=50,
            progress=False,
            capacity_multiplier=3.0,
        )
    assert int(tight["reallocations"]) >= 1
    assert int(ample["reallocations"]) == 0
    np.testing.assert_allclose(tight_final.positions, ample_final.positions, atol=1e-8)
    np.testing.assert_allclose(tight["conserved"], ample["conserved"], atol=1e-8)
    assert np.ptp(tight["conserved"]) / 8 < 1e-4


def test_cell_list_under_x64_warns_nothing(small_model):
    """jax-md's cell list yields int64 candidates under x64 and scatters them into an
    int32 list (a FutureWarning, an error in later JAX); our list casts them first."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(4)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        R, box, species = atoms_to_jax_md(atoms)
        neighbor_fn, _ = mattersim_neighbor_list(small_model, box, species)
        nbrs = neighbor_fn.allocate(R)
        nbrs = jax.jit(neighbor_fn.update)(R + 0.01, nbrs)
    assert nbrs.method == "cell_list" and not bool(nbrs.did_buffer_overflow)


@pytest.mark.parametrize("method_cell", [("images", 1), ("cell_list", 4)])
def test_too_small_capacity_is_flagged(small_model, method_cell):
    method, reps = method_cell
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, _ = mattersim_neighbor_list(small_model, box, species)
    ok = neighbor_fn.allocate(R)
    assert ok.method == method and not bool(ok.did_buffer_overflow)
    small = neighbor_fn.allocate(R, capacity_multiplier=0.5)
    assert bool(small.did_buffer_overflow)
    # compressing the crystal brings more neighbours: the update flags it, and stays flagged
    squeezed = jax.jit(neighbor_fn.update)(R, ok, box=box * 0.9)
    assert bool(squeezed.did_buffer_overflow)
    assert bool(jax.jit(neighbor_fn.update)(R, squeezed).did_buffer_overflow)


def test_langevin_holds_temperature_and_warns_nothing_in_float32(small_model):
    """Mean temperature over the second half within 5 % of the target. jax-md's sums
    ask for float64; with x64 off (float32, as here), the MD driver keeps JAX's
    truncation warning out of the user's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _, log = md(
            small_model,
            si64(),
            600,
            ensemble="nvt_langevin",
            temperature=600.0,
            friction=0.1,
            chunk=300,
            progress=False,
        )
    assert np.all(np.isfinite(log["conserved"]))
    half = log["temperature"][len(log["temperature"]) // 2 :]
    error = abs(half.mean() / 600.0 - 1)
    print(f"\nLangevin 600 K: mean T over the second half {half.mean():.1f} K")
    assert error < 0.05, half.mean()


def test_npt_nose_hoover_runs_and_conserves_its_invariant(small_model):
    _, log = md(
        small_model,
        si8(),
        200,
        ensemble="npt_nose_hoover",
        temperature=300.0,
        pressure=0.0,
        chunk=100,
        progress=False,
    )
    assert np.all(np.isfinite(log["conserved"]))
    assert np.ptp(log["volume"]) > 0  # the box moves
    assert np.ptp(log["conserved"]) / 8 < 1e-3


@pytest.mark.long
def test_fire_descent_on_the_neighbor_list(small_model):
    """jax-md's ``minimize.fire_descent`` drops in (positions only); the long tier:
    CI relaxes with FIRE compiled in test_relax (ASE's FIRE, step for step). The descent
    from a rattled crystal crowds some atoms: the lists get 1.5x headroom (jax-md's
    cell list underneath overflows its per-atom slots near step 100 with 1.25x)."""
    atoms = si64()
    atoms.rattle(0.1, seed=1)
    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, energy_fn = mattersim_neighbor_list(
        small_model, box, species, capacity_multiplier=1.5
    )
    _, shift = space.periodic_general(box, fractional_coordinates=True)
    init, apply = minimize.fire_descent(energy_fn, shift, dt_start=0.1, dt_max=1.0)
    nbrs = neighbor_fn.allocate(R)
    state = init(R, neighbor=nbrs)

    def step(carry, _):
        state, nbrs = carry
        state = apply(state, neighbor=nbrs)
        return (state, nbrs.update(state.position)), None

    (state, nbrs), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=200))((state, nbrs))
    assert not bool(nbrs.did_buffer_overflow)
    f0 = np.abs(-jax.grad(energy_fn)(R, neighbor=neighbor_fn.allocate(R))).max()
    f1 = np.abs(np.asarray(state.force)).max()
    e0 = energy_fn(R, neighbor=neighbor_fn.allocate(R))
    assert energy_fn(state.position, neighbor=nbrs) < e0
    assert f1 < 0.5 * f0, (f0, f1)
