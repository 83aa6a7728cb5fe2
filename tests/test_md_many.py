"""Many systems in one ``md`` call: one padded disjoint union, one compiled step.

A batch must move each system as it moves alone (the union's path and jax-md's
single-structure path), follow upstream's calculator under ASE's velocity Verlet,
hold each system at its own temperature, and let a failing system stop alone.
The structures include a 2-atom cell shorter than the cutoff, a triclinic cell and
atoms just outside the cell (negative fractional coordinates), which the integrator
carries through the cell boundary.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

import jmattersim


def thermalize(atoms, temperature: float, seed: int) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K (seeded), as ASE draws them."""
    rng = np.random.default_rng(seed)
    mass = atoms.get_masses()[:, None]
    atoms.set_momenta(np.sqrt(mass * units.kB * temperature) * rng.standard_normal((len(atoms), 3)))


def three_systems() -> list:
    """Si (2 atoms, cell below the cutoff), NaCl (8) and a sheared Cu cell (4),
    rattled, with Maxwell-Boltzmann momenta at 600 K (seeded)."""
    si = bulk("Si", "diamond", 5.43)
    nacl = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    cu = bulk("Cu", "fcc", 3.61, cubic=True)
    cu.set_cell(cu.cell.array + [[0, 0, 0], [0.4, 0, 0], [0, 0.3, 0]], scale_atoms=True)
    out = []
    for i, atoms in enumerate((si, nacl, cu)):
        atoms.rattle(0.03, seed=i)
        thermalize(atoms, 600, i)
        out.append(atoms)
    return out


def wrapped_distance(a, b) -> float:
    """Largest distance between the atoms of two frames of one cell, Å (nearest image)."""
    d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
    return float(np.abs((d - np.round(d)) @ a.cell.array).max())


def alone(model, atoms, steps: int):
    """``atoms`` after ``steps`` of ASE's velocity Verlet (1 fs) on jmattersim's calculator."""
    reference = atoms.copy()
    reference.calc = jmattersim.MatterSimCalculator(model)
    VelocityVerlet(reference, 1.0 * units.fs).run(steps)
    return reference


def test_a_batch_moves_each_system_as_it_moves_alone(small_model, tmp_path):
    """40 NVE steps from the same momenta: each system of a batch of three ends where
    it ends alone (ASE's velocity Verlet on the calculator, and jax-md's
    single-structure path) within 1e-4 Å; each log and trajectory is its system's."""
    systems = three_systems()
    assert any((a.get_scaled_positions(wrap=False) < 0).any() for a in systems)  # atoms wrap
    finals, logs = jmattersim.md(
        small_model,
        systems,
        40,
        chunk=20,
        log_every=10,
        trajectory=str(tmp_path / "nve-{index}.extxyz"),
        progress=False,
    )
    for i, atoms in enumerate(systems):
        reference = alone(small_model, atoms, 40)
        assert np.abs(reference.positions - atoms.positions).max() > 0.05  # it moved
        assert np.abs(finals[i].positions - reference.positions).max() < 1e-4
        total = reference.get_potential_energy() + reference.get_kinetic_energy()
        assert abs(logs[i]["conserved"][-1] - total) < 1e-4 * len(atoms)
        assert logs[i]["status"] == "finished" and logs[i]["steps"] == 40
        assert logs[i]["reason"] is None and len(logs[i]["time_fs"]) == 5
        frames = ase.io.read(tmp_path / f"nve-{i}.extxyz", ":")
        assert len(frames) == 3 and len(frames[-1]) == len(atoms)
        np.testing.assert_allclose(frames[-1].positions, finals[i].positions, atol=1e-5)
    # jax-md's path for one structure, whose atoms wrap through the cell: its list's
    # image shifts must follow them within the step
    single, _ = jmattersim.md(small_model, systems[1], 40, chunk=20, progress=False)
    assert wrapped_distance(single, finals[1]) < 1e-4


