"""Relaxation of positions and cell, single and batched, with per-structure status.

Uses a small architecture (2 blocks, 16 units, max_l = max_n = 2) with upstream-style
random weights: these tests check the driver, its convergence criteria, the
batching and the failure handling, not model numbers (the relaxed energies, forces
and stresses are checked against the ASE calculator, which is checked against
upstream elsewhere).
"""

from __future__ import annotations

import warnings

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.units import GPa

import jmattersim
from jmattersim import relax

from conftest import MPTRJ, many_small_structures, small_cell, traces


def test_rattled_strained_si_relaxes(small_model):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=2)
    strain = np.eye(3) + [[0.03, 0.01, 0.0], [0.01, -0.02, 0.0], [0.0, 0.0, 0.02]]
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    out = relax(small_model, atoms, fmax=0.01, smax=0.02, max_steps=1500)
    assert out.info["relax_status"] == "converged", out.info
    ref = out.copy()
    ref.calc = jmattersim.MatterSimCalculator(small_model)
    forces, stress = ref.get_forces(), ref.get_stress(voigt=False) / GPa
    print(
        f"\nSi 64 relaxed in {out.info['relax_steps']} steps: max |F| "
        f"{np.abs(forces).max():.1e} eV/A, max |sigma| {np.abs(stress).max():.3f} GPa"
    )
    assert np.abs(forces).max() < 0.01
    assert np.abs(stress).max() < 0.02
    assert abs(ref.get_potential_energy() - out.get_potential_energy()) / 64 < 1e-5
    start = atoms.copy()
    start.calc = ref.calc
    assert out.get_potential_energy() < start.get_potential_energy()


@pytest.mark.parametrize("pressure_gpa", [0.0, 0.2])
def test_relaxation_follows_upstreams_relaxer_with_the_calculator(small_model, pressure_gpa):
    """The batched driver takes the steps of upstream's ``Relaxer.relax_structures``
    (ASE's FIRE + FrechetCellFilter, its ``pressure_in_GPa``) driven by the ASE
    calculator (float64: the same trajectory), without and with a pressure."""
    upstream = pytest.importorskip("mattersim.applications.relax")
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=4)
    with jax.enable_x64(True):
        ours = relax(small_model, atoms, fmax=0.01, max_steps=60, pressure_gpa=pressure_gpa)
        ref = atoms.copy()
        ref.calc = jmattersim.MatterSimCalculator(small_model)
        with warnings.catch_warnings():  # deprecated upstream for its CLI, the same code
            warnings.simplefilter("ignore", DeprecationWarning)
            converged, ref = upstream.Relaxer.relax_structures(
                ref,
                optimizer="FIRE",
                filter="FrechetCellFilter",
                constrain_symmetry=False,
                pressure_in_GPa=pressure_gpa,
                steps=60,
                fmax=0.01,
                verbose=False,
            )
    assert ours.info["relax_converged"] == converged
    assert ours.info["relax_pressure_gpa"] == pressure_gpa
    np.testing.assert_allclose(ours.positions, ref.positions, atol=1e-8)
    np.testing.assert_allclose(ours.cell.array, ref.cell.array, atol=1e-8)


def test_a_pressure_per_structure_is_met(small_model):
    """Diamond Si at the small model's zero-stress lattice constant (test_elastic),
    relaxed together at 0 and 0.3 GPa: both converge, the second to a smaller cell
    whose stress (the calculator's) is -0.3 GPa on the diagonal within smax."""
    si = bulk("Si", "diamond", 5.505583239513245)
    free, squeezed = relax(
        small_model, [si, si], fmax=1e-3, smax=2e-3, max_steps=1000, pressure_gpa=[0.0, 0.3]
    )
    for out, p in ((free, 0.0), (squeezed, 0.3)):
        assert out.info["relax_status"] == "converged", out.info
        ref = out.copy()
        ref.calc = jmattersim.MatterSimCalculator(small_model)
        deviation = ref.get_stress(voigt=False) / GPa + p * np.eye(3)
        assert np.abs(deviation).max() < 2e-3, (p, deviation)
    assert squeezed.get_volume() < 0.97 * free.get_volume()
    print(f"\nSi at 0.3 GPa: {squeezed.get_volume() / free.get_volume():.3f} of its volume")


SETTINGS = dict(fmax=0.01, smax=0.02, max_steps=400)


