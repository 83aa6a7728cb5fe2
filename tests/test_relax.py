"""FIRE relaxation of positions and cell, single and batched.

Uses a small architecture (2 blocks, 16 units, max_l = max_n = 2) with upstream-style
random weights: these tests check the optimiser, its convergence criteria and the
batching, not model numbers (the relaxed energies, forces and stresses are checked
against the ASE calculator, which is checked against upstream elsewhere). The same
Si relaxation with the 1M architecture is in benchmarks/md_scaling.py (relax).
"""

from __future__ import annotations

import ase.io
import jax
import numpy as np
from ase.build import bulk
from ase.units import GPa

import jmattersim
from jmattersim.neighbors import capacity_for
from jmattersim.relax import relax

from conftest import MPTRJ


def test_rattled_strained_si_relaxes(small_model):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=2)
    strain = np.eye(3) + [[0.03, 0.01, 0.0], [0.01, -0.02, 0.0], [0.0, 0.0, 0.02]]
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    out = relax(small_model, atoms, fmax=0.01, smax=0.02, max_steps=1500)
    assert out.info["relax_converged"], out.info
    ref = out.copy()
    ref.calc = jmattersim.MatterSimCalculator(small_model)
    forces, stress = ref.get_forces(), ref.get_stress(voigt=False) / GPa
    print(f"\nSi 64 relaxed in {out.info['relax_steps']} steps: max |F| "
          f"{np.abs(forces).max():.1e} eV/A, max |sigma| {np.abs(stress).max():.3f} GPa")
    assert np.abs(forces).max() < 0.01
    assert np.abs(stress).max() < 0.05
    assert abs(ref.get_potential_energy() - out.get_potential_energy()) / 64 < 1e-5
    start = atoms.copy()
    start.calc = ref.calc
    assert out.get_potential_energy() < start.get_potential_energy()


def test_batched_relaxation_equals_single_ones(small_model):
    """16 different mptrj frames (4 atoms each, rattled) relaxed together and one by one.

    Positions only: with this random-weights model, cell relaxation of arbitrary
    chemistries collapses some cells (the loop then stops with an error naming it)."""
    frames = [a.copy() for a in ase.io.read(MPTRJ, ":") if len(a) == 4][:16]
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    with jax.enable_x64(True):
        batched = relax(small_model, frames, fmax=0.01, max_steps=1000, relax_cell=False)
        capacity = capacity_for(frames, small_model.config, 1.5)  # one compile for all singles
        single = [relax(small_model, a, fmax=0.01, max_steps=1000, relax_cell=False,
                        capacity=capacity) for a in frames]
    diffs = []
    for b, s in zip(batched, single, strict=True):
        assert b.info["relax_converged"] and s.info["relax_converged"]
        diffs.append(abs(b.get_potential_energy() - s.get_potential_energy()) / len(b))
        assert np.abs(b.get_forces()).max() < 0.01
    moved = sum(b.info["relax_steps"] > 0 for b in batched)
    print(f"\nbatched vs single: max |dE| {max(diffs):.1e} eV/atom ({moved} frames moved)")
    assert moved >= 8
    assert max(diffs) < 1e-4