def test_a_batch_follows_upstream_under_ase_velocity_verlet(small_model, tmp_path):
    """Each system of a batch after 40 NVE steps of 1 fs is within 2e-3 Å of
    upstream's calculator under ASE's VelocityVerlet from the same momenta (float32
    here, float64 upstream). The small architecture: upstream's checkpoint with the
    seeded random weights that the stored small model was converted from."""
    from conftest import _upstream_testing

    testing = _upstream_testing()
    from mattersim.forcefield.potential import MatterSimCalculator

    potential = testing.upstream_potential(
        testing.genuine_checkpoint(tmp_path / "small.pth", "small")
    )
    systems = three_systems()
    finals, logs = jmattersim.md(small_model, systems, 40, chunk=20, progress=False)
    for atoms, final, log in zip(systems, finals, logs, strict=True):
        reference = atoms.copy()
        reference.calc = MatterSimCalculator(potential, device="cpu")
        VelocityVerlet(reference, 1.0 * units.fs).run(40)
        assert log["status"] == "finished"
        gap = np.abs(final.positions - reference.positions).max()
        assert gap < 2e-3, gap
        print(f"\n{atoms.get_chemical_formula()}: {gap:.1e} Å from upstream after 40 fs")


def test_langevin_holds_each_systems_own_temperature(small_model):
    """Eight 16-atom systems, targets from 300 to 1200 K, in one call: the mean
    temperature over the second half of 500 steps is within 5 % of each target
    (a strong friction, 0.5/fs, decorrelates the samples within a few steps)."""
    targets = np.linspace(300, 1200, 8)
    systems = [bulk("Si", "diamond", 5.5, cubic=True).repeat((2, 1, 1)) for _ in targets]
    _, logs = jmattersim.md(
        small_model,
        systems,
        500,
        ensemble="nvt_langevin",
        temperature=targets,
        friction=0.5,
        chunk=250,
        log_every=5,
        progress=False,
        seed=3,
    )
    means = np.array([log["temperature"][len(log["temperature"]) // 2 :].mean() for log in logs])
    assert all(log["status"] == "finished" for log in logs)
    np.testing.assert_allclose(means, targets, rtol=0.05)
    print("\nmean T / target:", np.round(means / targets, 3))


def test_a_failing_system_stops_alone(small_model):
    """Of eight systems, one whose two atoms are thrown at each other stops with
    "atoms collided" and keeps its last good state; the other seven end where they
    end alone."""
    good = [bulk("Si", "diamond", 5.43 + 0.02 * i) for i in range(7)]
    for i, atoms in enumerate(good):
        thermalize(atoms, 300, i)
    bad = bulk("Si", "diamond", 5.43)
    bond = bad.positions[1] - bad.positions[0]
    speed = 0.3 / units.fs * bond / np.linalg.norm(bond)  # 0.3 Å/fs each, head on
    bad.set_momenta(bad.get_masses()[:, None] * np.array([speed, -speed]))
    batch = good[:3] + [bad] + good[3:]
    finals, logs = jmattersim.md(small_model, batch, 20, chunk=10, log_every=5, progress=False)
    failed = logs[3]
    assert failed["status"] == "failed" and failed["reason"] == "atoms collided"
    assert 0 < failed["steps"] < 20
    assert np.isfinite(finals[3].positions).all()
    assert np.linalg.norm(np.subtract(*finals[3].positions)) > 0.5  # its last good state
    rest = finals[:3] + finals[4:]
    for atoms, final, log in zip(good, rest, logs[:3] + logs[4:], strict=True):
        assert log["status"] == "finished" and log["steps"] == 20
        np.testing.assert_allclose(
            final.positions, alone(small_model, atoms, 20).positions, atol=1e-5
        )


def test_batches_of_fixed_slots_move_each_system_as_one_union_does(small_model):
    """Langevin NVT of three systems in batches of at most 8 atoms (three batches,
    each padded to the same slots) ends where the three end in one union, with
    one compiled chunk for all the batches."""
    from conftest import traces

    settings = dict(  # the killed run's (below): one compiled program, on disk too
        ensemble="nvt_langevin", temperature=[300, 600, 900], chunk=20, log_every=10, seed=5
    )
    together, logs = jmattersim.md(small_model, three_systems(), 20, progress=False, **settings)
    with traces() as counts:
        batched, batched_logs = jmattersim.md(
            small_model, three_systems(), 20, batch_atoms=8, progress=False, **settings
        )
    assert counts["run_chunk"] == 1, counts
    for one, other, log, other_log in zip(together, batched, logs, batched_logs, strict=True):
        assert other_log["status"] == "finished" and other_log["steps"] == 20
        np.testing.assert_allclose(other.positions, one.positions, atol=1e-5)
        np.testing.assert_allclose(other_log["temperature"], log["temperature"], rtol=1e-4)


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import jmattersim
from small_reference import MODEL
from test_md_many import three_systems

finals, logs = jmattersim.md(
    jmattersim.load_model(MODEL), three_systems(), 200, ensemble="nvt_langevin",
    temperature=[300, 600, 900], chunk=20, log_every=10, progress=False, seed=5,
    checkpoint={checkpoint!r}, trajectory={trajectory!r},
)
np.savez(
    {out!r},
    positions=np.concatenate([f.positions for f in finals]),
    temperature=np.stack([log["temperature"] for log in logs]),
)
"""


def test_a_killed_run_resumes_to_the_uninterrupted_state(small_model, tmp_path):
    """Langevin NVT of three systems, 10 chunks: a process killed (SIGKILL) after
    its first checkpoint and then run again with the same arguments ends in the
    state an uninterrupted run ends in (positions equal to float rounding, the same
    log), with one trajectory frame per chunk edge; another run's arguments in the
    same directory are refused."""
    script = KILLED_RUN.format(
        tests=str(Path(__file__).parent),
        checkpoint=str(tmp_path / "run"),
        trajectory=str(tmp_path / "run-{index}.extxyz"),
        out=str(tmp_path / "final.npz"),
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    first = tmp_path / "run" / "checkpoints" / "1"
    deadline = time.time() + 300
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final.npz").exists(), "the run was not interrupted"
    saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(map(int, saved)) < 10, saved  # it resumes from a chunk edge
    assert subprocess.run([sys.executable, "-c", script], timeout=600).returncode == 0
    finals, logs = jmattersim.md(
        small_model,
        three_systems(),
        200,
        ensemble="nvt_langevin",
        temperature=[300, 600, 900],
        chunk=20,
        log_every=10,
        progress=False,
        seed=5,
    )
    resumed = np.load(tmp_path / "final.npz")
    positions = np.concatenate([f.positions for f in finals])
    np.testing.assert_allclose(resumed["positions"], positions, atol=1e-5)
    temperature = np.stack([log["temperature"] for log in logs])
    np.testing.assert_allclose(resumed["temperature"], temperature, rtol=1e-5)
    for i in range(len(logs)):
        frames = ase.io.read(tmp_path / f"run-{i}.extxyz", ":")
        assert len(frames) == 11
        np.testing.assert_allclose(frames[-1].positions, finals[i].positions, atol=1e-5)
    with pytest.raises(ValueError, match="holds another md run"):
        jmattersim.md(
            small_model, three_systems(), 20, chunk=20, checkpoint=tmp_path / "run", progress=False
        )


@pytest.mark.long
def test_256_structures_in_batches_sized_to_a_memory_budget(small_model):
    """256 rattled structures (2-16 atoms, 1,940 in all) with a budget of 0.15 GB
    for the compiled step, under half what one union of all of them takes: the
    batches shrink once (two compilations, measured by XLA), every structure
    finishes in one of several batches, and none is lost."""
    from conftest import many_small_structures, traces

    structures = many_small_structures(256)
    with traces() as counts:
        finals, logs = jmattersim.md(
            small_model, structures, 20, chunk=10, log_every=10, memory_gb=0.15, progress=False
        )
    assert counts["run_chunk"] == 2, counts
    assert len(finals) == len(logs) == 256
    assert all(log["status"] == "finished" and log["steps"] == 20 for log in logs)
    assert len({log["batch"] for log in logs}) > 1
    for atoms, final in zip(structures, finals, strict=True):
        assert final.get_chemical_formula() == atoms.get_chemical_formula()
        assert 0 < np.abs(final.positions - atoms.positions).max() < 0.5


def test_per_system_arguments_are_checked(small_model):
    systems = three_systems()
    with pytest.raises(ValueError, match="one per system"):
        jmattersim.md(small_model, systems, 10, temperature=[300, 400], progress=False)
    with pytest.raises(ValueError, match="many systems run in one of"):
        jmattersim.md(small_model, systems, 10, ensemble="npt_nose_hoover", progress=False)
    with pytest.raises(ValueError, match=r"\{index\}"):
        jmattersim.md(small_model, systems, 10, trajectory="one.traj", progress=False)
