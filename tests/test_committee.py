"""Committees: K models evaluated in one compiled call, their mean and spread equal
to the members' own predictions; stored, loaded and refused where they should be."""

from __future__ import annotations

import dataclasses
import json

import ase.io
import jax
import numpy as np
import pytest
from ase.units import GPa

import jmattersim
from jmattersim._src import cli, engine
from jmattersim._src.energy import EV_PER_A3_TO_GPA
from jmattersim._src.io import load_model_or_committee
from jmattersim._src.stream import _source_id

from conftest import special_structures, traces

pytestmark = pytest.mark.fast

K = 3


def perturbed(model: jmattersim.Model, seed: int, scale: float = 0.05) -> jmattersim.Model:
    """``model`` with every weight scaled by (1 + ``scale`` × seeded normal noise)."""
    rng = np.random.default_rng(seed)
    weights = jax.tree_util.tree_map(
        lambda a: np.asarray(a) * (1 + scale * rng.standard_normal(np.shape(a))).astype(a.dtype),
        model.params["params"],
    )
    return dataclasses.replace(model, params={**model.params, "params": weights})


@pytest.fixture(scope="module")
def members(small_model):
    return [perturbed(small_model, seed) for seed in range(K)]


@pytest.fixture(scope="module")
def committee(members):
    return jmattersim.train.stack_models(members)


@pytest.fixture(scope="module")
def structures():
    s = special_structures()
    return [s[k] for k in ("si_diamond", "fe_bcc", "triclinic_oxide", "h2o_molecule")]


@pytest.fixture(scope="module")
def results(committee, structures):
    return jmattersim.evaluate(committee, structures)


def test_one_compilation_per_budget_whatever_the_size(committee, structures):
    engine.predict_batch.clear_cache()  # trace again, whatever ran before
    with traces() as counts, engine.recording() as used:
        jmattersim.evaluate(committee, structures)
    assert {key[-1] for key in used} == {K}
    assert counts["predict_batch"] == len(used) >= 1
    with traces() as counts:
        jmattersim.evaluate(committee, structures[::-1])
    assert counts["predict_batch"] == 0


def test_mean_and_std_equal_the_members(members, structures, results):
    singles = [jmattersim.evaluate(m, structures) for m in members]
    for i, res in enumerate(results):
        energy = np.array([s[i].energy for s in singles])
        forces = np.stack([s[i].forces for s in singles])
        stress = np.stack([s[i].stress_gpa for s in singles])
        assert energy.std() > 1e-3  # the members differ
        np.testing.assert_allclose(res.energy, energy.mean(), rtol=1e-5)
        np.testing.assert_allclose(res.energy_std, energy.std(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.forces, forces.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.forces_std, forces.std(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res.stress_gpa, stress.mean(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(res.stress_std_gpa, stress.std(0), rtol=1e-4, atol=1e-4)
        assert res.forces_std.shape == (len(structures[i]), 3)
        assert res.stress_std_gpa.shape == (3, 3)
    assert singles[0][0].energy_std is None and singles[0][0].stress_std_gpa is None


def test_members_and_refusals(small_model, members, committee):
    assert committee.size == K
    for k, m in enumerate(members):
        got = jax.tree_util.tree_leaves(committee.member(k).params)
        for a, b in zip(got, jax.tree_util.tree_leaves(m.params), strict=True):
            # exact: a member is a slice of the stacked parameters (a copy)
            np.testing.assert_array_equal(a, b)
    assert committee.astype(np.float32) is committee.astype(np.float32)
    other = dataclasses.replace(
        small_model, config=dataclasses.replace(small_model.config, units=8)
    )
    with pytest.raises(ValueError, match="model 1 has config .* one architecture"):
        jmattersim.train.stack_models([small_model, other])
    with pytest.raises(ValueError, match="at least one model"):
        jmattersim.train.stack_models([])


def test_save_load_round_trip(small_model, committee, tmp_path):
    out = jmattersim.train.save_committee(committee, tmp_path / "committee")
    assert json.loads((out / "config.json").read_text())["committee"] == K
    loaded = jmattersim.train.load_committee(out)
    assert loaded.config == committee.config and loaded.source == committee.source
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.params),
        jax.tree_util.tree_leaves(committee.params),
        strict=True,
    ):
        # exact: a save/load round trip of stored parameters
        np.testing.assert_array_equal(a, b)
    assert isinstance(load_model_or_committee(out), jmattersim.train.Committee)
    with pytest.raises(ValueError, match=f"committee of {K} members.*load_committee"):
        jmattersim.load_model(out)
    with pytest.raises(FileExistsError):
        jmattersim.train.save_committee(committee, out)
    single = jmattersim.save_model(small_model, tmp_path / "single")
    with pytest.raises(ValueError, match="single model, not a committee"):
        jmattersim.train.load_committee(single)
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "committee": K + 1}))
    with pytest.raises(ValueError, match=f"leading member axis of {K + 1}"):
        jmattersim.train.load_committee(out)


def test_calculator_results(committee, structures, results):
    calc = jmattersim.MatterSimCalculator(committee)
    assert "forces_std" in calc.implemented_properties
    assert "forces_std" not in jmattersim.MatterSimCalculator.implemented_properties
    atoms = structures[2].copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    want = results[2]
    assert atoms.calc.results["forces_std"].shape == (len(atoms), 3)
    np.testing.assert_allclose(atoms.calc.results["forces_std"], want.forces_std, atol=1e-6)
    np.testing.assert_allclose(atoms.calc.results["energy_std"], want.energy_std, atol=1e-6)
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), want.forces_std, atol=1e-6)
    stress_std = atoms.calc.results["stress_std"]
    assert stress_std.shape == (6,)
    s = want.stress_std_gpa * GPa
    np.testing.assert_allclose(stress_std[:3], np.diag(s), atol=1e-7)
    np.testing.assert_allclose(stress_std[3], (s[1, 2] + s[2, 1]) / 2, atol=1e-7)


def test_predict_writes_the_spread(committee, structures, results, tmp_path):
    src = tmp_path / "frames.extxyz"
    ase.io.write(src, structures, format="extxyz")
    model_dir = jmattersim.train.save_committee(committee, tmp_path / "committee")
    out = tmp_path / "out.extxyz"
    assert (
        cli.main(["predict", str(src), "--model", str(model_dir), "--out", str(out), "--quiet"])
        == 0
    )
    for frame, want in zip(ase.io.read(out, index=":"), results, strict=True):
        np.testing.assert_allclose(frame.info["energy_std"], want.energy_std, atol=1e-6)
        np.testing.assert_allclose(frame.arrays["forces_std"], want.forces_std, atol=1e-6)
        stress_std = want.stress_std_gpa / EV_PER_A3_TO_GPA
        np.testing.assert_allclose(frame.info["stress_std"][:3], np.diag(stress_std), atol=1e-8)
        np.testing.assert_allclose(frame.get_forces(), want.forces, atol=1e-6)
    member = committee.member(0)
    ids = [_source_id(src, 8, m) for m in (committee, member)]
    ids.append(_source_id(src, 8, jmattersim.train.stack_models([member, member])))
    assert len({json.dumps(i, sort_keys=True) for i in ids}) == 3