@pytest.fixture(scope="module")
def rattled_frames():
    """The first 12 four-atom MPtrj frames, rattled (with the small model's random
    weights 9 converge and 3 collapse)."""
    frames = [a.copy() for a in ase.io.read(MPTRJ, ":") if len(a) == 4][:12]
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    return frames


@pytest.fixture(scope="module")
def alone(small_model, rattled_frames):
    """Each rattled frame relaxed on its own (float64), shared by the batch tests."""
    with jax.enable_x64(True):
        return [relax(small_model, a, **SETTINGS) for a in rattled_frames]


def test_batched_relaxation_equals_single_ones(small_model, rattled_frames, alone):
    """12 different mptrj frames (4 atoms each, rattled), positions and cells relaxed
    together and one by one: the same status, steps and structures for each. With
    random weights 3 cells collapse: each fails alone, with its reason and no
    results, and the 9 others finish as they do on their own."""
    bad = [k for k, a in enumerate(alone) if a.info["relax_status"] == "failed"]
    good = [k for k, a in enumerate(alone) if a.info["relax_status"] == "converged"]
    assert bad and len(good) >= 7
    with jax.enable_x64(True):
        batched = relax(small_model, rattled_frames, **SETTINGS)
    diffs, strain = [], []
    for a, b, s in zip(rattled_frames, batched, alone, strict=True):
        assert b.info["relax_status"] == s.info["relax_status"], (b.info, s.info)
        assert b.info["relax_steps"] == s.info["relax_steps"]
        assert b.info.get("relax_error") == s.info.get("relax_error")
        if b.info["relax_status"] == "failed":
            error = b.info["relax_error"]
            assert "collapsed" in error or "apart" in error, error
            assert b.calc is None  # no results for a geometry never evaluated
            continue
        diffs.append(abs(b.get_potential_energy() - s.get_potential_energy()) / len(b))
        assert np.abs(b.get_forces()).max() < 0.01
        assert np.abs(b.get_stress()).max() / GPa < 0.02
        np.testing.assert_allclose(b.positions, s.positions, atol=1e-8)
        np.testing.assert_allclose(b.cell.array, s.cell.array, atol=1e-6)
        strain.append(abs(b.get_volume() / a.get_volume() - 1))
    statuses = [b.info["relax_status"] for b in batched]
    print(
        f"\nbatched vs single: max |dE| {max(diffs):.1e} eV/atom over {len(diffs)} converged; "
        f"statuses {dict((s, statuses.count(s)) for s in set(statuses))}; volumes changed by "
        f"up to {max(strain):.0%}"
    )
    assert len(diffs) == len(good)
    assert sum(v > 0.01 for v in strain) >= 3  # the cells did relax
    assert max(diffs) < 1e-8


def test_relax_rejects_bad_input_naming_it(model):
    from jmattersim._src.checks import InvalidStructureError

    close = small_cell()
    close.positions[1] = close.positions[0] + [0.2, 0.2, 0.2]
    with pytest.raises(InvalidStructureError, match=r"structure 1 \(Si2\): atoms 0 and 1"):
        jmattersim.relax(model, [small_cell(), close])
    with pytest.raises(ValueError, match=r"one pressure or one per structure \(2\), not 3"):
        jmattersim.relax(model, [small_cell(), small_cell()], pressure_gpa=[0, 1, 2])
    with pytest.raises(ValueError, match="pressure needs relax_cell=True"):
        jmattersim.relax(model, small_cell(), pressure_gpa=1.0, relax_cell=False)


def relaxing_five() -> tuple[list, list[float]]:
    """Strained rattled Si (8 atoms), two rattled Si cells (2 atoms, below the
    cutoff), a sheared Cu cell (4) and NaCl (8; with the small model's random
    weights its atoms collide), with their pressures (GPa)."""
    si8 = bulk("Si", "diamond", 5.43, cubic=True)
    si8.rattle(0.1, seed=2)
    strain = np.eye(3) + [[0.03, 0.01, 0], [0.01, -0.02, 0], [0, 0, 0.02]]
    si8.set_cell(si8.cell.array @ strain, scale_atoms=True)
    si2, wide = bulk("Si", "diamond", 5.43), bulk("Si", "diamond", 5.5)
    si2.rattle(0.05, seed=4)
    wide.rattle(0.05, seed=2)
    cu = bulk("Cu", "fcc", 3.61, cubic=True)
    cu.set_cell(cu.cell.array + [[0, 0, 0], [0.4, 0, 0], [0, 0.3, 0]], scale_atoms=True)
    cu.rattle(0.05, seed=3)
    nacl = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    nacl.rattle(0.05, seed=1)
    return [si8, si2, wide, cu, nacl], [0.0, 0.1, 0.05, 0.0, 0.0]


