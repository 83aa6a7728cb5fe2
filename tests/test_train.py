"""Fine-tuning machinery on the small stored model (no torch): resume after a kill,
committees, the CLI, and bad input. Parity with upstream is in test_train_parity.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest

import jmattersim
from jmattersim._src import train_step
from jmattersim._src.dataset import InvalidLabelError, read_frames

from conftest import MPTRJ, traces

FRAMES = ase.io.read(MPTRJ, index=":40")
TRAIN, VALID = FRAMES[:24], FRAMES[24:32]
RUN = dict(epochs=3, batch_size=8, include_stresses=True, progress=False)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def assert_same_params(a, b, rtol: float = 0.0) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.max(np.abs(y)) + 1e-30))


@pytest.fixture(scope="module")
def model(small_model):
    return small_model


@pytest.fixture(scope="module")
def uninterrupted(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    return jmattersim.train.train(model, TRAIN, VALID, out=out, **RUN)


def test_a_run_writes_checkpoints_metrics_and_the_best_model(uninterrupted, model):
    out = uninterrupted.out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["0", "1", "2"]
    rows = jmattersim.train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"lr", "train_loss", "val_loss", "val_mae_forces", "val_mae_stress"}
    best = jmattersim.load_model(out / "best_model")
    assert_same_params(best.params, uninterrupted.model.params)
    assert best.source.get("fine_tuned") is True
    changed = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(leaves(best.params), leaves(model.params), strict=True)
    )
    assert changed > 1e-5  # it trained
    fig = jmattersim.train.plot_metrics(out)
    assert len(fig.axes) == 4


def _finetune_cmd(out: Path, train: Path, valid: Path, epochs: int) -> list[str]:
    from small_reference import MODEL

    return [
        sys.executable,
        "-m",
        "jmattersim",
        "finetune",
        str(train),
        "--valid",
        str(valid),
        "--model",
        str(MODEL),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--include-stresses",
        "--quiet",
    ]


def test_killed_run_resumes_to_the_uninterrupted_parameters(uninterrupted, tmp_path):
    """The CLI is killed (SIGKILL) after its first epoch's checkpoint; the same
    command then finishes the run, ending with the uninterrupted run's parameters."""
    train, valid = tmp_path / "train.extxyz", tmp_path / "valid.extxyz"
    ase.io.write(train, TRAIN)
    ase.io.write(valid, VALID)
    out = tmp_path / "run"
    cmd = _finetune_cmd(out, train, valid, RUN["epochs"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "0").is_dir() or (out / "checkpoints" / "1").exists():
        if proc.poll() is not None or time.time() > deadline:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert done and done != ["0", "1", "2"], f"the run was not interrupted ({done})"
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 epochs" in resumed.stdout
    best = jmattersim.load_model(out / "best_model")
    assert_same_params(best.params, uninterrupted.model.params, rtol=1e-6)
    rows = jmattersim.train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    full = jmattersim.train.read_metrics(uninterrupted.out)
    np.testing.assert_allclose(
        [r["val_loss"] for r in rows], [r["val_loss"] for r in full], rtol=1e-6
    )


def test_a_run_with_other_settings_in_the_same_directory_is_refused(uninterrupted, model):
    with pytest.raises(ValueError, match="other settings.*lr"):
        jmattersim.train.train(model, TRAIN, VALID, out=uninterrupted.out, **{**RUN, "lr": 1e-3})


@pytest.fixture(scope="module")
def committee_run(model, tmp_path_factory):
    """A committee of 3 trained in one compiled step, with the uninterrupted run's
    settings and seeds 41, 42, 43 (member 1 has that run's seed, 42, the default):
    (its result, the traces it added)."""
    train_step.compiled_step.cache_clear()
    out = tmp_path_factory.mktemp("committee") / "c"
    with traces() as counts:
        result = jmattersim.train.train(model, TRAIN, VALID, committee=3, seed=41, out=out, **RUN)
    return result, counts["train_step"]


def test_committee_member_equals_a_single_run_in_one_compiled_step(uninterrupted, committee_run):
    committee, traces = committee_run
    single = uninterrupted  # seed 42, as member 1
    assert traces == 1  # one compilation for the three members
    assert committee.model.size == 3
    assert_same_params(committee.model.member(1).params, single.model.params, rtol=1e-6)
    other = committee.model.member(0).params["params"]["final"]
    assert not np.allclose(
        leaves(other)[0], leaves(single.model.params["params"]["final"])[0]
    )  # members differ: their data orders do
    rows = [r for r in committee.history if r["member"] == 1]
    np.testing.assert_allclose(
        [r["val_loss"] for r in rows], [r["val_loss"] for r in single.history], rtol=1e-6
    )


def test_committee_directory_predicts_with_uncertainty(committee_run):
    result, _ = committee_run
    committee = jmattersim.train.load_committee(result.out / "best_model")
    (res,) = jmattersim.evaluate(committee, [FRAMES[35]])
    assert res.forces_std.shape == (len(FRAMES[35]), 3)
    assert np.all(res.forces_std >= 0) and res.energy_std > 0
    assert result.model.size == 3


# ------------------------------------------------------------------------ bad input


def _labelled(atoms, **results):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@pytest.mark.fast
def test_frames_without_labels_are_named(small_model):
    good = FRAMES[:3]
    a = FRAMES[3]
    no_energy = _labelled(a, forces=a.get_forces())
    no_forces = _labelled(a, energy=a.get_potential_energy())
    cases = {
        "no energy": [*good, no_energy],
        "no forces": [*good, no_forces],
    }
    formula = a.get_chemical_formula()
    for problem, frames in cases.items():
        with pytest.raises(InvalidLabelError, match=rf"training frame 3 \({formula}\).*{problem}"):
            jmattersim.train.train(small_model, frames, epochs=1, progress=False)


@pytest.mark.fast
def test_stress_of_the_wrong_shape_and_mixed_units_are_refused(small_model, tmp_path):
    a = FRAMES[1]
    bad_shape = _labelled(
        a, energy=a.get_potential_energy(), forces=a.get_forces(), stress=np.zeros(5)
    )
    with pytest.raises(InvalidLabelError, match=r"frame 0 .*stress has shape \(5,\)"):
        read_frames([bad_shape], small_model.config, stress=True)
    kbar = FRAMES[2].copy()
    kbar.calc = FRAMES[2].calc
    kbar.info["stress_unit"] = "kbar"
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [FRAMES[0], kbar])
    with pytest.raises(InvalidLabelError, match=r"frame 1 .* of mixed.extxyz: stress is in 'kbar'"):
        read_frames(path, small_model.config, stress=True)
    no_stress = _labelled(a, energy=a.get_potential_energy(), forces=a.get_forces())
    with pytest.raises(InvalidLabelError, match="no stress label"):
        read_frames([no_stress], small_model.config, stress=True)
    read_frames([no_stress], small_model.config, stress=False)  # not needed: fine


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_epoch(model, tmp_path):
    out = tmp_path / "run"
    settings = dict(epochs=3, batch_size=8, progress=False, loss="mse")
    jmattersim.train.train(model, TRAIN, VALID, out=out, max_epochs=1, **settings)
    best_before = jmattersim.load_model(out / "best_model")
    poisoned = list(TRAIN)
    a = poisoned[5]
    poisoned[5] = _labelled(a, energy=1e25, forces=a.get_forces())
    with pytest.raises(FloatingPointError, match=r"non-finite loss in epoch 1, batch \d"):
        jmattersim.train.train(model, poisoned, VALID, out=out, **settings)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["0"]
    assert [r["epoch"] for r in jmattersim.train.read_metrics(out)] == [0]
    assert_same_params(jmattersim.load_model(out / "best_model").params, best_before.params)


