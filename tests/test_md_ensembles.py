"""Ensembles of many systems in one ``md`` call beyond NVE and Langevin: a
Nose-Hoover chain per system (jax-md's ``nvt_nose_hoover`` step for step) and
constant pressure with a flexible cell (anisotropic stochastic cell rescaling).
"""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from test_md_many import three_systems, wrapped_distance

import jmattersim


def test_nose_hoover_chains_move_each_system_as_jax_md_moves_it_alone(small_model):
    """40 steps of Nose-Hoover NVT (a short period, 20 fs, so the chains act) with
    targets 300, 600 and 1200 K: the triclinic system ends where jax-md's
    ``nvt_nose_hoover`` takes it alone within 1e-4 Å, its log equals jax-md's, and
    each system's invariant (the chains' energy included) holds while its
    temperature moves."""
    systems = three_systems()
    settings = dict(ensemble="nvt_nose_hoover", tau_t=20.0, chunk=20, log_every=10, progress=False)
    finals, logs = jmattersim.md(small_model, systems, 40, temperature=[300, 600, 1200], **settings)
    single, log = jmattersim.md(small_model, systems[2], 40, temperature=1200, **settings)
    assert wrapped_distance(single, finals[2]) < 1e-4
    np.testing.assert_allclose(logs[2]["temperature"], log["temperature"], rtol=1e-4)
    np.testing.assert_allclose(logs[2]["conserved"], log["conserved"], atol=1e-4 * len(single))
    for atoms, each in zip(systems, logs, strict=True):
        assert each["status"] == "finished"
        assert np.ptp(each["temperature"]) > 0.1 * each["temperature"][0]
        assert np.ptp(each["conserved"]) < 1e-4 * len(atoms), np.ptp(each["conserved"])


def test_stochastic_cell_rescaling_reaches_each_systems_pressure(small_model):
    """NPT ("npt_crescale") of three 16-atom argon cells at 20 K, from a strict
    minimum at zero pressure (relaxed here from a rattled start; the random weights'
    landscape needs it), targets 0.2, 0.4 and, for a sheared triclinic copy, 0.1 GPa:
    each cell starts more than 0.15 GPa from its target (the sheared one under a
    shear stress), and over the second half of 600 steps each mean pressure is
    within 0.1 GPa of its target; the triclinic cell sheds its shear: its shape
    changes and its mean shear stress falls below a third of where it started.
    (The mean volumes are not compared with relaxed cells: at 0.4 GPa the random
    landscape has several basins, and the runs end in different ones.)"""
    argon = bulk("Ar", "fcc", 4.47, cubic=True).repeat((2, 2, 1))
    argon.rattle(0.05, seed=15)
    argon = jmattersim.relax(small_model, argon, fmax=1e-4, optimizer="BFGS", progress=False)
    assert argon.info["relax_status"] == "converged"
    argon.calc = None
    sheared = argon.copy()
    sheared.set_cell(argon.cell.array @ (np.eye(3) + [[0, 0.1, 0], [0.1, 0, 0], [0, 0, 0]]), True)
    systems, targets = [argon, argon.copy(), sheared], [0.2, 0.4, 0.1]
    finals, logs = jmattersim.md(
        small_model,
        systems,
        600,
        ensemble="npt_crescale",
        temperature=20,
        pressure=targets,
        compressibility=1.0,
        tau_p=50.0,
        friction=0.05,
        chunk=300,
        log_every=5,
        progress=False,
        seed=1,
    )
    for log, target in zip(logs, targets, strict=True):
        half = len(log["pressure"]) // 2
        assert log["status"] == "finished"
        mean = log["pressure"][half:].mean()
        print(f"\n{target} GPa: from {log['pressure'][0]:.3f} to a mean of {mean:.3f} GPa")
        assert abs(mean - target) < 0.1
    assert all(
        abs(log["pressure"][0] - p) > 0.15 for log, p in zip(logs[:2], [0.2, 0.4], strict=True)
    )
    shear = logs[2]["stress"][:, 5]
    assert abs(shear[0]) > 0.1
    assert abs(shear[len(shear) // 2 :].mean()) < abs(shear[0]) / 3
    assert np.abs(finals[2].cell.cellpar()[3:] - sheared.cell.cellpar()[3:]).max() > 2