def test_the_compiled_driver_takes_the_steps_of_ases_fire(small_model64):
    """The compiled driver (FIRE on FrechetCellFilter's coordinates in one compiled
    loop) against ASE's FIRE and FrechetCellFilter on the calculator's results, one
    structure at a time (float64: the same trajectory): each structure's status,
    steps, cell, positions and results, with a pressure per structure. Slots of 16
    atoms hold two or three at a time, so the others wait and take the slots of
    those that stop; one compiled program serves the queue. NaCl's atoms collide:
    it fails alone, at the step where it fails alone, and the others go on."""
    frames, pressures = relaxing_five()
    settings = dict(fmax=0.01, smax=0.02, max_steps=300)
    with jax.enable_x64(True):
        with traces() as counts:
            compiled = relax(
                small_model64,
                frames,
                pressure_gpa=pressures,
                driver="compiled",
                batch_atoms=16,
                **settings,
            )
        alone = [
            relax(small_model64, a, pressure_gpa=p, driver="ase", **settings)
            for a, p in zip(frames, pressures, strict=True)
        ]
    assert counts["relax_chunk"] == 1, counts
    for a, b, p in zip(compiled, alone, pressures, strict=True):
        assert a.info["relax_status"] == b.info["relax_status"], (a.info, b.info)
        assert a.info["relax_steps"] == b.info["relax_steps"] > 5
        assert a.info["relax_pressure_gpa"] == p
        if b.info["relax_status"] == "failed":
            assert "collided" in a.info["relax_error"] and "apart" in b.info["relax_error"]
            continue
        assert a.info["relax_status"] == "converged"
        np.testing.assert_allclose(a.cell.array, b.cell.array, atol=1e-8)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-8
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-9)
    statuses = [a.info["relax_status"] for a in compiled]
    assert statuses.count("converged") == 4 and statuses[-1] == "failed"
    volumes = [a.get_volume() / f.get_volume() for a, f in zip(compiled, frames, strict=True)]
    print(f"\ncompiled = ASE step for step; volumes relaxed to {np.round(volumes, 3)}")


@pytest.mark.long
def test_256_structures_relax_in_slots_sized_to_a_memory_budget(small_model):
    """The compiled driver with 256 rattled structures (2-16 atoms, 1,940 in all)
    and a budget of 0.1 GB for its compiled chunk, under half what slots for all of
    them take: the slots shrink once (two compilations), the queue runs through
    them, and every structure comes back with its own composition and a status."""
    structures = many_small_structures(256)
    with traces() as counts:
        relaxed = relax(
            small_model,
            structures,
            fmax=0.05,
            max_steps=20,
            driver="compiled",
            memory_gb=0.1,
            progress=False,
        )
    assert counts["relax_chunk"] == 2, counts
    assert len(relaxed) == 256
    statuses = [r.info["relax_status"] for r in relaxed]
    assert set(statuses) <= {"converged", "not converged", "failed"}
    assert statuses.count("failed") < 26
    for atoms, r in zip(structures, relaxed, strict=True):
        assert r.get_chemical_formula() == atoms.get_chemical_formula()
    print("\n", {s: statuses.count(s) for s in set(statuses)})


def test_the_compiled_driver_relaxes_positions_alone_as_ase_does(small_model64):
    """``relax_cell=False``: FIRE on the positions alone, the cells kept, step for step
    as ASE's FIRE on the calculator (float64)."""
    frames = relaxing_five()[0][:3]
    settings = dict(fmax=5e-4, max_steps=200, relax_cell=False)
    with jax.enable_x64(True):
        compiled = relax(small_model64, frames, driver="compiled", **settings)
        alone = [relax(small_model64, a, driver="ase", **settings) for a in frames]
    for a, b, start in zip(compiled, alone, frames, strict=True):
        assert a.info["relax_status"] == b.info["relax_status"] == "converged"
        assert a.info["relax_steps"] == b.info["relax_steps"] > 20
        np.testing.assert_array_equal(a.cell.array, start.cell.array)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