def test_cli_reports_bad_labels_and_missing_files(tmp_path):
    from jmattersim._src.cli import main

    a = FRAMES[0]
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, [FRAMES[1], _labelled(a, energy=a.get_potential_energy())])
    assert main(["finetune", str(path), "--out", str(tmp_path / "o"), "--model", _small()]) == 1
    assert main(["finetune", str(tmp_path / "nope.xyz"), "--out", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o" / "best_model").exists()


def _small() -> str:
    from small_reference import MODEL

    return str(MODEL)


@pytest.mark.fast
def test_settings_are_checked():
    with pytest.raises(ValueError, match="loss must be"):
        jmattersim.train.TrainSettings(loss="l1")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        jmattersim.train.TrainSettings(batch_size=0)


def test_float64_training_under_x64(model):
    """With ``jax_enable_x64`` the run trains in float64 (its result too)."""
    with jax.enable_x64(True):
        result = jmattersim.train.train(
            model, TRAIN[:8], VALID[:4], epochs=1, batch_size=8, progress=False
        )
        kinds = {np.asarray(a).dtype for a in jax.tree_util.tree_leaves(result.model.params)}
        (r,) = jmattersim.evaluate(result.model, [VALID[0]])
    assert kinds == {np.dtype(np.float64)}
    assert np.isfinite(result.history[0]["val_loss"]) and np.isfinite(r.energy)


def test_the_callers_parameters_survive_and_a_stopped_run_stays_stopped(model, tmp_path):
    """The compiled step donates its own copies (JAX-array params stay usable);
    repeating a call whose run stopped early returns that run, training nothing."""
    live = jmattersim.Model(model.config, jax.tree_util.tree_map(jax.numpy.asarray, model.params))
    settings = dict(epochs=6, batch_size=8, lr=0.0, early_stop_patience=0, progress=False)
    first = jmattersim.train.train(live, TRAIN[:8], VALID[:4], out=tmp_path / "r", **settings)
    jmattersim.evaluate(live, [VALID[0]])  # its buffers were not donated
    again = jmattersim.train.train(live, TRAIN[:8], VALID[:4], out=tmp_path / "r", **settings)
    assert first.stopped_early and again.stopped_early
    assert again.epochs_run == first.epochs_run == 2
    assert len(again.history) == len(first.history)
